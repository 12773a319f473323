"""Simulated mailbox providers on aiosmtpd.

A simulated provider is an aiosmtpd handler with state: it answers with the real reply texts of
Google, Microsoft and Yahoo (see PROVIDERS.md), throttles per source IP, greylists, drops
connections, caps messages per connection and writes RFC 3464 DSNs to an mbox. It serves three
purposes: the SMTP peer of the send engine's tests (never a mock of the client), the embedded
``sandbox`` delivery target (accepted mail lands in a Maildir), and ``mailctl sim`` rehearsals.

Two runners share one implementation: :class:`SimServer` runs inside the caller's asyncio loop,
:class:`ThreadedSimServer` runs a :class:`SimServer` on a private loop in a thread (sync tests,
subprocess tests). :func:`run_forever` serves until interrupted, for the CLI.

Nothing here prints: progress goes to an ``on_event`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import functools
import itertools
import json
import logging
import mailbox
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, AnyStr, Self

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailctl.errors import MailctlError, SimError
from mailctl.message.tracking import TRACKING_HEADER

try:  # POSIX only: lock the mbox like mailbox.mbox does, so readers never see half a DSN
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AddressMatch",
    "AddressRule",
    "Bounce",
    "CapAction",
    "Command",
    "Delivery",
    "EventKind",
    "Greylist",
    "Preset",
    "Refusal",
    "RefusalReason",
    "Reply",
    "SimBehaviour",
    "SimConfig",
    "SimEvent",
    "SimServer",
    "Stage",
    "ThreadedSimServer",
    "Throttle",
    "TlsMode",
    "append_to_mbox",
    "build_dsn",
    "iter_mbox",
    "preset",
    "run_forever",
    "start",
]

# aiosmtpd logs through "mail.log"; without a handler, warnings would reach stderr through
# logging's last resort. The sim never prints, so give that logger a sink (callers may still
# attach their own handlers).
logging.getLogger("mail.log").addHandler(logging.NullHandler())


# --------------------------------------------------------------------------------------------
# Replies


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply; ``text`` may name ``{ip}``, ``{rcpt}``, ``{sender}``, ``{minutes}``."""

    code: int
    text: str = ""

    def render(self, **values: str) -> str:
        """The reply line, placeholders filled (unknown placeholders are left as they are)."""
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.text)
        return f"{self.code} {text}" if text else str(self.code)

    @property
    def closes_connection(self) -> bool:
        # RFC 5321: 421 means the server is closing the transmission channel.
        return self.code == 421

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) in the text, or one derived from the class."""
        found = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        if found:
            return found.group(1)
        return f"{self.code // 100}.0.0"


# Reply texts from PROVIDERS.md (IPs as {ip}); kept as constants so tests can name them.
GOOGLE_RATE_LIMITED = Reply(
    421,
    "4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail originating "
    "from your IP address. To protect our users from spam, mail sent from your IP address has "
    "been temporarily rate limited. Please visit "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
    "Senders Guidelines. - gsmtp",
)
GOOGLE_NO_SUCH_USER = Reply(
    550,
    "5.1.1 The email account that you tried to reach does not exist. Please try "
    "double-checking the recipient's email address for typos or unnecessary spaces. "
    "Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp",
)
GOOGLE_DISABLED_USER = Reply(
    550,
    "5.2.1 The email account that you tried to reach is disabled. "
    "Learn more at https://support.google.com/mail/?p=DisabledUser - gsmtp",
)
GOOGLE_OVER_QUOTA_TEMP = Reply(
    452,
    "4.2.2 The email account that you tried to reach is over quota. Please direct the "
    "recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
)
GOOGLE_RECEIVING_RATE = Reply(
    450,
    "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered. Please resend your message at a later point. "
    "Learn more at https://support.google.com/mail/?p=ReceivingRate - gsmtp",
)
GOOGLE_UNSOLICITED = Reply(
    550,
    "5.7.1 [{ip}] Our system has detected that this message is likely unsolicited mail. To "
    "reduce the amount of spam sent to Gmail, this message has been blocked. Learn more at "
    "https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp",
)
GOOGLE_TEMPORARILY_REJECTED = Reply(451, "4.3.0 Mail server temporarily rejected message. - gsmtp")

YAHOO_TSS04 = Reply(
    421,
    "4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
)
YAHOO_TS03 = Reply(
    421,
    "4.7.1 [TS03] All messages from {ip} will be permanently deferred; Retrying will NOT succeed.",
)
YAHOO_NO_SUCH_USER = Reply(554, "delivery error: dd This user doesn't have a yahoo.com account")
YAHOO_MAILBOX_DISABLED = Reply(
    554,
    "delivery error: dd Sorry, your message to {rcpt} cannot be delivered. "
    "This mailbox is disabled (554.30).",
)
YAHOO_DEFERRED = Reply(451, "Message temporarily deferred - [170]")
YAHOO_POLICY = Reply(554, "Message not allowed - [PH01] Email not accepted for policy reasons.")

MICROSOFT_RATE_LIMITED = Reply(
    451,
    "4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
    "For e-mail delivery information, see https://postmaster.live.com (S775)",
)
MICROSOFT_BLOCK_LIST = Reply(
    550,
    "5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3150).",
)
MICROSOFT_SERVER_BUSY = Reply(
    451, "4.7.500 Server busy. Please try again later from [{ip}]. (S77719)"
)
MICROSOFT_TOO_MANY_CONNECTIONS = Reply(
    421,
    "4.3.2 The maximum number of concurrent connections per resource forest has exceeded a "
    "limit, closing transmission channel",
)
MICROSOFT_MAILBOX_UNAVAILABLE = Reply(550, "5.5.0 Requested action not taken: mailbox unavailable")

GENERIC_UNTRUSTED_IP = Reply(
    451, "4.7.1 Received too many messages from a new or untrusted IP: {ip}"
)
GENERIC_USER_UNKNOWN = Reply(550, "5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
GENERIC_MAILBOX_FULL = Reply(452, "4.2.2 <{rcpt}>: Recipient address rejected: Mailbox full")
GREYLISTED = Reply(
    451, "4.7.1 <{rcpt}>: Recipient address rejected: Greylisted for {minutes} minutes"
)
TRY_AGAIN_LATER = Reply(421, "4.7.0 Try again later")
TOO_MANY_CONNECTIONS = Reply(421, "Too many connections")
MAX_MESSAGES_PER_CONNECTION = Reply(
    421, "Max message per connection reached, closing transmission channel"
)
ACCEPTED = Reply(250, "2.0.0 OK queued as {queue_id}")
# Answer to a failure inside the sim itself; transient so a client retries rather than bounces.
INTERNAL_ERROR = Reply(451, "4.3.0 Simulated provider internal error")


# --------------------------------------------------------------------------------------------
# Behaviour


class Stage(enum.StrEnum):
    """Where in the SMTP dialogue a reply is given."""

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Command(enum.StrEnum):
    """Commands whose answer can be delayed; DATA delays the final reply, after the dot."""

    CONNECT = "CONNECT"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class CapAction(enum.StrEnum):
    """What happens once a connection has carried its maximum number of messages."""

    DISCONNECT = "disconnect"  # close right after the last reply, no error (Yahoo)
    REPLY = "reply"  # answer the next MAIL with the cap reply (421 …) and close


class TlsMode(enum.StrEnum):
    """STARTTLS support of the simulated server."""

    OFF = "off"
    OFFER = "offer"
    REQUIRE = "require"


AddressMatch = str | re.Pattern[str]
"""An exact address (compared case-insensitively) or a regex searched in the address."""


def _address_matches(match: AddressMatch, address: str) -> bool:
    if isinstance(match, re.Pattern):
        return match.search(address) is not None
    return match.casefold() == address.casefold()


@dataclass(frozen=True)
class AddressRule:
    """Answer ``reply`` for recipients matching ``match``."""

    match: AddressMatch
    reply: Reply

    def matches(self, address: str) -> bool:
        return _address_matches(self.match, address)


@dataclass(frozen=True)
class Throttle:
    """Per source IP rate limit: more than ``max_messages`` in ``window`` seconds, or more than
    ``max_per_day`` in a (UTC) day, gets ``reply`` / ``day_reply`` at ``stage``.

    Counts accepted recipients, since that is the volume a provider sees.
    """

    max_messages: int | None = None
    window: float = 60.0
    max_per_day: int | None = None
    reply: Reply = GENERIC_UNTRUSTED_IP
    day_reply: Reply | None = None
    stage: Stage = Stage.RCPT

    def __post_init__(self) -> None:
        if self.stage is Stage.MAIL:
            raise SimError("a throttle answers at connect, RCPT or DATA, not MAIL")
        if self.window <= 0:
            raise SimError("throttle window must be positive")


@dataclass(frozen=True)
class Greylist:
    """First attempt per (source IP, sender, recipient) is refused until ``delay`` has passed."""

    delay: float = 300.0
    reply: Reply = GREYLISTED


@dataclass(frozen=True)
class SimBehaviour:
    """How a simulated provider answers. The default accepts everything.

    Recipient checks run in this order: throttle (if at RCPT), ``rcpt_rules`` (first match
    wins), greylisting. Addresses matching ``bounce_rules`` are accepted with 250, then a DSN
    carrying the rule's reply as diagnostic is appended to the mbox.
    """

    name: str = "sandbox"
    hostname: str = "mx.sim.invalid"
    banner: str = "ESMTP mailctl-sim"
    connect_reply: Reply | None = None
    max_connections: int | None = None  # concurrent, per source IP
    too_many_connections_reply: Reply = TOO_MANY_CONNECTIONS
    max_messages_per_connection: int | None = None
    connection_cap_action: CapAction = CapAction.REPLY
    connection_cap_reply: Reply = MAX_MESSAGES_PER_CONNECTION
    rcpt_rules: tuple[AddressRule, ...] = ()
    data_reply: Reply | None = None
    drop_data_for: tuple[AddressMatch, ...] = ()
    drop_every_nth_message: int | None = None
    delays: Mapping[str, float] = field(default_factory=dict)  # Command → seconds
    throttle: Throttle | None = None
    greylist: Greylist | None = None
    bounce_rules: tuple[AddressRule, ...] = ()
    accept_reply: Reply = ACCEPTED

    def __post_init__(self) -> None:
        # Frozen means frozen: accept a plain dict with str keys, keep a read-only copy.
        delays = {Command(str(key).upper()): float(value) for key, value in self.delays.items()}
        object.__setattr__(self, "delays", MappingProxyType(delays))
        for name in ("rcpt_rules", "drop_data_for", "bounce_rules"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("max_connections", "max_messages_per_connection", "drop_every_nth_message"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SimError(f"{name} must be at least 1, got {value}")

    def __hash__(self) -> int:
        # The delays mapping is not hashable; everything else identifies the behaviour.
        return hash((self.name, self.hostname, tuple(sorted(self.delays.items()))))

    def with_changes(self, **changes: Any) -> SimBehaviour:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)


class Preset(enum.StrEnum):
    """Bundled provider behaviours."""

    SANDBOX = "sandbox"
    GENERIC = "generic"
    GOOGLE = "google"
    MICROSOFT = "microsoft"
    YAHOO = "yahoo"


def _local_part(*prefixes: str) -> re.Pattern[str]:
    # Rehearsal addresses: the local part starts with one of the prefixes (e.g. unknown-42@…).
    return re.compile(rf"^(?:{'|'.join(prefixes)})[^@]*@", re.IGNORECASE)


_UNKNOWN = _local_part("unknown", "nosuchuser")
_DISABLED = _local_part("disabled")
_FULL = _local_part("overquota", "full")
_BUSY = _local_part("busy")
_LATE_BOUNCE = _local_part("bounce")


def _presets() -> dict[Preset, SimBehaviour]:
    late_bounce = (AddressRule(_LATE_BOUNCE, Reply(550, "5.1.1 <{rcpt}>: user unknown")),)
    return {
        Preset.SANDBOX: SimBehaviour(),
        Preset.GENERIC: SimBehaviour(
            name="generic",
            hostname="mx.generic.sim.invalid",
            banner="ESMTP Postfix",
            max_connections=20,
            max_messages_per_connection=100,
            rcpt_rules=(
                AddressRule(_UNKNOWN, GENERIC_USER_UNKNOWN),
                AddressRule(_FULL, GENERIC_MAILBOX_FULL),
            ),
            throttle=Throttle(max_messages=300, window=60.0, reply=GENERIC_UNTRUSTED_IP),
            bounce_rules=late_bounce,
        ),
        Preset.GOOGLE: SimBehaviour(
            name="google",
            hostname="mx.google.com",
            banner="ESMTP mailctl-sim - gsmtp",
            max_connections=10,
            max_messages_per_connection=100,
            connection_cap_reply=MAX_MESSAGES_PER_CONNECTION,
            rcpt_rules=(
                AddressRule(_UNKNOWN, GOOGLE_NO_SUCH_USER),
                AddressRule(_DISABLED, GOOGLE_DISABLED_USER),
                AddressRule(_FULL, GOOGLE_OVER_QUOTA_TEMP),
                AddressRule(_BUSY, GOOGLE_RECEIVING_RATE),
            ),
            throttle=Throttle(max_messages=200, window=60.0, reply=GOOGLE_RATE_LIMITED),
            bounce_rules=late_bounce,
        ),
        Preset.MICROSOFT: SimBehaviour(
            name="microsoft",
            hostname="mail.protection.outlook.com",
            banner="Microsoft ESMTP MAIL Service ready",
            max_connections=10,
            too_many_connections_reply=MICROSOFT_TOO_MANY_CONNECTIONS,
            max_messages_per_connection=50,
            rcpt_rules=(AddressRule(_UNKNOWN, MICROSOFT_MAILBOX_UNAVAILABLE),),
            throttle=Throttle(
                max_messages=100,
                window=60.0,
                reply=MICROSOFT_RATE_LIMITED,
                max_per_day=10_000,
                day_reply=MICROSOFT_BLOCK_LIST,
            ),
            bounce_rules=late_bounce,
        ),
        Preset.YAHOO: SimBehaviour(
            name="yahoo",
            hostname="mta7.am0.yahoodns.net",
            banner="ESMTP ready",
            max_connections=10,
            # Yahoo closes the connection after 20 messages without saying why.
            max_messages_per_connection=20,
            connection_cap_action=CapAction.DISCONNECT,
            rcpt_rules=(
                AddressRule(_UNKNOWN, YAHOO_NO_SUCH_USER),
                AddressRule(_DISABLED, YAHOO_MAILBOX_DISABLED),
            ),
            throttle=Throttle(max_messages=100, window=60.0, reply=YAHOO_TSS04),
            bounce_rules=late_bounce,
        ),
    }


def preset(name: Preset | str, **overrides: Any) -> SimBehaviour:
    """The bundled behaviour of a provider, with any field overridden.

    Presets other than ``sandbox`` know rehearsal addresses by local-part prefix:
    ``unknown…``/``nosuchuser…`` get the provider's hard bounce, ``disabled…`` a disabled
    mailbox, ``overquota…``/``full…`` a mailbox-full deferral, ``busy…`` Google's
    ReceivingRate, ``bounce…`` is accepted and then bounced by DSN.
    """
    try:
        key = Preset(str(name).lower())
    except ValueError:
        valid = ", ".join(p.value for p in Preset)
        raise SimError(f"unknown sim provider {name!r}; valid: {valid}") from None
    return replace(_presets()[key], **overrides)


@dataclass(frozen=True)
class SimConfig:
    """Where and how a simulated provider runs. ``port=0`` picks a free port."""

    behaviour: SimBehaviour = field(default_factory=SimBehaviour)
    host: str = "127.0.0.1"
    port: int = 0
    mbox: Path | None = None  # DSNs for bounce_rules are appended here
    jsonl: Path | None = None  # one line per accepted recipient, flushed each time
    maildir: Path | None = None  # accepted messages, one file per recipient
    tls: TlsMode = TlsMode.OFF
    data_size_limit: int = 32 * 1024 * 1024
    idle_timeout: float = 300.0  # seconds a client may stay silent before being dropped


# --------------------------------------------------------------------------------------------
# Records and events


class RefusalReason(enum.StrEnum):
    """Why a simulated provider did not accept something."""

    CONNECT_REPLY = "connect_reply"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    CONNECTION_CAP = "connection_cap"
    RECIPIENT_RULE = "recipient_rule"
    THROTTLE = "throttle"
    GREYLIST = "greylist"
    DATA_REPLY = "data_reply"
    DROPPED = "dropped"  # connection closed mid-DATA, no reply at all


@dataclass(frozen=True)
class Delivery:
    """One recipient of one accepted message."""

    queue_id: str
    source_ip: str
    mail_from: str
    rcpt: str
    message_id: str | None
    mailctl_id: str | None
    time: float
    size: int


@dataclass(frozen=True)
class Refusal:
    """A reply other than success (``code`` None: the connection was dropped instead)."""

    source_ip: str
    stage: Stage
    reason: RefusalReason
    code: int | None
    text: str
    time: float
    mail_from: str | None = None
    rcpt: str | None = None


@dataclass(frozen=True)
class Bounce:
    """A DSN written for an accepted recipient (see ``SimBehaviour.bounce_rules``)."""

    source_ip: str
    mail_from: str
    rcpt: str
    message_id: str | None
    mailctl_id: str | None
    status: str
    diagnostic: str
    time: float
    dsn: bytes


class EventKind(enum.StrEnum):
    """What an ``on_event`` callback is told about."""

    LISTENING = "listening"
    CONNECTED = "connected"
    DELIVERED = "delivered"
    REFUSED = "refused"
    BOUNCED = "bounced"
    CONNECTION_CAP = "connection_cap"  # closed after the per-connection cap, without a reply
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SimEvent:
    """A progress report for the CLI; ``message`` is one human-readable line."""

    kind: EventKind
    message: str
    source_ip: str | None = None
    record: Delivery | Refusal | Bounce | None = None


EventCallback = Callable[[SimEvent], None]
Clock = Callable[[], float]


# --------------------------------------------------------------------------------------------
# The provider: an aiosmtpd handler with state


# Returned by a hook instead of a reply: _SimSMTP closes the connection and says nothing.
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


def _mbox_escape(body: bytes) -> bytes:
    # mboxrd: a line starting with "From " (after any ">") gets one more ">".
    return re.sub(rb"(?m)^(>*From )", rb">\1", body)


_mbox_lock = threading.Lock()  # several sims in one process may share an mbox


class _Provider:
    """The aiosmtpd handler: decides every reply and records what happened.

    All methods run on the server's event loop; other threads read copies of the records.
    """

    def __init__(self, config: SimConfig, clock: Clock, on_event: EventCallback | None):
        self.config = config
        self.behaviour = config.behaviour
        self.clock = clock
        self.on_event = on_event
        self.deliveries: list[Delivery] = []
        self.refusals: list[Refusal] = []
        self.bounces: list[Bounce] = []
        self.errors: list[str] = []
        self.protocols: set[_SimSMTP] = set()
        self.connections_per_ip: defaultdict[str, int] = defaultdict(int)
        self.recent: defaultdict[str, deque[float]] = defaultdict(deque)
        self.per_day: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.greylist_seen: dict[tuple[str, str, str], float] = {}
        self.data_transactions = 0
        self.connection_count = 0
        self._queue_ids = itertools.count(1)
        self._queue_prefix = secrets.token_hex(3).upper()
        self._jsonl: Any = None
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
        kind: EventKind,
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
        reply: Reply | None,
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
            EventKind.REFUSED, f"{conn.source_ip}{target} {stage}: {line}", conn.source_ip, refusal
        )
        return _DROP if reply is None else line

    def _greylist_minutes(self) -> str:
        greylist = self.behaviour.greylist
        return "" if greylist is None else f"{greylist.delay / 60:g}"

    # -- connection -------------------------------------------------------------------------

    def on_connect(self, protocol: _SimSMTP, conn: _Connection) -> str | None:
        """Register the connection; a reply line means refuse it and close."""
        self.connection_count += 1
        self.connections_per_ip[conn.source_ip] += 1
        self.emit(EventKind.CONNECTED, f"connection from {conn.source_ip}", conn.source_ip)
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

    # -- throttling -------------------------------------------------------------------------

    def _throttle_reply(self, source_ip: str, stage: Stage) -> Reply | None:
        throttle = self.behaviour.throttle
        if throttle is None or throttle.stage is not stage:
            return None
        now = self.clock()
        if throttle.max_messages is not None:
            recent = self.recent[source_ip]
            while recent and recent[0] <= now - throttle.window:
                recent.popleft()
            if len(recent) >= throttle.max_messages:
                return throttle.reply
        if throttle.max_per_day is not None:
            if self.per_day[(source_ip, int(now // 86400))] >= throttle.max_per_day:
                return throttle.day_reply or throttle.reply
        return None

    def _count_delivery(self, source_ip: str, now: float) -> None:
        throttle = self.behaviour.throttle
        if throttle is None:
            return
        if throttle.max_messages is not None:
            self.recent[source_ip].append(now)
        if throttle.max_per_day is not None:
            self.per_day[(source_ip, int(now // 86400))] += 1

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
        for rule in self.behaviour.rcpt_rules:
            if rule.matches(address):
                if rule.reply.code < 400:  # a rule may also accept explicitly
                    break
                return self.refuse(
                    conn,
                    Stage.RCPT,
                    RefusalReason.RECIPIENT_RULE,
                    rule.reply,
                    mail_from=sender,
                    rcpt=address,
                )
        greylist = self.behaviour.greylist
        if greylist is not None:
            key = (conn.source_ip, sender.casefold(), address.casefold())
            now = self.clock()
            first_seen = self.greylist_seen.setdefault(key, now)
            if now - first_seen < greylist.delay:
                return self.refuse(
                    conn,
                    Stage.RCPT,
                    RefusalReason.GREYLIST,
                    greylist.reply,
                    mail_from=sender,
                    rcpt=address,
                )
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
            _address_matches(match, rcpt) for match in behaviour.drop_data_for for rcpt in rcpts
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
        for rcpt in rcpts:
            delivery = Delivery(
                queue_id, conn.source_ip, sender, rcpt, message_id, mailctl_id, now, len(content)
            )
            self._store(delivery, session, content)
            self._count_delivery(conn.source_ip, now)
            for rule in behaviour.bounce_rules:
                if rule.matches(rcpt):
                    self._bounce(delivery, rule.reply, content)
                    break
        self._after_transaction(conn)
        return behaviour.accept_reply.render(queue_id=queue_id, ip=conn.source_ip)

    async def handle_exception(self, error: Exception) -> str:
        # A bug in the sim: record it (the test fixture fails on it) and answer transiently.
        self.errors.append(repr(error))
        self.emit(EventKind.ERROR, f"internal error: {error!r}")
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
                EventKind.CONNECTION_CAP,
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
        self.emit(
            EventKind.DELIVERED,
            f"{delivery.source_ip} {delivery.mail_from} -> {delivery.rcpt} {delivery.queue_id}",
            delivery.source_ip,
            delivery,
        )

    def _bounce(self, delivery: Delivery, reply: Reply, content: bytes) -> None:
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
            EventKind.BOUNCED,
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


# --------------------------------------------------------------------------------------------
# The SMTP protocol: connection-level behaviour aiosmtpd has no hook for


class _SimSMTP(SMTP):
    """aiosmtpd's SMTP plus: connect-time replies, drops, close after 421, delays."""

    def __init__(self, provider: _Provider, **kwargs: Any):
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


