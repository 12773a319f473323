"""Headers safe by construction: values URL-encoded into header URLs, long lines folded per
RFC 5322 (a receiver enforcing 998 octets takes the message)."""

from __future__ import annotations

import email
import re
import textwrap
from collections.abc import Callable
from email import policy
from pathlib import Path

import pytest

from mailctl.config.campaign import load_campaign
from mailctl.errors import TemplateError
from mailctl.message.render import Renderer, url_value
from mailctl.message.tracking import new_tracking_id
from tests.helpers.workspace import make_workspace, send_json
from tests.hostile_smtp import HostileServer, Script

HOSTILE_ADDRESS = '"x>, <mailto:attacker@evil.example>, <https://evil.example/?"@example.com'


def renderer(tmp_path: Path, unsubscribe_url: str, subject: str = "Hi") -> Renderer:
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: t
        from: "Shop <news@shop.example>"
        subject: {subject!r}
        text: "x"
        list: x
        unsubscribe: {{url: {unsubscribe_url!r}, mailto: "u@shop.example"}}
        """)
    )
    return Renderer(load_campaign(path))


def head_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def list_unsubscribe(data: bytes) -> str:
    parsed = email.message_from_bytes(data, policy=policy.default)
    return " ".join(str(parsed["List-Unsubscribe"]).split())


def test_a_quoted_local_part_cannot_inject_uris_into_list_unsubscribe(tmp_path: Path) -> None:
    render = renderer(tmp_path, "https://shop.example/u?e={{ email }}")
    message = render.render(HOSTILE_ADDRESS, {}, new_tracking_id())
    header = list_unsubscribe(message.data)
    assert re.findall(r"<([^>]*)>", header) == [
        "https://shop.example/u?e=%22x%3E%2C%20%3Cmailto%3Aattacker%40evil.example%3E%2C%20"
        "%3Chttps%3A//evil.example/%3F%22%40example.com",
        "mailto:u@shop.example?subject=unsubscribe",
    ]
    assert "evil.example>" not in header


def test_a_value_already_urlencoded_is_not_encoded_twice(tmp_path: Path) -> None:
    render = renderer(tmp_path, "https://shop.example/u/{{ email | urlencode }}?c={{ campaign }}")
    message = render.render("a+b@example.com", {}, new_tracking_id())
    assert list_unsubscribe(message.data).startswith(
        "<https://shop.example/u/a%2Bb%40example.com?c=t>"
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("a b", "a%20b"), ("100%", "100%25"), ("%41", "%41"), (None, ""), (7, "7")],
)
def test_url_value_encodes_what_is_not_an_escape_already(value: object, encoded: str) -> None:
    assert url_value(value) == encoded


def test_an_unsubscribe_url_too_long_for_a_header_fails_that_message(tmp_path: Path) -> None:
    render = renderer(tmp_path, "https://shop.example/u?e={{ email }}&p={{ pad }}")
    with pytest.raises(TemplateError) as raised:
        render.render("a@example.com", {"pad": "p" * 1000}, new_tracking_id())
    assert str(raised.value) == (
        "recipient a@example.com: the unsubscribe URL is 1043 characters;"
        " at most 900 fit in a header line"
    )


@pytest.mark.parametrize(
    "subject",
    [" ".join(["word"] * 300), "a" * 1500, "é" * 700],
    ids=["ascii-words", "ascii-one-run", "non-ascii"],
)
def test_a_long_subject_is_folded_and_reads_back_the_same(tmp_path: Path, subject: str) -> None:
    message = renderer(tmp_path, "https://shop.example/u", subject).render(
        "a@example.com", {}, new_tracking_id()
    )
    assert max(len(line) for line in head_lines(message.data)) <= 78
    parsed = email.message_from_bytes(message.data, policy=policy.default)
    assert str(parsed["Subject"]) == subject


def test_a_receiver_enforcing_998_octets_takes_a_1500_character_subject(
    hostile_server: Callable[[Script], HostileServer], tmp_path: Path, capsys
) -> None:
    server = hostile_server(Script(max_line=998))
    long_subject = "Sale " + "x" * 1500
    ws = make_workspace(tmp_path, server.port, rows=2)
    campaign = (ws / "c.yaml").read_text()
    (ws / "c.yaml").write_text(re.sub(r"(?m)^subject: .*$", f'subject: "{long_subject}"', campaign))
    result = send_json(ws, capsys)
    assert (result["sent"], result["failed"]) == (2, 0)
    assert len(server.messages) == 2
    parsed = email.message_from_bytes(server.messages[0], policy=policy.default)
    assert str(parsed["Subject"]) == long_subject
