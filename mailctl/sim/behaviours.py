"""How a simulated provider behaves, and the state its behaviour keeps.

Owns the behaviour settings (:class:`SimBehaviour`: connection caps, recipient rules,
throttling, greylisting, late bounces), the bundled provider presets, :class:`SimConfig` (where
and how a sim runs) and the per-provider state the throttle and greylisting keep between
connections (:class:`ThrottleCounter`, :class:`GreylistMemory`).

Must not import aiosmtpd, the handler or the servers, nor mailctl's cli, delivery, bounces or
report.
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mailctl.errors import SimError
from mailctl.sim.replies import (
    ACCEPTED,
    GENERIC_MAILBOX_FULL,
    GENERIC_UNTRUSTED_IP,
    GENERIC_USER_UNKNOWN,
    GOOGLE_DISABLED_USER,
    GOOGLE_NO_SUCH_USER,
    GOOGLE_OVER_QUOTA_TEMP,
    GOOGLE_RATE_LIMITED,
    GOOGLE_RECEIVING_RATE,
    GREYLISTED,
    MAX_MESSAGES_PER_CONNECTION,
    MICROSOFT_BLOCK_LIST,
    MICROSOFT_MAILBOX_UNAVAILABLE,
    MICROSOFT_RATE_LIMITED,
    MICROSOFT_TOO_MANY_CONNECTIONS,
    TOO_MANY_CONNECTIONS,
    YAHOO_MAILBOX_DISABLED,
    YAHOO_NO_SUCH_USER,
    YAHOO_TSS04,
    SimReply,
)
from mailctl.sim.reputation import ReputationModel


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


class SimTls(enum.StrEnum):
    """STARTTLS support of the simulated server (the server side; a profile's client-side
    setting is ``mailctl.config.TlsMode``)."""

    OFF = "off"
    OFFER = "offer"
    REQUIRE = "require"


AddressMatch = str | re.Pattern[str]
"""An exact address (compared case-insensitively) or a regex searched in the address."""


def address_matches(match: AddressMatch, address: str) -> bool:
    """Whether ``address`` matches an exact address (any case) or a regex."""
    if isinstance(match, re.Pattern):
        return match.search(address) is not None
    return match.casefold() == address.casefold()


@dataclass(frozen=True)
class AddressRule:
    """Answer ``reply`` for recipients matching ``match``."""

    match: AddressMatch
    reply: SimReply

    def matches(self, address: str) -> bool:
        return address_matches(self.match, address)


@dataclass(frozen=True)
class Throttle:
    """Per source IP rate limit: more than ``max_messages`` in ``window`` seconds, or more than
    ``max_per_day`` in a (UTC) day, gets ``reply`` / ``day_reply`` at ``stage``.

    Counts accepted recipients, since that is the volume a provider sees.
    """

    max_messages: int | None = None
    window: float = 60.0
    max_per_day: int | None = None
    reply: SimReply = GENERIC_UNTRUSTED_IP
    day_reply: SimReply | None = None
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
    reply: SimReply = GREYLISTED


@dataclass(frozen=True)
class SimBehaviour:
    """How a simulated provider answers. The default accepts everything.

    Recipient checks run in this order: throttle (if at RCPT), reputation (block, then its
    own throttle), ``rcpt_rules`` (first match wins), greylisting. Addresses matching
    ``bounce_rules`` are accepted with 250, then a DSN carrying the rule's reply as diagnostic
    is appended to the mbox.
    """

    name: str = "sandbox"
    hostname: str = "mx.sim.invalid"
    banner: str = "ESMTP mailctl-sim"
    connect_reply: SimReply | None = None
    max_connections: int | None = None  # concurrent, per source IP
    too_many_connections_reply: SimReply = TOO_MANY_CONNECTIONS
    max_messages_per_connection: int | None = None
    connection_cap_action: CapAction = CapAction.REPLY
    connection_cap_reply: SimReply = MAX_MESSAGES_PER_CONNECTION
    rcpt_rules: tuple[AddressRule, ...] = ()
    data_reply: SimReply | None = None
    drop_data_for: tuple[AddressMatch, ...] = ()
    drop_every_nth_message: int | None = None
    delays: Mapping[str, float] = field(default_factory=dict)  # Command → seconds
    throttle: Throttle | None = None
    greylist: Greylist | None = None
    bounce_rules: tuple[AddressRule, ...] = ()
    accept_reply: SimReply = ACCEPTED
    reputation: ReputationModel | None = None  # judge each sending IP (sim/reputation.py)

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
    REPUTATION = "reputation"


def _local_part(*prefixes: str) -> re.Pattern[str]:
    # Rehearsal addresses: the local part starts with one of the prefixes (e.g. unknown-42@…).
    return re.compile(rf"^(?:{'|'.join(prefixes)})[^@]*@", re.IGNORECASE)


_UNKNOWN = _local_part("unknown", "nosuchuser")
_DISABLED = _local_part("disabled")
_FULL = _local_part("overquota", "full")
_BUSY = _local_part("busy")
_LATE_BOUNCE = _local_part("bounce")


def _presets() -> dict[Preset, SimBehaviour]:
    late_bounce = (AddressRule(_LATE_BOUNCE, SimReply(550, "5.1.1 <{rcpt}>: user unknown")),)
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
        # Judges each sending IP: see mailctl/sim/reputation.py for the model.
        Preset.REPUTATION: SimBehaviour(
            name="reputation",
            hostname="mx.reputation.sim.invalid",
            banner="ESMTP Postfix",
            max_connections=10,
            rcpt_rules=(
                AddressRule(_UNKNOWN, GENERIC_USER_UNKNOWN),
                AddressRule(_FULL, GENERIC_MAILBOX_FULL),
            ),
            reputation=ReputationModel(),
        ),
    }


def preset(name: Preset | str, **overrides: Any) -> SimBehaviour:
    """The bundled behaviour of a provider, with any field overridden.

    Presets other than ``sandbox`` know rehearsal addresses by local-part prefix:
    ``unknown…``/``nosuchuser…`` get the provider's hard bounce, ``disabled…`` a disabled
    mailbox, ``overquota…``/``full…`` a mailbox-full deferral, ``busy…`` Google's
    ReceivingRate, ``bounce…`` is accepted and then bounced by DSN. ``reputation`` judges each
    sending IP by its reputation (throttle, spam placement, block: sim/reputation.py).
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
    tls: SimTls = SimTls.OFF
    data_size_limit: int = 32 * 1024 * 1024
    idle_timeout: float = 300.0  # seconds a client may stay silent before being dropped


