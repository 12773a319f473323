"""What a simulated provider records and reports.

Owns the records a sim keeps (:class:`Delivery`, :class:`Refusal`, :class:`Bounce`, each with
its :class:`RefusalReason`) and the progress events it hands to an ``on_event`` callback
(:class:`SimEvent` of a :class:`SimEventKind`): the sim never prints.

Must not import aiosmtpd, the handler or the servers, nor mailctl's cli, delivery, bounces or
report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from mailctl.sim.behaviours import Stage


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
