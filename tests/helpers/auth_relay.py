"""A real aiosmtpd relay on loopback that requires AUTH (LOGIN/PLAIN), for the transport and
cron exit-status tests. It takes mail only from mailer / right horse battery and answers any
other credentials with aiosmtpd's own 535."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USERNAME = b"mailer"
PASSWORD = b"right horse battery"


class RecordingSink:
    """Accepts every message and records its recipients."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.received.extend(envelope.rcpt_tos)
        return "250 OK"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USERNAME,
        PASSWORD,
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@contextmanager
def running_auth_relay() -> Iterator[tuple[int, RecordingSink]]:
    """Start the relay on a free loopback port; yield (port, sink); stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    sink = RecordingSink()
    # A relay on loopback in a test: AUTH without TLS is deliberate here.
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        yield port, sink
    finally:
        controller.stop()
