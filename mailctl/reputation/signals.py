"""What a batch of delivery outcomes leaves in the records, decided before the store sees it.

- Warm-up signals: per sending IP, day and provider, how many messages were accepted,
  deferred or bounced, and how many replies were about the lane (throttles and blocks).
  The warm-up holds or steps back on these counts (`ip_days`).
- Reports: a bounce or complaint imported later counts against the IP and day its message
  went out.
- Suppressions: a reply the classifier judged a permanent failure of the recipient's own
  (`suppress`) puts the address on the suppression list as a hard bounce.

Pure functions over outcomes; the store only writes the rows they return. Must not import
delivery, bounces, report or cli.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from mailctl.recipients.address import address_key
from mailctl.store.base import IpDayCounts, SuppressionEntry

# The reason that makes a lane's refusal a block rather than a throttle.
_BLOCK_REASON = "blocked"


class CountedOutcome(Protocol):
    """The parts of a delivery outcome that decide its signals (the engine's `Outcome`)."""

    @property
    def email(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def attempted(self) -> bool: ...
    @property
    def at(self) -> float: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def day(self) -> str | None: ...
    @property
    def code(self) -> int | None: ...
    @property
    def reply(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def scope(self) -> str | None: ...
    @property
    def suppress(self) -> bool: ...


def ip_day_counts(outcomes: Iterable[CountedOutcome]) -> list[IpDayCounts]:
    """The warm-up's source of truth: what each IP did toward each provider per day.

    Only attempts count (mailctl's own deferrals never do). A reply about the lane (scope
    ``lane``) counts as a block when its reason says so, else as a throttle. The day is the
    sending IP's local day when the outcome knows it, else the UTC day.
    """
    signals: dict[tuple[str, str, str], dict[str, int]] = {}
    for o in outcomes:
        if not o.attempted or o.ip is None or o.provider is None:
            continue
        day = o.day or time.strftime("%Y-%m-%d", time.gmtime(o.at))
        counts = signals.setdefault((o.ip, day, o.provider), {})
        if o.state in ("sent", "deferred", "bounced"):
            counts[o.state] = counts.get(o.state, 0) + 1
        if o.scope == "lane" and o.code is not None:
            kind = "blocks" if o.reason == _BLOCK_REASON else "throttles"
            counts[kind] = counts.get(kind, 0) + 1
    return [
        IpDayCounts(ip, day, provider, **counts) for (ip, day, provider), counts in signals.items()
    ]


def reported_counts(
    message: Mapping[str, Any], *, complained: bool = False, reason: str | None = None
) -> IpDayCounts | None:
    """What a later report about a sent message adds to the UTC day it went out: a
    complaint, or a failure (also a block when its reason says so). None when the message
    never left through a known lane."""
    ip, provider, sent_at = message.get("ip"), message.get("provider"), message.get("sent_at")
    if not (ip and provider and sent_at):
        return None
    day = time.strftime("%Y-%m-%d", time.gmtime(sent_at))
    if complained:
        return IpDayCounts(ip, day, provider, complained=1)
    return IpDayCounts(ip, day, provider, bounced=1, blocks=int(reason == _BLOCK_REASON))


def smtp_suppressions(outcomes: Iterable[CountedOutcome]) -> list[SuppressionEntry]:
    """Hard bounces from live SMTP replies: suppressed at once, sourced to the sending IP."""
    return [
        SuppressionEntry(
            address_key(o.email),
            "hard_bounce",
            at=o.at,
            source=f"smtp:{o.ip or ''}",
            status=o.status,
            diagnostic=o.reply,
        )
        for o in outcomes
        if o.suppress
    ]
