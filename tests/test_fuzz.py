"""Fuzzing the parsers of untrusted input (hypothesis): the CSV reader, the YAML loaders, the
bounce parser and the reply classifier. Whatever the input, each either succeeds or raises
one of mailctl's own errors (a one-line message); nothing escapes as an internal error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailctl.bounces.parse import parse_message
from mailctl.config.campaign import load_campaign
from mailctl.config.profiles import load_profiles
from mailctl.errors import MailctlError
from mailctl.recipients.csv_import import import_csv
from mailctl.replies.classify import classify_failure, classify_reply
from mailctl.store.sqlite import SqliteStore

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text that looks like the thing parsed often enough to get past the first check.
SMTP_WORDS = st.sampled_from(
    [
        "550",
        "5.1.1",
        "4.7.0",
        "421",
        "user unknown",
        "mailbox full",
        "try again in 5 minutes",
        "[TSS04]",
        "<a@b.example>",
        "RCPT TO",
        "DATA",
        "\r\n",
        "[/]",
        "\x1b[31m",
        "%s",
        "-" * 50,
        "é",
    ]
)
TEXTISH = st.one_of(
    st.text(max_size=300),
    st.lists(SMTP_WORDS, max_size=30).map(" ".join),
)
YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["2026-02-30", "-5", ".nan", "1h", "rot13", "relay", "sandbox", "127.0.0.1", "[/]"]
    ),
)
YAML_KEYS = st.sampled_from(
    [
        "name",
        "from",
        "subject",
        "text",
        "list",
        "recipients",
        "profiles",
        "default_profile",
        "transport",
        "host",
        "retry",
        "timeout",
        "max_age",
        "pools",
        "warmup",
        "start",
        "encoding",
        "headers",
        "unsubscribe",
        "rules",
        "x",
    ]
)
YAML_TREES = st.recursive(
    YAML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(YAML_KEYS, children, max_size=5)
    ),
    max_leaves=25,
)
TAGS = st.sampled_from(["", "!!python/name:os.system ", "!!binary ", "!custom ", "!!str ", "&a "])


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="mailctl-fuzz-"))


@FUZZ
@given(tree=YAML_TREES, tag=TAGS, raw=st.text(max_size=200))
def test_yaml_loaders_raise_only_config_errors(tree: object, tag: str, raw: str) -> None:
    directory = _scratch()
    dumped = yaml.safe_dump(tree, allow_unicode=True)
    for text in (dumped, tag + dumped, raw, dumped.replace(": ", f": {tag}", 1)):
        for loader in (load_profiles, load_campaign):
            path = directory / "f.yaml"
            path.write_text(text, encoding="utf-8")
            try:
                loader(path)
            except MailctlError as exc:
                assert "\n" not in str(exc)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["email", "name", "e-mail", "", '"', "x"]), max_size=4),
    rows=st.lists(st.lists(st.one_of(st.text(max_size=30), SMTP_WORDS), max_size=5), max_size=8),
    noise=st.binary(max_size=64),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
)
def test_the_csv_reader_raises_only_input_errors(
    header: list[str], rows: list[list[str]], noise: bytes, delimiter: str
) -> None:
    directory = _scratch()
    lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + noise
    path = directory / "list.csv"
    path.write_bytes(data)
    with SqliteStore.open(directory / "m.db") as store:
        try:
            import_csv(store, path, list_name="fuzz")
        except MailctlError as exc:
            assert "\n" not in str(exc)


DSN = (
    b"From: MAILER-DAEMON@mx.example\r\nTo: bounces@shop.example\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\n%s\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; mx.example\r\n\r\n"
    b"Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\n"
    b"Diagnostic-Code: smtp; %s\r\n"
    b"--B--\r\n"
)


@FUZZ
@given(
    body=TEXTISH,
    recipient=st.one_of(st.text(max_size=60), st.sampled_from(["*@gmail.com", "a@b.example"])),
    action=st.sampled_from(["failed", "delayed", "delivered", "", "x"]),
    status=st.one_of(st.text(max_size=10), st.sampled_from(["5.1.1", "4.2.2", "9.9.9"])),
    diagnostic=TEXTISH,
    raw=st.binary(max_size=400),
)
def test_the_bounce_parser_never_raises_anything_but_its_own_error(
    body: str, recipient: str, action: str, status: str, diagnostic: str, raw: bytes
) -> None:
    def enc(text: str) -> bytes:
        return text.encode("utf-8", "surrogatepass")

    message = DSN % (enc(body), enc(recipient), enc(action), enc(status), enc(diagnostic))
    for data in (message, raw, message[: len(raw)], raw + message):
        try:
            report = parse_message(data, "fuzz")
        except MailctlError as exc:
            assert "\n" not in str(exc)
        else:
            assert report.source == "fuzz"


@FUZZ
@given(
    code=st.one_of(st.none(), st.integers(min_value=-1000, max_value=1000)),
    text=TEXTISH,
    stage=st.sampled_from([None, "connect", "mail", "rcpt", "data", "bogus"]),
    provider=st.sampled_from([None, "gmail", "yahoo", "microsoft", "other", "[/]"]),
    status=st.one_of(st.none(), st.text(max_size=10)),
    action=st.sampled_from([None, "failed", "delayed", "delivered", "x"]),
)
def test_the_reply_classifier_always_gives_a_verdict(
    code: int | None,
    text: str,
    stage: str | None,
    provider: str | None,
    status: str | None,
    action: str | None,
) -> None:
    verdict = classify_reply(code, text, provider, stage=stage)
    assert verdict.reason and verdict.scope is not None
    failure = classify_failure(status, text, action, code, context=text)
    assert failure.reason and failure.scope is not None


def test_a_csv_ending_inside_a_character_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(b"email\na@example.com\n\xc2")
    with SqliteStore.open(tmp_path / "m.db") as store, pytest.raises(MailctlError) as raised:
        import_csv(store, path, list_name="x")
    assert str(raised.value) == (
        f"{path}:3: cannot decode as utf-8-sig (the file ends inside a character);"
        " use --encoding, e.g. --encoding latin-1"
    )