# --------------------------------------------------------------------------------------------
# TLS


@functools.cache
def _self_signed_files() -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1/localhost, generated once per process."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as error:  # pragma: no cover - cryptography is installed here
        raise SimError("STARTTLS in the sim needs the 'cryptography' package") from error
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())  # EC: generated in milliseconds
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailctl-sim")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = Path(tempfile.mkdtemp(prefix="mailctl-sim-tls-"))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _tls_context() -> ssl.SSLContext:
    cert, key = _self_signed_files()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# --------------------------------------------------------------------------------------------
# Runners


class SimServer:
    """A simulated provider served by the running asyncio loop.

    >>> server = await SimServer(SimConfig(preset("google"))).start()
    >>> server.port
    >>> await server.close()
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Clock = time.time,
        on_event: EventCallback | None = None,
    ):
        self.config = config or SimConfig()
        self._provider = _Provider(self.config, clock, on_event)
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @property
    def behaviour(self) -> SimBehaviour:
        return self.config.behaviour

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        if self._port is None:
            raise SimError("the simulated provider is not running")
        return self._port

    @property
    def deliveries(self) -> list[Delivery]:
        """Accepted recipients so far (a copy)."""
        return list(self._provider.deliveries)

    @property
    def refusals(self) -> list[Refusal]:
        """Refused or dropped recipients and connections so far (a copy)."""
        return list(self._provider.refusals)

    @property
    def bounces(self) -> list[Bounce]:
        """DSNs written so far (a copy)."""
        return list(self._provider.bounces)

    @property
    def errors(self) -> list[str]:
        """Failures inside the sim itself; a healthy run has none."""
        return list(self._provider.errors)

    @property
    def connection_count(self) -> int:
        """Connections accepted since start (including refused ones)."""
        return self._provider.connection_count

    @property
    def open_connections(self) -> int:
        return len(self._provider.protocols)

    async def start(self) -> Self:
        if self._server is not None:
            raise SimError("the simulated provider is already running")
        config = self.config
        loop = asyncio.get_running_loop()
        tls_context = _tls_context() if config.tls is not TlsMode.OFF else None
        provider = self._provider

        def factory() -> _SimSMTP:
            return _SimSMTP(
                provider,
                hostname=config.behaviour.hostname,  # avoids a getfqdn() DNS lookup per connection
                ident=config.behaviour.banner,
                data_size_limit=config.data_size_limit,
                enable_SMTPUTF8=True,
                tls_context=tls_context,
                require_starttls=config.tls is TlsMode.REQUIRE,
                timeout=config.idle_timeout,
                loop=loop,
            )

        provider.open_files()
        try:
            self._server = await loop.create_server(
                factory, host=config.host, port=config.port, reuse_address=True
            )
        except OSError as error:
            provider.close_files()
            raise SimError(f"cannot listen on {config.host}:{config.port}: {error}") from error
        self._port = self._server.sockets[0].getsockname()[1]
        provider.emit(
            EventKind.LISTENING,
            f"{config.behaviour.name} simulator listening on {config.host}:{self._port}",
        )
        return self

    async def close(self) -> None:
        """Stop listening, cut every open connection and wait for their handlers to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        provider = self._provider
        tasks = []
        for protocol in list(provider.protocols):
            task = protocol._handler_coroutine
            if task is not None and not task.done():
                tasks.append(task)
            protocol.abort_connection()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await server.wait_closed()
        provider.close_files()
        provider.emit(EventKind.STOPPED, f"{self.behaviour.name} simulator stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start(
    config: SimConfig | None = None,
    *,
    clock: Clock = time.time,
    on_event: EventCallback | None = None,
) -> SimServer:
    """Start a simulated provider in the running loop; ``await server.close()`` stops it."""
    return await SimServer(config, clock=clock, on_event=on_event).start()


