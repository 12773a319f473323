"""What a simulated provider records and reports.

Owns the records a sim keeps (:class:`Delivery`, :class:`Refusal`, :class:`Bounce`, each with
its :class:`RefusalReason`), the counts per sending IP made from them (:class:`IpStats`,
:func:`ip_stats`) and the progress events it hands to an ``on_event`` callback
(:class:`SimEvent` of a :class:`SimEventKind`): the sim never prints.

Must not import aiosmtpd, the handler or the servers, nor mailctl's cli, delivery, bounces or
report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mailctl.sim.behaviours import Stage


class RefusalReason(enum.StrEnum):
    """Why a simulated provider did not accept something."""

    CONNECT_REPLY = "connect_reply"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    CONNECTION_CAP = "connection_cap"
    RECIPIENT_RULE = "recipient_rule"
    THROTTLE = "throttle"
    BLOCKED = "blocked"  # the sending IP's reputation is too low (sim/reputation.py)
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
    folder: str = "inbox"  # where the receiver placed it: inbox or spam (reputation sims)


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


@dataclass
class IpStats:
    """What one sending IP got from a simulated provider, counted per recipient."""

    inbox: int = 0  # accepted and placed in the inbox (every acceptance, without a reputation)
    spam: int = 0  # accepted and placed in spam (reputation sims)
    throttled: int = 0  # refused by a throttle (at connect, RCPT or DATA)
    blocked: int = 0  # refused because the IP's reputation is too low
    bounced: int = 0  # refused at RCPT with a 5xx recipient rule (unknown user ...)
    other: int = 0  # any other refusal (greylisting, connection caps, drops ...)
    reputation: float | None = None  # as last judged (reputation sims)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "inbox": self.inbox,
            "spam": self.spam,
            "throttled": self.throttled,
            "blocked": self.blocked,
            "bounced": self.bounced,
            "other": self.other,
            "reputation": None if self.reputation is None else round(self.reputation, 2),
        }


def ip_stats(
    deliveries: Iterable[Delivery],
    refusals: Iterable[Refusal],
    reputations: Mapping[str, float] | None = None,
) -> dict[str, IpStats]:
    """Counts per sending IP, sorted by IP."""
    stats: dict[str, IpStats] = {}

    def of(ip: str) -> IpStats:
        return stats.setdefault(ip, IpStats())

    for delivery in deliveries:
        entry = of(delivery.source_ip)
        if delivery.folder == "spam":
            entry.spam += 1
        else:
            entry.inbox += 1
    for refusal in refusals:
        entry = of(refusal.source_ip)
        if refusal.reason is RefusalReason.THROTTLE:
            entry.throttled += 1
        elif refusal.reason is RefusalReason.BLOCKED:
            entry.blocked += 1
        elif (
            refusal.reason is RefusalReason.RECIPIENT_RULE
            and refusal.code is not None
            and refusal.code >= 500
        ):
            entry.bounced += 1
        else:
            entry.other += 1
    for ip, reputation in (reputations or {}).items():
        of(ip).reputation = reputation
    return dict(sorted(stats.items()))


class SimEventKind(enum.StrEnum):
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

    kind: SimEventKind
    message: str
    source_ip: str | None = None
    record: Delivery | Refusal | Bounce | None = None


EventCallback = Callable[[SimEvent], None]
TimeSource = Callable[[], float]
"""Returns the time in epoch seconds (``time.time`` or a test's fake clock's ``now``)."""
