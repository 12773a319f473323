"""The aiosmtpd side of a simulated provider: the handler that decides every reply.

Owns :class:`SimHandler` (aiosmtpd's handler hooks plus the provider's records and state) and
:class:`SimSMTP` (aiosmtpd's protocol plus what it has no hook for: connect-time replies,
dropped connections, closing after 421 or the per-connection cap, delayed answers).

Must not import the servers module, nor mailctl's cli, delivery, bounces or report.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import mailbox
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate
from typing import Any, AnyStr, TextIO

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailctl.message.tracking import TRACKING_HEADER
from mailctl.sim.behaviours import (
    CapAction,
    Command,
    GreylistMemory,
    SimConfig,
    Stage,
    ThrottleCounter,
    address_matches,
)
from mailctl.sim.dsn import append_to_mbox, build_dsn
from mailctl.sim.events import (
    Bounce,
    Delivery,
    EventCallback,
    IpStats,
    Refusal,
    RefusalReason,
    SimEvent,
    SimEventKind,
    TimeSource,
    ip_stats,
)
from mailctl.sim.replies import INTERNAL_ERROR, SimReply
from mailctl.sim.reputation import Folder, ReputationBook, Verdict

# aiosmtpd logs through "mail.log"; without a handler, warnings would reach stderr through
# logging's last resort. The sim never prints, so give that logger a sink (callers may still
# attach their own handlers).
logging.getLogger("mail.log").addHandler(logging.NullHandler())

_DROP = "__mailctl_sim_drop__"


@dataclass
class _Connection:
    """Per TCP connection state (survives STARTTLS, unlike aiosmtpd's Session)."""

    source_ip: str
    messages: int = 0
    close_after_reply: bool = False


def _header_block(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 2]


def _parse_ids(content: bytes) -> tuple[str | None, str | None]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(_header_block(content))

    def one(name: str) -> str | None:
        value = headers.get(name)
        return None if value is None else " ".join(str(value).split())

    return one("Message-ID"), one(TRACKING_HEADER)


class SimHandler:
    """The aiosmtpd handler: decides every reply and records what happened.

    All methods run on the server's event loop; other threads read copies of the records.
    """

    def __init__(self, config: SimConfig, clock: TimeSource, on_event: EventCallback | None):
        self.config = config
        self.behaviour = config.behaviour
        self.clock = clock
        self.on_event = on_event
        self.deliveries: list[Delivery] = []
        self.refusals: list[Refusal] = []
        self.bounces: list[Bounce] = []
        self.errors: list[str] = []
        self.protocols: set[SimSMTP] = set()
        self.connections_per_ip: defaultdict[str, int] = defaultdict(int)
        throttle, greylist = self.behaviour.throttle, self.behaviour.greylist
        self.throttle = None if throttle is None else ThrottleCounter(throttle)
        self.greylist = None if greylist is None else GreylistMemory(greylist)
        model = self.behaviour.reputation
        self.reputation = None if model is None else ReputationBook(model)
        self.data_transactions = 0
        self.connection_count = 0
        self._queue_ids = itertools.count(1)
        self._queue_prefix = secrets.token_hex(3).upper()
        self._jsonl: TextIO | None = None
        self._maildir: mailbox.Maildir | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def open_files(self) -> None:
        if self.config.jsonl is not None:
            self.config.jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = self.config.jsonl.open("a", encoding="utf-8")
        if self.config.maildir is not None:
            self._maildir = mailbox.Maildir(self.config.maildir, create=True)
        if self.config.mbox is not None:
            self.config.mbox.parent.mkdir(parents=True, exist_ok=True)

    def close_files(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def emit(
        self,
        kind: SimEventKind,
        message: str,
        source_ip: str | None = None,
        record: Delivery | Refusal | Bounce | None = None,
    ) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(SimEvent(kind, message, source_ip, record))
        except Exception as error:  # a broken callback must not break the SMTP dialogue
            self.errors.append(f"on_event callback failed: {error!r}")

    def refuse(
        self,
        conn: _Connection,
        stage: Stage,
        reason: RefusalReason,
        reply: SimReply | None,
        *,
        mail_from: str | None = None,
        rcpt: str | None = None,
    ) -> str:
        """Record a refusal and return the rendered reply (or the drop marker)."""
        if reply is None:
            code, line = None, "connection dropped"
        else:
            line = reply.render(
                ip=conn.source_ip,
                rcpt=rcpt or "",
                sender=mail_from or "",
                minutes=self._greylist_minutes(),
            )
            code = reply.code
        refusal = Refusal(conn.source_ip, stage, reason, code, line, self.clock(), mail_from, rcpt)
        self.refusals.append(refusal)
        target = f" <{rcpt}>" if rcpt else ""
        self.emit(
            SimEventKind.REFUSED,
            f"{conn.source_ip}{target} {stage}: {line}",
            conn.source_ip,
            refusal,
        )
        return _DROP if reply is None else line

    def _greylist_minutes(self) -> str:
        greylist = self.behaviour.greylist
        return "" if greylist is None else f"{greylist.delay / 60:g}"

    # -- connection -------------------------------------------------------------------------

    def on_connect(self, protocol: SimSMTP, conn: _Connection) -> str | None:
        """Register the connection; a reply line means refuse it and close."""
        self.connection_count += 1
        self.connections_per_ip[conn.source_ip] += 1
        self.emit(SimEventKind.CONNECTED, f"connection from {conn.source_ip}", conn.source_ip)
        behaviour = self.behaviour
        if behaviour.connect_reply is not None:
            return self.refuse(
                conn, Stage.CONNECT, RefusalReason.CONNECT_REPLY, behaviour.connect_reply
            )
        limit = behaviour.max_connections
        if limit is not None and self.connections_per_ip[conn.source_ip] > limit:
            return self.refuse(
                conn,
                Stage.CONNECT,
                RefusalReason.TOO_MANY_CONNECTIONS,
                behaviour.too_many_connections_reply,
            )
        throttle = self._throttle_reply(conn.source_ip, Stage.CONNECT)
        if throttle is not None:
            return self.refuse(conn, Stage.CONNECT, RefusalReason.THROTTLE, throttle)
        return None

    def on_disconnect(self, conn: _Connection) -> None:
        self.connections_per_ip[conn.source_ip] -= 1

    def stats(self) -> dict[str, IpStats]:
        """Counts per sending IP, with its reputation where the behaviour keeps one."""
        book = self.reputation
        return ip_stats(
            list(self.deliveries),
            list(self.refusals),
            None if book is None else book.reputations(),
        )

    # -- throttling -------------------------------------------------------------------------

    def _throttle_reply(self, source_ip: str, stage: Stage) -> SimReply | None:
        throttle = self.throttle
        if throttle is None or throttle.stage is not stage:
            return None
        return throttle.reply(source_ip, self.clock())

    # -- aiosmtpd hooks ---------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        conn = _conn_of(server)
        behaviour = self.behaviour
        cap = behaviour.max_messages_per_connection
        if (
            cap is not None
            and conn.messages >= cap
            and behaviour.connection_cap_action is CapAction.REPLY
        ):
            return self.refuse(
                conn,
                Stage.MAIL,
                RefusalReason.CONNECTION_CAP,
                behaviour.connection_cap_reply,
                mail_from=address,
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        conn = _conn_of(server)
        sender = _sender(envelope)
        throttle = self._throttle_reply(conn.source_ip, Stage.RCPT)
        if throttle is not None:
            return self.refuse(
                conn, Stage.RCPT, RefusalReason.THROTTLE, throttle, mail_from=sender, rcpt=address
            )
        book = self.reputation
        now = self.clock()
        if book is not None:
            verdict = book.admit(conn.source_ip, now)
            if verdict is not None:
                reason = (
                    RefusalReason.BLOCKED if verdict is Verdict.BLOCKED else RefusalReason.THROTTLE
                )
                return self.refuse(
                    conn, Stage.RCPT, reason, book.reply(verdict), mail_from=sender, rcpt=address
                )
        for rule in self.behaviour.rcpt_rules:
            if rule.matches(address):
                if rule.reply.code < 400:  # a rule may also accept explicitly
                    break
                if book is not None and rule.reply.code >= 500:
                    book.hard_bounce(conn.source_ip, now)
                return self.refuse(
                    conn,
                    Stage.RCPT,
                    RefusalReason.RECIPIENT_RULE,
                    rule.reply,
                    mail_from=sender,
                    rcpt=address,
                )
        greylist = self.greylist
        if greylist is not None and greylist.refuses(conn.source_ip, sender, address, self.clock()):
            return self.refuse(
                conn,
                Stage.RCPT,
                RefusalReason.GREYLIST,
                greylist.reply,
                mail_from=sender,
                rcpt=address,
            )
        if book is not None:
            book.accepted(conn.source_ip, now)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        conn = _conn_of(server)
        behaviour = self.behaviour
        delay = behaviour.delays.get(Command.DATA)
        if delay:
            await asyncio.sleep(delay)
        conn.messages += 1
        self.data_transactions += 1
        sender = _sender(envelope)
        rcpts = list(envelope.rcpt_tos)
        content = envelope.original_content or b""

        nth = behaviour.drop_every_nth_message
        if (nth is not None and self.data_transactions % nth == 0) or any(
            address_matches(match, rcpt) for match in behaviour.drop_data_for for rcpt in rcpts
        ):
            for rcpt in rcpts:
                self.refuse(
                    conn, Stage.DATA, RefusalReason.DROPPED, None, mail_from=sender, rcpt=rcpt
                )
            return _DROP

        reply = self._throttle_reply(conn.source_ip, Stage.DATA)
        reason = RefusalReason.THROTTLE
        if reply is None and behaviour.data_reply is not None:
            reply, reason = behaviour.data_reply, RefusalReason.DATA_REPLY
        if reply is not None:
            line = ""
            for rcpt in rcpts:
                line = self.refuse(conn, Stage.DATA, reason, reply, mail_from=sender, rcpt=rcpt)
            self._after_transaction(conn)
            return line

        queue_id = f"{self._queue_prefix}{next(self._queue_ids):08X}"
        message_id, mailctl_id = _parse_ids(content)
        now = self.clock()
        book = self.reputation
        for rcpt in rcpts:
            folder = Folder.INBOX if book is None else book.place(conn.source_ip, now)
            delivery = Delivery(
                queue_id,
                conn.source_ip,
                sender,
                rcpt,
                message_id,
                mailctl_id,
                now,
                len(content),
                folder.value,
            )
            self._store(delivery, session, content)
            if self.throttle is not None:
                self.throttle.count(conn.source_ip, now)
            for rule in behaviour.bounce_rules:
                if rule.matches(rcpt):
                    self._bounce(delivery, rule.reply, content)
                    break
        self._after_transaction(conn)
        return behaviour.accept_reply.render(queue_id=queue_id, ip=conn.source_ip)

    async def handle_exception(self, error: Exception) -> str:
        # A bug in the sim: record it (the test fixture fails on it) and answer transiently.
        self.errors.append(repr(error))
        self.emit(SimEventKind.ERROR, f"internal error: {error!r}")
        return INTERNAL_ERROR.render()

    # -- after acceptance -------------------------------------------------------------------

    def _after_transaction(self, conn: _Connection) -> None:
        behaviour = self.behaviour
        cap = behaviour.max_messages_per_connection
        if (
            cap is not None
            and conn.messages >= cap
            and behaviour.connection_cap_action is CapAction.DISCONNECT
        ):
            conn.close_after_reply = True
            self.emit(
                SimEventKind.CONNECTION_CAP,
                f"{conn.source_ip}: {cap} messages on one connection, closing",
                conn.source_ip,
            )

    def _store(self, delivery: Delivery, session: Session, content: bytes) -> None:
        self.deliveries.append(delivery)
        if self._jsonl is not None:
            record = asdict(delivery)
            record["provider"] = self.behaviour.name
            self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
            self._jsonl.flush()  # a test may read it while this server keeps running
        if self._maildir is not None:
            received = (
                f"Return-Path: <{delivery.mail_from}>\n"
                f"Delivered-To: {delivery.rcpt}\n"
                f"Received: from {session.host_name or 'unknown'} ([{delivery.source_ip}])\n"
                f"\tby {self.behaviour.hostname} (mailctl-sim) with ESMTP id {delivery.queue_id}\n"
                f"\tfor <{delivery.rcpt}>; {formatdate(delivery.time)}\n"
            ).encode()
            # Maildir files use LF; Maildir.add writes tmp/ then renames into new/ atomically.
            self._maildir.add(received + content.replace(b"\r\n", b"\n"))
        placed = " (spam)" if delivery.folder == Folder.SPAM else ""
        self.emit(
            SimEventKind.DELIVERED,
            f"{delivery.source_ip} {delivery.mail_from} -> {delivery.rcpt} {delivery.queue_id}"
            f"{placed}",
            delivery.source_ip,
            delivery,
        )

    def _bounce(self, delivery: Delivery, reply: SimReply, content: bytes) -> None:
        if not delivery.mail_from:
            return  # never bounce a bounce (null sender)
        diagnostic = reply.render(
            ip=delivery.source_ip, rcpt=delivery.rcpt, sender=delivery.mail_from
        )
        dsn = build_dsn(
            reporting_mta=self.behaviour.hostname,
            sender=delivery.mail_from,
            rcpt=delivery.rcpt,
            status=reply.status,
            diagnostic=diagnostic,
            original_headers=_header_block(content),
            arrival=delivery.time,
            queue_id=delivery.queue_id,
        )
        bounce = Bounce(
            delivery.source_ip,
            delivery.mail_from,
            delivery.rcpt,
            delivery.message_id,
            delivery.mailctl_id,
            reply.status,
            diagnostic,
            delivery.time,
            dsn,
        )
        self.bounces.append(bounce)
        if self.config.mbox is not None:
            append_to_mbox(self.config.mbox, dsn, delivery.time)
        self.emit(
            SimEventKind.BOUNCED,
            f"DSN to {delivery.mail_from} for {delivery.rcpt}: {diagnostic}",
            delivery.source_ip,
            bounce,
        )


def _sender(envelope: Envelope) -> str:
    # aiosmtpd keeps the null reverse-path as "<>"; records use "" so "no sender" is falsy.
    sender = envelope.mail_from or ""
    return "" if sender == "<>" else sender


def _conn_of(server: SMTP) -> _Connection:
    conn = getattr(server, "sim_conn", None)
    assert conn is not None, "hook called before the connection was registered"
    return conn


# --------------------------------------------------------------------------------------------
# The SMTP protocol: connection-level behaviour aiosmtpd has no hook for


class SimSMTP(SMTP):
    """aiosmtpd's SMTP plus: connect-time replies, drops, close after 421, delays."""

    def __init__(self, provider: SimHandler, **kwargs: Any):
        super().__init__(provider, **kwargs)
        self.provider = provider
        self.sim_conn: _Connection | None = None
        delays = provider.behaviour.delays
        for command, seconds in delays.items():
            # DATA's delay applies to the final reply (in the handler), CONNECT's to the banner.
            if command in (Command.DATA, Command.CONNECT) or not seconds:
                continue
            method = self._smtp_methods.get(command)
            if method is not None:
                self._smtp_methods[command] = _delayed(method, seconds)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # a second call happens after STARTTLS
        super().connection_made(transport)
        if first:
            self.provider.protocols.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.provider.protocols.discard(self)
        if self.sim_conn is not None:
            self.provider.on_disconnect(self.sim_conn)
            self.sim_conn = None
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        assert self.session is not None
        peer = self.session.peer
        source_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        try:
            delay = self.provider.behaviour.delays.get(Command.CONNECT)
            if delay:
                await asyncio.sleep(delay)
            conn = _Connection(source_ip)
            # No await between registering and remembering, so connection_lost always
            # unregisters exactly what was registered.
            refusal = self.provider.on_connect(self, conn)
            self.sim_conn = conn
            if refusal is not None:
                await self.push(refusal)
                self.close_connection()
                return
            await super()._handle_client()
        except ConnectionError:
            # The client went away; nothing to answer. Swallowed so asyncio does not log
            # "Task exception was never retrieved".
            self.close_connection()

    async def push(self, status: AnyStr) -> None:
        conn = self.sim_conn
        if status == _DROP:
            self.abort_connection()
            return
        await super().push(status)
        line = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if line.startswith("421") or (
            conn is not None and conn.close_after_reply and line[:1] in "2345"
        ):
            self.close_connection()

    def close_connection(self) -> None:
        """Close after sending what is buffered (a reply already written still goes out)."""
        if self.transport is not None:
            self.transport.close()

    def abort_connection(self) -> None:
        """Close at once, discarding anything unsent."""
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        elif transport is not None:
            transport.close()


def _delayed(
    method: Callable[[str], Awaitable[None]], seconds: float
) -> Callable[[str], Awaitable[None]]:
    @functools.wraps(method)
    async def call(arg: str) -> None:
        await asyncio.sleep(seconds)
        await method(arg)

    return call
