"""What a report says about time in the queue and whose address a header names, read from
RFC 3464/3463 semantics rather than any one MTA's template (issue #14).

- A delay warning, or a final failure whose status is still transient, whose reply names no
  cause reports a message that ran out of queue time: ``expired``. A named cause is kept.
- A recipient whose own words say its delivery expired or was given up is a final bounce,
  even under ``Action: delayed``; a delay warning with Status 4.4.7 alone is still a warning.
- X-Original-To is the report's own envelope recipient only as a delivery trace; written by
  the report's author beside a bounce addressed to the sender, it names someone else.
- ``bounces parse --json`` names the SMTP command refused where the report says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailctl.bounces.parse import Kind, parse_message
from mailctl.cli import run
from mailctl.replies.classify import classify_failure


def _dsn(action: str, status: str, diagnostic: str | None, text: str = "") -> bytes:
    """A multipart/report with one recipient, ``later@dest.example``."""
    diagnostic_line = f"Diagnostic-Code: smtp; {diagnostic}\n" if diagnostic else ""
    return f"""Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: news@ours.example
Subject: Delivery status notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.example.net.
{text}
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; later@dest.example
Action: {action}
Status: {status}
{diagnostic_line}
--B
Content-Type: text/rfc822-headers

From: News <news@ours.example>
To: later@dest.example
Subject: News

--B--
""".encode()


def _one(raw: bytes) -> tuple[Kind, str, str, bool]:
    report = parse_message(raw, "synthetic")
    [recipient] = report.recipients
    assert recipient.address == "later@dest.example"
    return report.kind, str(recipient.action), recipient.reason, recipient.permanent


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "expected"),
    [
        # The reply only restates a 4xx: the news is the time spent queued.
        ("delayed", "4.3.0", "451 4.3.0 Temporary lookup failure, try again later", "expired"),
        ("delayed", "4.0.0", "451 Temporary failure, please try again in 5 minutes", "expired"),
        ("failed", "4.3.0", "451 4.3.0 <later@dest.example>: Temporary lookup failure", "expired"),
        ("failed", "4.4.7", "451 4.3.0 Temporary lookup failure, try again later", "expired"),
        ("failed", "4.0.0", None, "expired"),
        # A cause the words or a specific detail code name is kept.
        (
            "delayed",
            "4.4.1",
            "connect to mx.dest.example[192.0.2.2]:25: No route to host",
            "networkerror",
        ),  # noqa: E501
        ("delayed", "4.2.2", "452 4.2.2 Mailbox full", "mailboxfull"),
        ("failed", "4.4.6", None, "networkerror"),
        # A permanent failure is what the reply says it is.
        ("failed", "5.3.0", "554 5.3.0 Local configuration error", "systemerror"),
    ],
)
def test_transient_failures_that_name_no_cause_expired_in_the_queue(
    action: str, status: str, diagnostic: str | None, expected: str
) -> None:
    kind, _, reason, permanent = _one(_dsn(action, status, diagnostic))
    assert reason == expected
    assert kind is (Kind.DELAY if action == "delayed" else Kind.BOUNCE)
    assert permanent is status.startswith("5")


def test_the_classifier_reads_the_action_field() -> None:
    reply = "451 4.3.0 Temporary lookup failure, try again later"
    assert classify_failure("4.3.0", reply, "delayed").reason == "expired"
    assert classify_failure("4.3.0", reply, "failed").reason == "expired"
    # No Action field stated (a live reply, or prose that names none): the code's own reading.
    assert classify_failure("4.3.0", reply, None).reason == "systemerror"


def test_prose_reporting_a_live_session_4xx_is_not_an_expiry() -> None:
    raw = b"""Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: postmaster@mx.example.net
Subject: Undelivered Mail Returned to Sender

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<later@dest.example>: host mx.dest.example[192.0.2.2] said: 451 4.3.0 Error:
    queue file write error (in reply to end of DATA command)
