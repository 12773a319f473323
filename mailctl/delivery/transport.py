"""SMTP delivery over aiosmtplib: pooled, reused connections per destination.

A destination is where connections go: the relay, the embedded sandbox server (sandbox.py),
or (with direct delivery) an MX host. Connections are reused up to a messages-per-connection
limit.
A connection that dies mid-message yields a deferral, never a "sent".
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from mailctl.config.profiles import Profile, TlsMode, TransportKind


@dataclass(frozen=True)
class Reply:
    """One SMTP reply as a single line. code None: no reply (network failure).

    ``stage`` is the command it answered: connect (greeting, EHLO, STARTTLS, AUTH), mail,
    rcpt or data; the classifier needs it to tell whose fault a refusal is. ``fault`` names
    a failure on the sending side that only the operator can fix (`SenderFault`), or None.
    """

    code: int | None
    text: str
    stage: str | None = None
    fault: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def from_receiver(self) -> bool:
        """Only replies the receiver actually sent may feed reputation rules."""
        return self.code is not None


class SenderFault:
    """Why a connection could not carry mail for reasons on the sending side."""

    AUTH = "auth"  # the relay refused our credentials (530, 534, 535, 538 to AUTH)
    TLS = "tls"  # TLS is required and the server did not offer it, or the handshake failed
    CONNECT = "connect"  # no SMTP session at all: refused, unreachable, timed out


def _reply(
    code: int | None, message: str, stage: str | None = None, fault: str | None = None
) -> Reply:
    text = " ".join(line.strip() for line in (message or "").splitlines() if line.strip())
    return Reply(code, f"{code} {text}".strip() if code is not None else text, stage, fault)


@dataclass(frozen=True)
class Destination:
    """Where a pool of connections goes and how it talks."""

    name: str
    host: str
    port: int
    tls: TlsMode = TlsMode.NONE
    tls_required: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    helo: str | None = None
    source_ip: str | None = None
    timeout: float = 30.0
    validate_certs: bool = True
    fallback_hosts: tuple[str, ...] = ()  # further MX hosts, tried when a connect fails


class Connection:
    """One SMTP session, reused for many messages."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.client: aiosmtplib.SMTP | None = None
        self.messages = 0
        self.alive = False
        self.last_used = 0.0  # when it last carried a message (the dispatcher's clock)

    async def open(self) -> Reply | None:
        """Connect (falling back to the next MX host when a host cannot be reached), EHLO,
        STARTTLS, AUTH. Returns None on success, else the failure reply."""
        failure: Reply | None = None
        for host in (self.destination.host, *self.destination.fallback_hosts):
            failure = await self._open(host)
            # Only an unreachable host moves on: a server that answered has spoken for all.
            if failure is None or failure.code is not None:
                return failure
        return failure

    async def _open(self, host: str) -> Reply | None:
        d = self.destination
        source = (d.source_ip, 0) if d.source_ip and d.source_ip not in ("0.0.0.0", "::") else None
        tls_context = None
        if d.tls is not TlsMode.NONE and not d.validate_certs:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=host,
            port=d.port,
            local_hostname=d.helo,
            source_address=source,
            timeout=d.timeout,
            use_tls=d.tls is TlsMode.IMPLICIT,
            start_tls=False,
            validate_certs=d.validate_certs,
            tls_context=tls_context,
        )
        try:
            await client.connect()
            await self._greet(client)
            if d.tls is TlsMode.STARTTLS:
                if client.supports_extension("starttls"):
                    try:
                        await client.starttls(
                            validate_certs=d.validate_certs, tls_context=tls_context
                        )
                    except (TimeoutError, SMTPException, OSError) as exc:
                        client.close()
                        return Reply(
                            None,
                            f"TLS with {d.name} failed: {_describe(exc)}",
                            fault=SenderFault.TLS,
                        )
                    await self._greet(client)  # the session starts over after STARTTLS
                elif d.tls_required:
                    client.close()
                    return Reply(
                        None,
                        f"{d.name}: STARTTLS not offered and TLS is required",
                        fault=SenderFault.TLS,
                    )
            if d.username:
                try:
                    await client.login(d.username, d.password or "")
                except SMTPResponseException as exc:
                    client.close()
                    return _reply(exc.code, exc.message, "connect", SenderFault.AUTH)
        except SMTPConnectResponseError as exc:
            client.close()
            return _reply(exc.code, exc.message, "connect")
        except SMTPResponseException as exc:
            client.close()
            return _reply(exc.code, exc.message, "connect")
        except (TimeoutError, SMTPException, OSError) as exc:
            client.close()
            return Reply(
                None, f"connection to {d.name} failed: {_describe(exc)}", fault=SenderFault.CONNECT
            )
        self.client = client
        self.alive = True
        self.messages = 0
        return None

    @staticmethod
    async def _greet(client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except SMTPHeloError:
            await client.helo()  # a very old server: no extensions

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> Reply:
        """One transaction. After a refusal the session is reset for the next message."""
        client = self.client
        assert client is not None
        stage = "mail"
        try:
            # Addresses were validated and IDNA-encoded on import, so they go out as they
            # are: aiosmtplib's mail()/rcpt() would re-parse both for every message.
            response = await client.execute_command(b"MAIL", b"FROM:<%s>" % envelope_from.encode())
            if response.code != 250:
                return await self._refused(response.code, response.message, stage)
            stage = "rcpt"
            response = await client.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode())
            if response.code not in (250, 251):
                return await self._refused(response.code, response.message, stage)
            stage = "data"
            response = await client.data(data)
        except SMTPServerDisconnected as exc:
            self._dead()
            return Reply(None, f"connection lost: {_describe(exc)}")
        except SMTPTimeoutError as exc:
            self._dead()
            return Reply(None, f"timeout: {_describe(exc)}")
        except SMTPResponseException as exc:
            reply = _reply(exc.code, exc.message, stage)
            await self._after_refusal(reply)
            return reply
        except (SMTPException, OSError) as exc:
            self._dead()
            return Reply(None, f"connection error: {_describe(exc)}")
        self.messages += 1
        return _reply(response.code, response.message, "data")

    async def noop(self) -> bool:
        """Whether an idle connection still answers (NOOP); a dead one is closed."""
        if self.client is None or not self.alive:
            return False
        try:
            response = await self.client.noop()
        except (SMTPException, OSError):
            self._dead()
            return False
        if response.code != 250:
            await self.close()
            return False
        return True

    async def _refused(self, code: int, message: str, stage: str) -> Reply:
        reply = _reply(code, message, stage)
        await self._after_refusal(reply)
        return reply

    async def _after_refusal(self, reply: Reply) -> None:
        if reply.code == 421:  # the server is closing the channel
            self._dead()
            return
        try:
            assert self.client is not None
            await self.client.rset()
        except (SMTPException, OSError):
            self._dead()

    def _dead(self) -> None:
        self.alive = False
        if self.client is not None:
            self.client.close()
        self.client = None

    async def close(self) -> None:
        if self.client is not None and self.alive:
            try:
                await asyncio.wait_for(self.client.quit(), timeout=2)
            except (TimeoutError, SMTPException, OSError):
                pass
        self._dead()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def relay_destination(
    profile: Profile, source_ip: str | None, port: int | None = None
) -> Destination:
    """The single destination of a relay or sandbox profile."""
    if profile.transport is TransportKind.SANDBOX:
        return Destination(
            name="sandbox",
            host="127.0.0.1",
            port=port or 0,
            helo=profile.helo or "localhost",
            timeout=profile.timeout,
        )
    assert profile.host is not None and profile.port is not None
    return Destination(
        name=f"{profile.host}:{profile.port}",
        host=profile.host,
        port=port or profile.port,
        tls=profile.tls,
        tls_required=profile.tls_required,
        username=profile.username,
        password=profile.password(),
        helo=profile.helo,
        source_ip=source_ip,
        timeout=profile.timeout,
        validate_certs=profile.tls_verify,
    )
