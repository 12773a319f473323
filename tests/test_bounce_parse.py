"""The bounce parser over the corpus copy in tests/data/bounces (BSD-2-Clause, see LICENSE.*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailctl.bounces.mailbox import iter_messages
from mailctl.bounces.parse import Kind, parse_message
from mailctl.errors import BounceParseError
from scripts.bounce_labels import COMPLAINT_TYPES, match_label

DATA = Path(__file__).parent / "data" / "bounces"

LABELS = json.loads((DATA / "labels.json").read_text())
BOUNCES = ("bounce-permanent", "bounce-temporary")


@pytest.fixture(scope="module")
def parsed() -> dict[str, object]:
    return {
        x["file"]: parse_message((DATA / "eml" / x["file"]).read_bytes(), x["file"]) for x in LABELS
    }


def test_parser_accuracy_on_the_corpus_stays_above_its_floors(parsed: dict) -> None:
    exact = bounces = perm_ok = perm_total = suppress_ok = reason_ok = recipients = 0
    for label in LABELS:
        report = parsed[label["file"]]
        ok, matched = match_label(report, label)
        if label["category"] in BOUNCES:
            bounces += 1
            exact += ok
        elif label["category"] != "complaint-arf":
            continue
        for index, expected in enumerate(r for r in label["per_recipient"] if r["recipient"]):
            recipients += 1
            got = matched.get(index)
            if got is None:
                continue
            if label["category"] == "complaint-arf":
                want_suppress = expected["feedback_type"] in COMPLAINT_TYPES
            else:
                want_suppress = expected["hard"]
                perm_total += 1
                perm_ok += got.permanent == bool(expected["permanent"])
            suppress_ok += got.suppress == want_suppress
            reason_ok += got.reason == expected["reason"]
    # Floors a little below what the parser reaches (see bench/bounce_accuracy.py).
    assert exact / bounces >= 0.989
    assert perm_ok / (perm_total or 1) >= 0.968
    assert suppress_ok / recipients >= 0.972
    assert reason_ok / recipients >= 0.872


def test_negatives_are_not_bounces() -> None:
    negatives = sorted((DATA / "negative").iterdir())
    assert len(negatives) == 2
    for path in negatives:
        report = parse_message(path.read_bytes(), path.name)
        assert report.kind is Kind.UNKNOWN, path
        assert report.recipients == ()


@pytest.mark.parametrize(("name", "count"), [("mbox-0", 37), ("mbox-1", 1)])
def test_mbox_splits_into_numbered_messages(name: str, count: int) -> None:
    sources = [source for source, _ in iter_messages(DATA / "mbox" / name)]
    assert len(sources) == count
    assert sources[0].endswith(f"{name}#1") and sources[-1].endswith(f"{name}#{count}")


def test_mbox_messages_parse_as_bounces() -> None:
    kinds = [
        parse_message(raw, source).kind for source, raw in iter_messages(DATA / "mbox" / "mbox-0")
    ]
    assert kinds.count(Kind.BOUNCE) + kinds.count(Kind.DELAY) >= 30


def test_autoreplies_are_recognised_and_never_suppress(parsed: dict) -> None:
    autoreplies = [label["file"] for label in LABELS if label["category"] == "auto-reply"]
    assert len(autoreplies) == 3
    for name in autoreplies:
        report = parsed[name]
        assert report.kind is Kind.AUTOREPLY, name
        assert not any(r.suppress for r in report.recipients)


def test_delayed_never_suppresses(parsed: dict) -> None:
    delays = [report for report in parsed.values() if report.kind is Kind.DELAY]
    assert delays
    for report in delays:
        assert not any(r.suppress for r in report.recipients), report.source
    assert parsed["rfc3464-09.eml"].kind is Kind.DELAY


def test_arf_abuse_complaint_suppresses_every_recipient_but_opt_out_does_not(parsed: dict) -> None:
    report = parsed["arf-16.eml"]
    assert report.kind is Kind.COMPLAINT and report.feedback_type == "abuse"
    assert len(report.recipients) == 7
    assert all(r.suppress and r.reason == "feedback" for r in report.recipients)
    opt_out = parsed["arf-12.eml"]
    assert opt_out.kind is not Kind.COMPLAINT
    assert not any(r.suppress for r in opt_out.recipients)


def test_delivery_success_dsn_suppresses_nobody(parsed: dict) -> None:
    report = parsed["rfc3464-28.eml"]
    assert report.kind is Kind.DELIVERED
    assert not any(r.suppress for r in report.recipients)


MAILCTL_DSN = b"""\
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: bounces+mc1-abcdefghijklmnop@bounce.example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <20240101000000.1234@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