# --------------------------------------------------------------------------------------------
# State a behaviour keeps between connections


class ThrottleCounter:
    """What a :class:`Throttle` has counted: accepted recipients per source IP, in the sliding
    window and per UTC day."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle
        self.recent: defaultdict[str, deque[float]] = defaultdict(deque)
        self.per_day: defaultdict[tuple[str, int], int] = defaultdict(int)

    @property
    def stage(self) -> Stage:
        return self.throttle.stage

    def reply(self, source_ip: str, now: float) -> SimReply | None:
        """The throttle reply if ``source_ip`` is over a limit at ``now``, else None."""
        throttle = self.throttle
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

    def count(self, source_ip: str, now: float) -> None:
        """Count one accepted recipient from ``source_ip``."""
        throttle = self.throttle
        if throttle.max_messages is not None:
            self.recent[source_ip].append(now)
        if throttle.max_per_day is not None:
            self.per_day[(source_ip, int(now // 86400))] += 1


class GreylistMemory:
    """When each (source IP, sender, recipient) was first seen by a :class:`Greylist`."""

    def __init__(self, greylist: Greylist) -> None:
        self.greylist = greylist
        self.first_seen: dict[tuple[str, str, str], float] = {}

    @property
    def reply(self) -> SimReply:
        return self.greylist.reply

    def refuses(self, source_ip: str, sender: str, rcpt: str, now: float) -> bool:
        """True while the triple is younger than the greylisting delay (first sight counts)."""
        key = (source_ip, sender.casefold(), rcpt.casefold())
        first_seen = self.first_seen.setdefault(key, now)
        return now - first_seen < self.greylist.delay