class ThreadedSimServer:
    """A :class:`SimServer` on its own event loop in a daemon thread, for sync code.

    Usable as a context manager; ``start()`` returns the port.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Clock = time.time,
        on_event: EventCallback | None = None,
        stop_timeout: float = 10.0,
    ):
        self.sim = SimServer(config, clock=clock, on_event=on_event)
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # Delegation keeps one place for the records and their thread-safe copies.
    @property
    def config(self) -> SimConfig:
        return self.sim.config

    @property
    def behaviour(self) -> SimBehaviour:
        return self.sim.behaviour

    @property
    def host(self) -> str:
        return self.sim.host

    @property
    def port(self) -> int:
        return self.sim.port

    @property
    def deliveries(self) -> list[Delivery]:
        return self.sim.deliveries

    @property
    def refusals(self) -> list[Refusal]:
        return self.sim.refusals

    @property
    def bounces(self) -> list[Bounce]:
        return self.sim.bounces

    @property
    def errors(self) -> list[str]:
        return self.sim.errors

    @property
    def connection_count(self) -> int:
        return self.sim.connection_count

    @property
    def open_connections(self) -> int:
        return self.sim.open_connections

    def start(self, timeout: float = 10.0) -> int:
        if self._thread is not None:
            raise SimError("the simulated provider is already running")
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, name=f"mailctl-sim-{self.behaviour.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SimError("the simulated provider did not start in time")
        if self._failure is not None:
            self._thread.join(timeout)
            self._thread = None
            if isinstance(self._failure, MailctlError):
                raise self._failure
            raise SimError(f"the simulated provider failed to start: {self._failure!r}")
        return self.port

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as error:  # handed to start() in the caller's thread
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self.sim.close()

    def stop(self) -> None:
        """Stop serving; connected clients see their connection closed. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            raise SimError("the simulated provider did not stop in time")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_forever(
    config: SimConfig,
    *,
    on_event: EventCallback | None = None,
    clock: Clock = time.time,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or the process is interrupted (KeyboardInterrupt propagates).

    For ``mailctl sim``: the LISTENING event carries the actual port.
    """

    async def serve() -> None:
        async with SimServer(config, clock=clock, on_event=on_event):
            if stop is None:
                await asyncio.Event().wait()
            else:
                # Polled rather than awaited in a worker thread, so Ctrl-C never waits on it.
                while not stop.is_set():
                    await asyncio.sleep(0.1)

    asyncio.run(serve())


def iter_mbox(path: Path) -> Iterator[mailbox.mboxMessage]:
    """The messages of an mbox written by the sim (a convenience for tests and rehearsals)."""
    box = mailbox.mbox(path, create=False)
    try:
        yield from box
    finally:
        box.close()
