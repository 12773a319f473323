"""The campaign circuit breaker: trip when bounce or complaint rates pass their thresholds.

Pure: imports nothing from mailctl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

# --------------------------------------------------------------------------------------------
# Circuit breaker


@dataclass(frozen=True)
class BreakerPolicy:
    """Trip above these rates, once at least ``min_sent`` messages were answered."""

    bounce_rate: float = 0.02
    complaint_rate: float = 0.003
    min_sent: int = 200

    @classmethod
    def from_config(cls, breakers: Any) -> BreakerPolicy:
        """From `config.Breakers` (same field names)."""
        return cls(breakers.bounce_rate, breakers.complaint_rate, breakers.min_sent)


@dataclass(frozen=True)
class BreakerState:
    """A campaign's counts. ``sent``: messages the receivers answered (accepted or rejected);
    ``bounced``: hard bounces, synchronous or from DSNs; ``complained``: ARF reports."""

    sent: int = 0
    bounced: int = 0
    complained: int = 0

    def add(self, *, sent: int = 0, bounced: int = 0, complained: int = 0) -> BreakerState:
        return BreakerState(self.sent + sent, self.bounced + bounced, self.complained + complained)


@dataclass(frozen=True)
class BreakerTrip:
    kind: str  # "bounce_rate" | "complaint_rate"
    rate: float
    threshold: float
    sent: int
    reason: str = field(default="")


def _exact(value: float) -> Fraction:
    # Compare as decimals: 4 bounces of 200 is exactly 2%, which must not trip a 2% breaker.
    return Fraction(repr(value))


def check_breaker(state: BreakerState, policy: BreakerPolicy | None = None) -> BreakerTrip | None:
    """A trip when the bounce rate passes its threshold (strictly above), else the
    complaint rate; None below ``min_sent`` and at or below the thresholds."""
    policy = policy or BreakerPolicy()
    if state.sent <= 0 or state.sent < policy.min_sent:
        return None
    for kind, count, threshold in (
        ("bounce_rate", state.bounced, policy.bounce_rate),
        ("complaint_rate", state.complained, policy.complaint_rate),
    ):
        rate = Fraction(count, state.sent)
        if rate > _exact(threshold):
            label = kind.replace("_", " ")
            reason = (
                f"{label} {float(rate) * 100:.2f}% is above {threshold * 100:g}% "
                f"({count} of {state.sent} sent)"
            )
            return BreakerTrip(kind, float(rate), threshold, state.sent, reason)
    return None
