"""The embedded local SMTP server of the `sandbox` profile: every message lands in a Maildir.

A small aiosmtpd server on 127.0.0.1 that accepts everything, so a campaign can be
rehearsed end to end without sending mail anywhere. Imports nothing from mailctl.sim (the
simulated providers are for rehearsing provider behaviour, not for delivery).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailctl.files import write_private_bytes_into

_HOSTNAME = "mx.sim.invalid"  # never resolvable: the sandbox is not a real MX


class _MaildirHandler:
    """aiosmtpd handler: accept every recipient, write one Maildir file per recipient."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self._queue_prefix = secrets.token_hex(3).upper()
        self._queue_ids = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queue_id = f"{self._queue_prefix}{next(self._queue_ids):08X}"
        sender = envelope.mail_from or ""
        content = envelope.original_content or b""
        peer = session.peer
        source_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        now = time.time()
        for rcpt in envelope.rcpt_tos:
            received = (
                f"Return-Path: <{sender}>\n"
                f"Delivered-To: {rcpt}\n"
                f"Received: from {session.host_name or 'unknown'} ([{source_ip}])\n"
                f"\tby {_HOSTNAME} (mailctl-sim) with ESMTP id {queue_id}\n"
                f"\tfor <{rcpt}>; {formatdate(now)}\n"
            ).encode()
            # Maildir files use LF; written to tmp/, mode 0600 (they hold recipients'
            # messages), then renamed into new/ when complete.
            write_private_bytes_into(
                self.maildir / "new",
                f"{int(now)}.M{secrets.token_hex(8)}Q{queue_id}.mailctl",
                received + content.replace(b"\r\n", b"\n"),
                temp_directory=self.maildir / "tmp",
                durable=False,  # a rehearsal outbox: complete files matter, not fsync
            )
        return f"250 2.0.0 OK queued as {queue_id}"


class _SandboxSMTP(SMTP):
    """aiosmtpd's SMTP, remembered while connected so that closing can cut it."""

    def __init__(self, open_protocols: set[_SandboxSMTP], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open = open_protocols

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._open.discard(self)
        super().connection_lost(error)


class Sandbox:
    """The embedded local SMTP server of the `sandbox` profile (messages go to a Maildir)."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[_SandboxSMTP] = set()

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1; returns the port."""
        for sub in ("tmp", "new", "cur"):  # a Maildir, also when the folder already exists
            (self.outbox / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = _MaildirHandler(self.outbox)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SandboxSMTP(
                self._open,
                handler,
                hostname=_HOSTNAME,  # avoids a getfqdn() DNS lookup per connection
                ident="ESMTP mailctl-sim",
                enable_SMTPUTF8=True,
                data_size_limit=32 * 1024 * 1024,
                loop=loop,
            ),
            host="127.0.0.1",
            port=0,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._open):  # a client still connected: cut it
            transport = protocol.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        await server.wait_closed()
