"""SMTP delivery over aiosmtplib: pooled, reused connections per destination.

A destination is where connections go: the relay, the embedded sandbox server (sandbox.py),
or (with direct delivery) an MX host. Connections are reused up to a messages-per-connection
limit.
A connection that dies mid-message yields a deferral, never a "sent".

aiosmtplib opens each session (greeting, EHLO, STARTTLS, AUTH); its transport then goes to a
`ReplyReader` (smtp_reader.py), and a server that offers PIPELINING (RFC 2920) gets MAIL, RCPT
and DATA in one write: two round trips per message instead of four. Where the caller already
holds the next message, its RSET, MAIL, RCPT and DATA follow the last message's text in the
same write (RFC 2920 lets message content open a group): one write and one round trip a
message.

"Sent" means the receiver took responsibility for the message: a 2xx to the end of data
that followed a 354. Any other 2xx (252 to MAIL or RCPT, 250 to DATA itself) is a protocol
error, and no answer after the final dot (timeout, lost connection, garbage) leaves the
message possibly delivered: the reply says so and the caller defers it as a possible
duplicate.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
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
from aiosmtplib.response import SMTPResponse

from mailctl.config.profiles import Profile, TlsMode, TransportKind, is_loopback
from mailctl.delivery.smtp_reader import INVALID_REPLY, NO_TIMEOUT, ReplyReader
from mailctl.untrusted import printable


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
    # A 2xx to the end of data that followed a 354: the receiver took responsibility.
    delivered: bool = False
    # The server broke the protocol (a 2xx where none may come, an unreadable reply).
    protocol_error: bool = False
    # No usable answer after the final dot: the receiver may hold the message already.
    possible_duplicate: bool = False

    @property
    def ok(self) -> bool:
        """True only for a delivery: no other 2xx means the receiver has the message."""
        return self.delivered

    @property
    def from_receiver(self) -> bool:
        """Only replies the receiver actually sent may feed reputation rules (a broken
        protocol exchange says nothing about reputation)."""
        return self.code is not None and not self.protocol_error


def _line(command: bytes) -> bytes:
    """One command line. A CR or LF inside would start another command."""
    if b"\r" in command or b"\n" in command:
        raise ValueError("command contains a line break")
    return command + b"\r\n"


async def _command(reader: ReplyReader, command: bytes) -> SMTPResponse:
    """One command and its reply."""
    reader.write(_line(command), 1)
    return await reader.reply()


class SenderFault:
    """Why a connection could not carry mail for reasons on the sending side."""

    AUTH = "auth"  # the relay refused our credentials (530, 534, 535, 538 to AUTH)
    TLS = "tls"  # TLS is required and the server did not offer it, or the handshake failed
    CONNECT = "connect"  # no SMTP session at all: refused, unreachable, timed out


# A reply's text as stored and shown: a server may send up to aiosmtplib's 32 KB.
_MAX_REPLY_TEXT = 512


def _reply(
    code: int | None,
    message: str,
    stage: str | None = None,
    fault: str | None = None,
    **flags: bool,
) -> Reply:
    text = " ".join(line.strip() for line in (message or "").splitlines() if line.strip())
    text = printable(text, _MAX_REPLY_TEXT)
    return Reply(
        code, f"{code} {text}".strip() if code is not None else text, stage, fault, **flags
    )


def _protocol_error(code: int, message: str, stage: str) -> Reply:
    """A reply the protocol does not allow at this stage: deferred, never "sent"."""
    what = f"unexpected {code} reply to {stage.upper()}" if code >= 0 else "unreadable reply"
    return _reply(None, f"protocol error: {what}: {message}", stage, protocol_error=True)


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


# The next message's envelope (sender, recipient) to send behind this one's text, or None.
Follow = Callable[[], "tuple[str, str] | None"]


def _transaction(
    envelope_from: str, recipient: str, *, reset: bool = False
) -> tuple[tuple[str, bytes, tuple[int, ...]], ...]:
    """MAIL, RCPT and DATA of one message, RSET first with ``reset``: (stage, command line,
    its success codes)."""
    # Addresses were validated and IDNA-encoded on import, so they go out as they are.
    commands = (
        ("mail", _line(b"MAIL FROM:<%s>" % envelope_from.encode()), (250,)),
        ("rcpt", _line(b"RCPT TO:<%s>" % recipient.encode()), (250, 251)),
        ("data", b"DATA\r\n", (354,)),
    )
    return (("rset", b"RSET\r\n", (250,)), *commands) if reset else commands


def _dot_stuffed(data: bytes) -> bytes:
    """The message as sent after DATA: CRLF line ends, leading dots doubled, the final dot."""
    lines = data.count(b"\n")
    if data.count(b"\r\n") != lines or data.count(b"\r") != lines:  # not CRLF throughout
        data = _LINE_ENDS.sub(b"\r\n", data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


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
    allow_plaintext_auth: bool = False  # AUTH without TLS beyond loopback (the profile says so)
    helo: str | None = None
    source_ip: str | None = None
    timeout: float = 30.0
    validate_certs: bool = True
    fallback_hosts: tuple[str, ...] = ()  # further MX hosts, tried when a connect fails
    pipelining: bool = True  # pipeline MAIL, RCPT and DATA where the server offers it


def source_address(ip: str | None) -> tuple[str, int] | None:
    """The local address to bind for sending from ``ip`` (None: the system's choice)."""
    return (ip, 0) if ip and ip not in ("0.0.0.0", "::") else None


class Connection:
    """One SMTP session, reused for many messages."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.client: aiosmtplib.SMTP | None = None
        self.reader: ReplyReader | None = None  # the open session's replies
        self.pipelining = False  # the server offered PIPELINING and the destination allows it
        self.messages = 0
        self._session_open = False
        self.last_used = 0.0  # when it last carried a message (the dispatcher's clock)
        self.refusals = 0  # refusals in a row since the last delivery on this session
        # The envelope whose RSET, MAIL, RCPT and DATA went out behind the last message's
        # text: the next `send` must be that message, and their four replies are owed.
        self.presented: tuple[str, str] | None = None

    @property
    def alive(self) -> bool:
        """Open, and the server has not hung up since (a hang-up while idle shows at once)."""
        return self._session_open and self.reader is not None and self.reader.usable

    async def open(self, sock: socket.socket | None = None) -> Reply | None:
        """Connect (falling back to the next MX host when a host cannot be reached), EHLO,
        STARTTLS, AUTH. Returns None on success, else the failure reply. ``sock``: a socket
        already connected to the first host (early.py), whose greeting is read instead of
        connecting."""
        failure: Reply | None = None
        for host in (self.destination.host, *self.destination.fallback_hosts):
            failure = await self._open(host, sock)
            sock = None
            # Only an unreachable host moves on: a server that answered has spoken for all.
            if failure is None or failure.code is not None:
                return failure
        return failure

    async def _open(self, host: str, sock: socket.socket | None) -> Reply | None:
        d = self.destination
        tls_context = None
        if d.tls is not TlsMode.NONE and not d.validate_certs:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=host,
            port=None if sock else d.port,
            sock=sock,
            local_hostname=d.helo,
            source_address=None if sock else source_address(d.source_ip),
            timeout=d.timeout,
            use_tls=d.tls is TlsMode.IMPLICIT,
            start_tls=False,
            validate_certs=d.validate_certs,
            tls_context=tls_context,
        )
        try:
            await client.connect()
            await self._greet(client)
            encrypted = d.tls is TlsMode.IMPLICIT
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
                    encrypted = True
                elif d.tls_required:
                    client.close()
                    return Reply(
                        None,
                        f"{d.name}: STARTTLS not offered and TLS is required",
                        fault=SenderFault.TLS,
                    )
            if d.username and not encrypted and not plaintext_auth_allowed(d, host):
                client.close()
                return Reply(
                    None,
                    f"{d.name}: no TLS, and AUTH would send the password in cleartext"
                    " (allow_plaintext_auth: true permits it)",
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
            if exc.code == INVALID_REPLY:  # garbage or an endless line instead of SMTP
                return _reply(
                    None,
                    f"connection to {d.name} failed: {exc.message}",
                    "connect",
                    SenderFault.CONNECT,
                )
            return _reply(exc.code, exc.message, "connect")
        except (TimeoutError, SMTPException, OSError) as exc:
            client.close()
            return Reply(
                None, f"connection to {d.name} failed: {_describe(exc)}", fault=SenderFault.CONNECT
            )
        transport = client.transport
        if transport is None or transport.is_closing():
            client.close()
            return Reply(
                None, f"connection to {d.name} failed: connection lost", fault=SenderFault.CONNECT
            )
        self.client = client
        self.reader = ReplyReader.take_over(transport, d.timeout or NO_TIMEOUT)
        self.pipelining = d.pipelining and client.supports_extension("pipelining")
        self._session_open = True
        self.messages = 0
        return None

    @staticmethod
    async def _greet(client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except SMTPHeloError:
            await client.helo()  # a very old server: no extensions

    async def send(
        self, envelope_from: str, recipient: str, data: bytes, follow: Follow | None = None
    ) -> Reply:
        """One transaction. After a refusal the session is reset for the next message.

        Each stage takes only its own success code (250 to MAIL, 250/251 to RCPT, 354 to
        DATA); a 2xx to the end of data is the one delivery. With PIPELINING the three
        commands go out together and their replies are read in order: the first refusal
        decides, and the replies still owed are read before the RSET.

        ``follow`` is asked, just before the text goes out, for the next message's envelope;
        with PIPELINING its commands go in the same write (`presented`), and the next call
        must send that message. A message whose commands were presented so starts by
        reading their replies. They begin with RSET: whatever the reply to the text, the next
        transaction starts clean. (Postfix keeps a transaction that its end-of-data
        restrictions refused: a MAIL right after it gets "503 nested MAIL command", and
        the RCPT and DATA that follow are taken into the refused transaction.)
        """
        reader = self.reader
        ahead, self.presented = self.presented, None
        if ahead is not None and ahead != (envelope_from, recipient):
            raise RuntimeError("send() is not the message presented behind the last one")
        if reader is None:
            return self._unanswered("mail", "connection lost before the message")
        stage = "mail"
        try:
            commands = _transaction(envelope_from, recipient, reset=ahead is not None)
            if self.pipelining and ahead is None:
                reader.write(b"".join(line for _, line, _ in commands), len(commands))
            for index, (stage, line, success) in enumerate(commands):
                if not self.pipelining:
                    reader.write(line, 1)
                response = await reader.reply()  # each within the destination's timeout
                if response.code not in success:
                    if stage == "rset":  # the session is out of step: nothing more on it
                        self._dead()
                        return self._unanswered("mail", f"RSET refused: {response.code}")
                    owed = len(commands) - index - 1 if self.pipelining else 0
                    return await self._refused(response.code, response.message, stage, owed)
            text = _dot_stuffed(data)
            following = follow() if follow is not None and self.pipelining else None
            if following is None:
                reader.write(text, 1)
            else:
                then = _transaction(*following, reset=True)
                reader.write(text + b"".join(line for _, line, _ in then), 1 + len(then))
                self.presented = following
            stage = "dot"  # from here on the receiver may have the message
            response = await reader.reply()
        except SMTPServerDisconnected as exc:
            self._dead()
            return self._unanswered(stage, f"connection lost: {_describe(exc)}")
        except (SMTPTimeoutError, TimeoutError) as exc:
            self._dead()  # a reply may still come: nothing more on this session pairs up
            return self._unanswered(stage, f"timeout: {_describe(exc)}")
        except SMTPResponseException as exc:  # an unreadable reply
            self._dead()  # nothing more said on this connection can be trusted
            if stage == "dot":
                return self._unanswered(stage, f"unreadable reply: {exc.message}")
            return _protocol_error(exc.code, exc.message, stage)
        except (SMTPException, OSError, ValueError) as exc:
            self._dead()
            return self._unanswered(stage, f"connection error: {_describe(exc)}")
        if 200 <= response.code < 300:
            self.messages += 1
            self.refusals = 0
            return _reply(response.code, response.message, "data", delivered=True)
        return await self._refused(response.code, response.message, "data")

    @staticmethod
    def _unanswered(stage: str, what: str) -> Reply:
        """No reply: before the final dot the message was surely not taken; after it, it
        may have been."""
        if stage == "dot":
            return _reply(
                None,
                f"{what} after the end of data (possible duplicate)",
                "data",
                possible_duplicate=True,
            )
        return _reply(None, what, stage)

    async def noop(self) -> bool:
        """Whether an idle connection still answers (NOOP); a dead one is closed."""
        if self.reader is None or not self.alive:
            return False
        try:
            response = await _command(self.reader, b"NOOP")
        except (TimeoutError, SMTPException, OSError):
            self._dead()
            return False
        if response.code != 250:
            await self.close()
            return False
        return True

    async def _refused(self, code: int, message: str, stage: str, owed: int = 0) -> Reply:
        """A refusal at `stage`; `owed` pipelined replies are still to be read."""
        if 200 <= code < 300:
            # A 2xx where the stage has another success code (252 to RCPT, 250 to DATA):
            # the server did not take the message. The session cannot be trusted either.
            self._dead()
            return _protocol_error(code, message, stage)
        reply = _reply(code, message, stage)
        await self._after_refusal(reply, owed)
        return reply

    async def _after_refusal(self, reply: Reply, owed: int) -> None:
        """Read the replies still owed (those of the stages after the refused one), then
        RSET for the next message. A refusal of the text with the next message presented
        needs no RSET here: the presented commands start with one."""
        self.refusals += 1
        if reply.code == 421 or self.reader is None:  # the server is closing the channel
            self._dead()
            return
        if self.presented is not None:
            return
        try:
            recipient_taken = False
            for stage in ("rcpt", "data")[-owed:] if owed else ():
                code = (await self.reader.reply()).code
                if stage == "rcpt":
                    recipient_taken = 200 <= code < 300
                elif code == 354:
                    if recipient_taken:
                        # MAIL refused, yet a recipient taken: the server holds a transaction
                        # that is not ours (an earlier sender), and a dot would deliver an
                        # empty message. Hang up mid-data: the server drops it.
                        self._dead()
                        return
                    # DATA taken although no recipient was: RFC 2920 has the client end it
                    # with a lone dot (a message with no recipient), then RSET.
                    self.reader.write(b".\r\n", 1)
                    await self.reader.reply()
            if (await _command(self.reader, b"RSET")).code != 250:
                self._dead()
        except (SMTPException, OSError):
            self._dead()

    def abort(self) -> None:
        """Hang up at once, without QUIT: the server drops an unfinished transaction."""
        self._dead()

    def _dead(self) -> None:
        self._session_open = False
        self.presented = None
        if self.client is not None:
            self.client.close()  # closes the transport the reader reads from
        self.client = None
        self.reader = None

    async def close(self) -> None:
        """QUIT and hang up. With a message presented the server may be waiting for its
        text: hang up without QUIT (it would be read as text), and the unfinished message
        is dropped by the server, never delivered."""
        if self.reader is not None and self.alive and self.presented is None:
            try:
                async with asyncio.timeout(2):
                    await _command(self.reader, b"QUIT")
            except (TimeoutError, SMTPException, OSError):
                pass
        self._dead()


def plaintext_auth_allowed(destination: Destination, host: str | None = None) -> bool:
    """AUTH without TLS: to loopback, or where the profile allows it."""
    return destination.allow_plaintext_auth or is_loopback(host or destination.host)


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
        allow_plaintext_auth=profile.allow_plaintext_auth,
        helo=profile.helo,
        source_ip=source_ip,
        timeout=profile.timeout,
        validate_certs=profile.tls_verify,
        pipelining=profile.pipelining,
    )