<ann@example.org>: host mx.example.org said: 550 5.1.1 <ann@example.org>: Recipient
    address rejected: User unknown in local recipient table (in reply to RCPT TO command)

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; ann@example.org
Original-Recipient: rfc822;ann@example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown

--B
Content-Type: text/rfc822-headers

From: News <news@sender.example.com>
To: ann@example.org
Subject: November
Message-ID: <mc1-abcdefghijklmnop@sender.example.com>
X-Mailctl-ID: mc1-abcdefghijklmnop

--B--
"""


def test_dsn_of_a_mailctl_message_yields_its_tracking_id_and_recipient() -> None:
    report = parse_message(MAILCTL_DSN, "synthetic")
    assert report.kind is Kind.BOUNCE
    assert report.tracking_id == "mc1-abcdefghijklmnop"
    assert report.verp_token == "mc1-abcdefghijklmnop"
    assert report.original_message_id == "<mc1-abcdefghijklmnop@sender.example.com>"
    [recipient] = report.recipients
    assert (recipient.address, recipient.status, recipient.suppress) == (
        "ann@example.org",
        "5.1.1",
        True,
    )
    data = report.to_json()
    assert list(data) == [
        "source",
        "kind",
        "recipients",
        "tracking_id",
        "original_message_id",
        "confidence",
    ]
    assert data["confidence"] == "dsn"
    assert list(data["recipients"][0]) == [
        "address",
        "status",
        "action",
        "reason",
        "permanent",
        "suppress",
        "diagnostic",
        "stage",
    ]
    json.dumps(data)
    assert len(report.digest) == 64


def test_streaming_mbox_built_on_the_fly(tmp_path: Path) -> None:
    path = tmp_path / "bounces.mbox"
    with path.open("wb") as mbox:
        for number in range(200):
            mbox.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2024\n")
            body = MAILCTL_DSN.replace(
                b"mc1-abcdefghijklmnop",
                b"mc1-"
                + bytes(f"{number:0>16}", "ascii").translate(
                    bytes.maketrans(b"0123456789", b"abcdefghij")
                ),
            )
            mbox.write(body.replace(b"\nFrom ", b"\n>From "))
            mbox.write(b"\n")
    reports = [parse_message(raw, source) for source, raw in iter_messages(path)]
    assert len(reports) == 200
    assert reports[-1].source.endswith("#200")
    assert all(r.kind is Kind.BOUNCE for r in reports)
    assert len({r.tracking_id for r in reports}) == 200


def test_iter_messages_reads_a_maildir_and_a_single_file(tmp_path: Path) -> None:
    for folder in ("cur", "new", "tmp"):
        (tmp_path / folder).mkdir()
    (tmp_path / "new" / "1.eml").write_bytes(MAILCTL_DSN)
    (tmp_path / "cur" / "2.eml").write_bytes(MAILCTL_DSN)
    assert len(list(iter_messages(tmp_path))) == 2
    single = tmp_path / "one.eml"
    single.write_bytes(MAILCTL_DSN)
    assert [source for source, _ in iter_messages(single)] == [str(single)]


@pytest.mark.parametrize(
    ("raw", "kind", "addresses"),
    [
        (bytes(range(256)) * 20, Kind.UNKNOWN, []),
        (b"\xff\xfe\x00garbage\r\n\r\n\x00\x01", Kind.UNKNOWN, []),
        # Cut in half, the DSN still names its failed recipient in the human-readable part.
        (MAILCTL_DSN[: len(MAILCTL_DSN) // 2], Kind.BOUNCE, ["ann@example.org"]),
        (b'Content-Type: multipart/report; boundary="X"\n\n--X\nContent-Type: message/delivery-status\n\nFinal-Recipient', Kind.UNKNOWN, []),  # noqa: E501
        (b"Subject: =?utf-8?B?broken?=\nContent-Type: text/plain; charset=nonexistent-charset\n\n\xe9\xe9 user unknown", Kind.UNKNOWN, []),  # noqa: E501
        (b"From: MAILER-DAEMON@x\nContent-Type: message/rfc822\n\n", Kind.UNKNOWN, []),
    ],
)  # fmt: skip
def test_malformed_input_yields_a_report_instead_of_crashing(
    raw: bytes, kind: Kind, addresses: list[str]
) -> None:
    report = parse_message(raw, "bad")
    assert (report.source, report.kind) == ("bad", kind)
    assert [r.address for r in report.recipients] == addresses
    assert json.loads(json.dumps(report.to_json())) == report.to_json()  # plain JSON


def test_empty_input_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(BounceParseError):
        parse_message(b"", "empty")
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    assert list(iter_messages(empty)) == [(str(empty), b"")]
    with pytest.raises(BounceParseError):
        parse_message(b"", str(empty))


def test_repeated_recipient_lists_keep_each_reply_with_its_address() -> None:
    raw = (
        b"From: Mail Delivery System <mailer-daemon@mx.example.net>\r\n"
        b"To: sender@example.com\r\nSubject: Mail delivery failed\r\n\r\n"
        b"A message that you sent could not be delivered. The following address(es) failed:\r\n\r\n"
        b"  full@example.jp\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<full@example.jp>:\r\n"
        b"    550 5.2.2 <full@example.jp>... Mailbox Full\r\n"
        b"  gone@example.jp\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<gone@example.jp>:\r\n"
        b"    550 5.1.1 <gone@example.jp>... User Unknown\r\n\r\n"
        b"Once more, in English:\r\n"
        b"  full@example.jp\r\n"
        b"    550 5.2.2 <full@example.jp>... Mailbox Full\r\n"
        b"  gone@example.jp\r\n"
        b"    550 5.1.1 <gone@example.jp>... User Unknown\r\n"
    )
    report = parse_message(raw, "twice.eml")
    reasons = {r.address: (r.reason, r.suppress) for r in report.recipients}
    assert reasons == {
        "full@example.jp": ("mailboxfull", False),
        "gone@example.jp": ("userunknown", True),
    }


def test_dsn_recipient_without_local_part_takes_the_address_the_text_names() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.co.jp\r\nTo: sender@example.or.jp\r\n"
        b"Subject: Returned mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\n\r\n<gone@example.org>\r\n    (reason: 550 Host unknown)\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: RFC822; @mx.example.org\r\nAction: failed\r\nStatus: 5.1.2\r\n\r\n"
        b"--b--\r\n"
    )
    report = parse_message(raw, "at.eml")
    assert [(r.address, r.reason) for r in report.recipients] == [
        ("gone@example.org", "hostunknown")
    ]


# A free-text bounce with the original message appended as plain text after a separator line
# (no message/rfc822 part): the returned headers give the tracking id and the sender's own
# address, which the notification may repeat (a transcript's "Sender ok", a rejected MAIL FROM)
# and which is never a failed recipient.
_ORIGINAL = (
    b"Return-Path: <news@sender.example.com>\r\n"
    b"Received: from sender.example.com (sender.example.com [192.0.2.10])\r\n"
    b"\tby mx.example.net with ESMTP id 1234; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: News <news@sender.example.com>\r\n"
    b"To: gone@example.jp\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <20240101000000.42@sender.example.com>\r\n"
    b"X-Mailctl-ID: mc1-abcdefghijklmnop\r\n"
    b"\r\n"
    b"Hello, world.\r\n"
)
_APPENDED_STYLES = {
    # Sendmail (V5/V8 without MIME): the transcript names only the sender; the recipient is
    # the returned message's To.
    "sendmail": (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\r\n"
        b"To: returns@bounce.example.com\r\nSubject: Returned mail: User unknown\r\n\r\n"
        b"   ----- Transcript of session follows -----\r\n"
        b">>> MAIL From:<news@sender.example.com>\r\n"
        b"<<< 250 2.1.0 <news@sender.example.com>... Sender ok\r\n"
        b">>> RCPT To:<gone@example.jp>\r\n"
        b"<<< 550 5.1.1 User unknown\r\n"
        b"550 User unknown\r\n\r\n"
        b"   ----- Unsent message follows -----\r\n"
    ),
    # qmail.
    "qmail": (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: returns@bounce.example.com\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.net.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<gone@example.jp>:\r\n"
        b"192.0.2.20 does not like recipient.\r\n"
        b"Remote host said: 550 5.1.1 <gone@example.jp>: Recipient address rejected:"
        b" User unknown (sent by news@sender.example.com)\r\n"
        b"Giving up on 192.0.2.20.\r\n\r\n"
        b"--- Below this line is a copy of the message.\r\n\r\n"
    ),
    # Exim, with its truncation note between the separator and the headers.
    "exim": (
        b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\r\n"
        b"To: returns@bounce.example.com\r\nSubject: Mail delivery failed\r\n"
        b"X-Failed-Recipients: gone@example.jp\r\n\r\n"
        b"This message was created automatically by mail delivery software.\r\n\r\n"
        b"A message that you sent could not be delivered to one or more of its\r\n"
        b"recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
        b"  gone@example.jp\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<gone@example.jp>:\r\n"
        b"    550 5.1.1 User unknown\r\n\r\n"
        b"------ This is a copy of the message, including all the headers. ------\r\n"
        b"------ The body of the message is 5000 characters long; only the first\r\n"
        b"------ 1000 or so are included here.\r\n\r\n"
    ),
    # Postfix without a DSN (old or "bounce_notice" style), the original quoted with "> ".
    "postfix-quoted": (
        b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        b"To: returns@bounce.example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n"
        b"I'm sorry to have to inform you that your message could not\r\n"
        b"be delivered to one or more recipients.\r\n\r\n"
        b"<gone@example.jp>: host mx.example.jp[192.0.2.30] said: 550 5.1.1\r\n"
        b"    <gone@example.jp>: Recipient address rejected: User unknown\r\n"
        b"    (in reply to RCPT TO command; sender was news@sender.example.com)\r\n\r\n"
        b"--- Undelivered message follows ---\r\n\r\n"
    ),
}


@pytest.mark.parametrize("style", sorted(_APPENDED_STYLES))
def test_original_appended_after_a_separator_line(style: str) -> None:
    original = _ORIGINAL
    if style == "postfix-quoted":
        original = b"".join(b"> " + line for line in _ORIGINAL.splitlines(keepends=True))
    report = parse_message(_APPENDED_STYLES[style] + original, f"{style}.eml")
    assert report.kind is Kind.BOUNCE
    assert report.tracking_id == "mc1-abcdefghijklmnop"
    assert report.original_message_id == "<20240101000000.42@sender.example.com>"
    assert [r.address for r in report.recipients] == ["gone@example.jp"]
    assert all(r.suppress and r.reason == "userunknown" for r in report.recipients)