"""
    report = parse_message(raw, "synthetic")
    [recipient] = report.recipients
    assert (report.kind, recipient.reason, recipient.permanent) == (
        Kind.BOUNCE,
        "systemerror",
        False,
    )


def test_a_delayed_recipient_whose_envelope_expired_is_a_final_bounce() -> None:
    text = (
        "    A message is delayed for more than 0 seconds for the following\n"
        "    list of recipients:\n\n"
        "later@dest.example: Envelope expired\n\n"
        "    Please note that this is only a temporary failure report.\n"
        "    The message is kept in the queue for up to 7 days.\n"
    )
    assert _one(_dsn("delayed", "4.4.7", None, text)) == (Kind.BOUNCE, "failed", "expired", False)


def test_a_delay_warning_with_status_4_4_7_alone_is_still_a_warning() -> None:
    text = (
        "THIS IS A WARNING MESSAGE ONLY.\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n"
        "Delivery to the following recipients has been delayed.\n\n       later@dest.example\n"
    )
    assert _one(_dsn("delayed", "4.4.7", None, text)) == (Kind.DELAY, "delayed", "expired", False)


def test_prose_saying_the_message_expired_is_not_a_delay() -> None:
    raw = b"""Return-Path: <>
From: MAILER-DAEMON@mx.example.net
To: news@ours.example
Subject: Delivery status notification: delayed

A message is delayed for more than 4 days for the following recipients:

<later@dest.example>: message expired after 4 days in the queue
"""
    report = parse_message(raw, "synthetic")
    [recipient] = report.recipients
    assert (report.kind, recipient.action, recipient.reason) == (Kind.BOUNCE, "failed", "expired")


_AUTHOR_WRITTEN_X_ORIGINAL_TO = b"""Received: from MAILER-DAEMON
\tby mx.example.net (Small Mailer 1.0);
\tMon, 30 Nov 2026 07:33:36 +0000
X-Original-To: <gone@dest.example>
From: MAILER-DAEMON <>
To: news@ours.example
Subject: Mail delivery failed
%(delivered)s
There was an error delivering your mail to <gone@dest.example>.

mx.dest.example [192.0.2.2] did not like our RCPT TO:
550 5.1.1 <gone@dest.example>: Recipient address rejected: User unknown

Message headers follow.

From: News <news@ours.example>
To: gone@dest.example
Subject: News
"""


def test_x_original_to_written_by_the_reports_author_names_the_failed_recipient() -> None:
    report = parse_message(_AUTHOR_WRITTEN_X_ORIGINAL_TO % {b"delivered": b""}, "synthetic")
    [recipient] = report.recipients
    assert (report.kind, recipient.address, recipient.reason, recipient.suppress) == (
        Kind.BOUNCE,
        "gone@dest.example",
        "userunknown",
        True,
    )


def test_x_original_to_as_a_delivery_trace_is_the_senders_own_address() -> None:
    # Beside Delivered-To it is the delivering MTA's trace: the address the report itself was
    # delivered to, never a failed recipient on its own say.
    raw = _AUTHOR_WRITTEN_X_ORIGINAL_TO % {b"delivered": b"Delivered-To: news@ours.example\n"}
    assert parse_message(raw, "synthetic").recipients == ()


def test_parse_json_names_the_smtp_stage_where_the_report_says(tmp_path: Path, capsys) -> None:
    eml = tmp_path / "dma.eml"
    eml.write_bytes(_AUTHOR_WRITTEN_X_ORIGINAL_TO % {b"delivered": b""})
    delay = tmp_path / "delay.eml"
    delay.write_bytes(_dsn("delayed", "4.3.0", "451 4.3.0 Temporary lookup failure"))
    assert run(["bounces", "parse", str(eml), str(delay), "--json"]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["recipients"] == [
        {
            "address": "gone@dest.example",
            "status": "5.1.1",
            "action": "failed",
            "reason": "userunknown",
            "permanent": True,
            "suppress": True,
            "diagnostic": "550 5.1.1 <gone@dest.example>: Recipient address rejected: User unknown",
            "stage": "rcpt",
        }
    ]
    # A DSN that does not say which command was refused has no stage.
    assert [(r["reason"], r["stage"]) for r in second["recipients"]] == [("expired", None)]
