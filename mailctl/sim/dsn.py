"""Delivery status notifications a simulated provider sends, and the mbox they land in.

Owns building an RFC 3464 DSN for one failed recipient, appending messages to an mbox (locked,
mboxrd-escaped, flushed, so a reader never sees half a DSN) and reading that mbox back.

Must not import aiosmtpd, the handler or the servers, nor mailctl's cli, delivery, bounces or
report.
"""

from __future__ import annotations

import mailbox
import re
import secrets
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

try:  # POSIX only: lock the mbox like mailbox.mbox does, so readers never see half a DSN
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    rcpt: str,
    status: str,
    diagnostic: str,
    original_headers: bytes,
    arrival: float,
    queue_id: str,
) -> bytes:
    """An RFC 3464 delivery status notification (LF line endings) for one failed recipient."""
    boundary = f"{queue_id}.{secrets.token_hex(6)}/{reporting_mta}"
    date = formatdate(arrival)
    headers = original_headers.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n"
    text = (
        f"Return-Path: <>\n"
        f"From: Mail Delivery Subsystem <MAILER-DAEMON@{reporting_mta}>\n"
        f"To: <{sender}>\n"
        f"Subject: Undelivered Mail Returned to Sender\n"
        f"Date: {date}\n"
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}.dsn@{reporting_mta}>\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"\n'
        f"\n"
        f"This is a MIME-encapsulated message.\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Notification\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
        f"\n"
        f"This is the mail system at host {reporting_mta}.\n"
        f"\n"
        f"I'm sorry to have to inform you that your message could not\n"
        f"be delivered to one or more recipients.\n"
        f"\n"
        f"<{rcpt}>: host {reporting_mta} said: {diagnostic}\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Delivery report\n"
        f"Content-Type: message/delivery-status\n"
        f"\n"
        f"Reporting-MTA: dns; {reporting_mta}\n"
        f"X-Postfix-Queue-ID: {queue_id}\n"
        f"X-Postfix-Sender: rfc822; {sender}\n"
        f"Arrival-Date: {date}\n"
        f"\n"
        f"Final-Recipient: rfc822; {rcpt}\n"
        f"Original-Recipient: rfc822; {rcpt}\n"
        f"Action: failed\n"
        f"Status: {status}\n"
        f"Remote-MTA: dns; {reporting_mta}\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Undelivered Message Headers\n"
        f"Content-Type: text/rfc822-headers\n"
        f"\n"
    ).encode()
    return text + headers + f"\n--{boundary}--\n".encode()


def _mbox_escape(body: bytes) -> bytes:
    # mboxrd: a line starting with "From " (after any ">") gets one more ">".
    return re.sub(rb"(?m)^(>*From )", rb">\1", body)


_mbox_lock = threading.Lock()  # several sims in one process may share an mbox


def append_to_mbox(path: Path, message: bytes, when: float) -> None:
    """Append one message to an mbox: a "From " line, escaped body, blank line, flushed."""
    from_line = f"From MAILER-DAEMON {time.asctime(time.gmtime(when))}\n".encode()
    body = _mbox_escape(message.replace(b"\r\n", b"\n"))
    if not body.endswith(b"\n"):
        body += b"\n"
    with _mbox_lock, path.open("ab") as mbox_file:
        if fcntl is not None:
            fcntl.lockf(mbox_file, fcntl.LOCK_EX)
        try:
            mbox_file.write(from_line + body + b"\n")
            mbox_file.flush()
        finally:
            if fcntl is not None:
                fcntl.lockf(mbox_file, fcntl.LOCK_UN)


def iter_mbox(path: Path) -> Iterator[mailbox.mboxMessage]:
    """The messages of an mbox written by the sim (a convenience for tests and rehearsals)."""
    box = mailbox.mbox(path, create=False)
    try:
        yield from box
    finally:
        box.close()
