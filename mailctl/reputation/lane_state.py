"""A lane's persistent state and its vocabulary: modes, events, the recovery policy, and
`LaneState` (one row of the ``lanes`` table, learned rate and connections included).

Pure data: imports only the provider-rule types; never the lane logic, the store or delivery.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailctl.config.provider_rules import LaneLimits


class LaneMode(StrEnum):
    NORMAL = "normal"  # full speed, or recovering (see LaneState.ramp_factor)
    SLOWED = "slowed"  # limits lowered until `until`
    SUSPENDED = "suspended"  # nothing sent until `until`
    DISABLED = "disabled"  # out of rotation for this provider until resumed (or `until`)


class LaneEventKind(StrEnum):
    """What a reply did to a lane (the scheduler's answer to the engine)."""

    NONE = "none"  # nothing changed (a delivery, an ordinary deferral)
    IGNORED = "ignored"  # not the receiver's word, or the lane already paused for it
    COUNTED = "counted"  # a triggered rule matched but has not reached its count
    SUSPENDED = "suspended"
    SLOWED = "slowed"
    DISABLED = "disabled"
    BACKOFF = "backoff"  # a throttle no rule names: rate cut, probe pause doubling on repeats
    CONNECTIONS = "connections"  # a connection signal: fewer connections, rate unchanged
    STOP_CAMPAIGN = "stop_campaign"
    DEFER_RECIPIENT = "defer_recipient"
    BOUNCE_RECIPIENT = "bounce_recipient"


@dataclass(frozen=True)
class LaneEvent:
    """What a reply did, for the run's log and progress."""

    kind: LaneEventKind
    ip: str
    provider: str
    until: float | None = None
    reason: str | None = None
    rule: str | None = None
    alert: bool = False
    retry_after: float | None = None  # for the message: the reply's named delay or the rule's

    @property
    def pauses_lane(self) -> bool:
        return self.kind in (
            LaneEventKind.SUSPENDED,
            LaneEventKind.SLOWED,
            LaneEventKind.DISABLED,
            LaneEventKind.BACKOFF,
        )


@dataclass(frozen=True)
class RecoveryPolicy:
    """How lanes back off and come back. Defaults follow PROVIDERS.md."""

    start_fraction: float = 0.25  # resume at a quarter of the earlier rate
    step: float = 1.25  # +25% per clean interval
    clean_interval: float = 300.0  # seconds without a throttle that earn a step
    min_change_interval: float = 60.0  # limits rise at most once a minute
    backoff_initial: float = 60.0  # unknown 421: 1 min, doubling ...
    backoff_max: float = 3600.0  # ... to 1 h
    jitter: float = 0.2  # +-20%, so lanes paused together do not resume together
    min_rate_per_minute: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.start_fraction <= 1:
            raise ValueError("start_fraction must be in (0, 1]")
        if self.step <= 1:
            raise ValueError("step must be above 1")
        if self.clean_interval < self.min_change_interval:
            raise ValueError("clean_interval must be at least min_change_interval")

    @property
    def step_interval(self) -> float:
        return max(self.clean_interval, self.min_change_interval)


# --------------------------------------------------------------------------------------------
# Persistent state


@dataclass(frozen=True)
class LaneState:
    """Everything a lane must remember across runs (one row of the ``lanes`` table)."""

    ip: str
    provider: str
    mode: LaneMode = LaneMode.NORMAL
    until: float | None = None  # end of the suspension / slow period / disablement
    reason: str | None = None
    rule: str | None = None
    alert: bool = False
    # While slowed (or scheduled to slow after a pause): the limits in force, and when a
    # pause-then-slow rule (Gmail 4.7.28) turns from suspended into slowed.
    slow_limits: LaneLimits | None = None
    slow_until: float | None = None
    earlier_factor: float = 1.0  # rate factor in force when the current pause began
    ramp_factor: float | None = None  # None: full speed; else fraction of the base rates
    ramp_connections: int | None = None
    last_change_at: float | None = None
    backoff_level: int = 0
    last_resume_at: float | None = None  # end of the last backoff, to reset it when clean
    tokens: tuple[float, float, float] | None = None  # minute, hour, day buckets
    tokens_at: float | None = None
    hits: tuple[tuple[str, tuple[float, ...]], ...] = ()  # trigger matches per rule id
    sent: int = 0
    deferred: int = 0
    throttled: int = 0
    updated_at: float | None = None
    # Learned from the receiver (reputation/aimd.py): caps under the ceilings, None = unlearned.
    learned_rate: float | None = None  # messages per minute
    learned_peak: float | None = None  # the accepted rate the last throttle cut from
    learned_connections: int | None = None
    learned_reason: str | None = None  # the reply that taught it
    learned_at: float | None = None  # when
    learned_observed: str | None = None  # what was observed before it
    learned_step_at: float | None = None  # last change of the learned rate
    learned_conn_at: float | None = None  # last change of the learned connections
    probe_level: int = 0  # throttles in a row (the pause doubles)
    connect_until: float | None = None  # no new connection before (a connection signal)
    probing: bool = False  # the suspension is a probe pause: it ends without a ramp
    # Messages the receiver accepted in the last `AimdPolicy.window`, as (epoch second,
    # count): a receiver counts per client over its own window, so a run that starts right
    # after another starts from what that one sent (reputation/aimd.py `recent_times`).
    recent_accepts: tuple[tuple[int, int], ...] = ()

    def to_row(self) -> dict[str, Any]:
        """Flat, SQLite-ready values (nested parts as JSON text)."""
        return {
            "ip": self.ip,
            "provider": self.provider,
            "mode": self.mode.value,
            "until": self.until,
            "reason": self.reason,
            "rule": self.rule,
            "alert": int(self.alert),
            "slow_limits": json.dumps(self.slow_limits.as_dict()) if self.slow_limits else None,
            "slow_until": self.slow_until,
            "earlier_factor": self.earlier_factor,
            "ramp_factor": self.ramp_factor,
            "ramp_connections": self.ramp_connections,
            "last_change_at": self.last_change_at,
            "backoff_level": self.backoff_level,
            "last_resume_at": self.last_resume_at,
            "tokens": json.dumps(list(self.tokens)) if self.tokens is not None else None,
            "tokens_at": self.tokens_at,
            "hits": json.dumps({rule: list(times) for rule, times in self.hits}),
            "sent": self.sent,
            "deferred": self.deferred,
            "throttled": self.throttled,
            "updated_at": self.updated_at,
            **{name: getattr(self, name) for name in LEARNED_COLUMNS},
            "probing": int(self.probing),
            "recent_accepts": json.dumps([list(pair) for pair in self.recent_accepts]),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LaneState:
        """The inverse of `to_row` (accepts a sqlite3.Row or any mapping)."""
        slow = row["slow_limits"]
        tokens = row["tokens"]
        hits = json.loads(row["hits"] or "{}")
        return cls(
            ip=row["ip"],
            provider=row["provider"],
            mode=LaneMode(row["mode"]),
            until=row["until"],
            reason=row["reason"],
            rule=row["rule"],
            alert=bool(row["alert"]),
            slow_limits=LaneLimits.from_dict(json.loads(slow)) if slow else None,
            slow_until=row["slow_until"],
            earlier_factor=float(row["earlier_factor"]),
            ramp_factor=row["ramp_factor"],
            ramp_connections=row["ramp_connections"],
            last_change_at=row["last_change_at"],
            backoff_level=int(row["backoff_level"]),
            last_resume_at=row["last_resume_at"],
            tokens=tuple(json.loads(tokens)) if tokens else None,  # type: ignore[arg-type]
            tokens_at=row["tokens_at"],
            hits=tuple((rule, tuple(times)) for rule, times in sorted(hits.items())),
            sent=int(row["sent"]),
            deferred=int(row["deferred"]),
            throttled=int(row["throttled"]),
            updated_at=row["updated_at"],
            **_learned(row),
        )


LEARNED_COLUMNS = (
    "learned_rate",
    "learned_peak",
    "learned_connections",
    "learned_reason",
    "learned_at",
    "learned_observed",
    "learned_step_at",
    "learned_conn_at",
    "probe_level",
    "connect_until",
    "probing",
    "recent_accepts",
)


def _learned(row: Mapping[str, Any]) -> dict[str, Any]:
    """The learned columns of a row (absent in rows written before they existed)."""
    keys = row.keys()
    values = {name: row[name] for name in LEARNED_COLUMNS if name in keys}
    values["probe_level"] = int(values.get("probe_level") or 0)
    values["probing"] = bool(values.get("probing"))
    values["recent_accepts"] = _recent(values.get("recent_accepts"))
    if values.get("learned_connections") is not None:
        values["learned_connections"] = int(values["learned_connections"])
    return values


def _recent(text: str | None) -> tuple[tuple[int, int], ...]:
    """The ``recent_accepts`` column: a JSON list of [second, count] pairs (bad or absent
    values read as none: it is a hint, never worth failing a run for)."""
    if not text:
        return ()
    try:
        pairs = json.loads(text)
        return tuple((int(second), int(count)) for second, count in pairs if int(count) > 0)
    except (TypeError, ValueError):
        return ()


@dataclass(frozen=True)
class LaneSnapshot:
    """One line of ``mailctl lanes``."""

    ip: str
    provider: str
    mode: LaneMode
    until: float | None
    reason: str | None
    rule: str | None
    alert: bool
    limits: LaneLimits
    recovering: bool
    ready_in: float  # seconds until the lane may send (inf: disabled)
    sent: int
    deferred: int
    throttled: int
    learned_rate: float | None = None
    learned_connections: int | None = None
    learned_reason: str | None = None
    learned_at: float | None = None
    learned_observed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "provider": self.provider,
            "state": self.mode.value,
            "until": self.until,
            "reason": self.reason,
            "rule": self.rule,
            "alert": self.alert,
            "limits": self.limits.as_dict(),
            "recovering": self.recovering,
            "ready_in": None if math.isinf(self.ready_in) else round(self.ready_in, 3),
            "sent": self.sent,
            "deferred": self.deferred,
            "throttled": self.throttled,
            "learned": {
                "per_minute": None if self.learned_rate is None else round(self.learned_rate, 2),
                "connections": self.learned_connections,
                "reason": self.learned_reason,
                "at": self.learned_at,
                "observed": self.learned_observed,
            },
        }
