"""Warm-up schedules: the presets and one sending IP's warm-up setting, with its stage caps.

`WarmupSetting` is the one type for an IP's warm-up: config reads it from profiles.yaml and
the warm-up replay (reputation/warmup.py) counts stages against it. The maths here is pure:
published presets, generated ramps (linear, SES 45-day), stage caps capped at the target.

A bottom module: standard library only, so config can own the type without importing the
reputation package above it. It must not import any other mailctl module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_LINEAR_DAYS",
    "DEFAULT_LINEAR_START",
    "LINEAR",
    "PRESETS",
    "PRESET_NAMES",
    "SENDGRID_SCHEDULE",
    "SES45_DAYS",
    "SES45_FIRST_DAY",
    "SES45_TARGET",
    "SPARKPOST_SCHEDULE",
    "WarmupSetting",
    "WarmupThresholds",
    "check_preset_name",
    "exact_fraction",
    "linear_schedule",
    "ses45_schedule",
]

# --- presets ---------------------------------------------------------------------------------

# SendGrid's published manual plan, days 1-15 (PROVIDERS.md).
SENDGRID_SCHEDULE: tuple[int, ...] = (
    50, 100, 500, 1_000, 5_000, 10_000, 20_000, 40_000, 70_000, 100_000,
    150_000, 250_000, 400_000, 600_000, 1_000_000,
)  # fmt: skip

# SparkPost's published plan: days 1-15, then the continuation it publishes. It ends at 1.25M;
# a target above that needs explicit `volumes` (the cap otherwise stays at 1.25M).
SPARKPOST_SCHEDULE: tuple[int, ...] = (
    200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 50_000, 75_000,
    100_000, 150_000, 200_000, 250_000, 325_000,
    400_000, 500_000, 600_000, 750_000, 1_000_000, 1_250_000,
)  # fmt: skip

SES45_DAYS = 45
SES45_FIRST_DAY = 50
SES45_TARGET = 50_000


def ses45_schedule() -> tuple[int, ...]:
    """Amazon SES's 45-day warm-up to 50,000/day as a geometric ramp.

    v(d) = round(50 * 1000 ** ((d - 1) / 44)) for d = 1..45: day 1 is 50 (SendGrid's day 1),
    day 45 is exactly 50,000, and every day is about 17% above the one before (x10 every ~14.7
    days). A constant ratio keeps each day's step proportional to the reputation already earned.
    """
    ratio = SES45_TARGET / SES45_FIRST_DAY
    return tuple(
        round(SES45_FIRST_DAY * ratio ** ((d - 1) / (SES45_DAYS - 1)))
        for d in range(1, SES45_DAYS + 1)
    )


def linear_schedule(start_volume: int, target_daily: int, days: int) -> tuple[int, ...]:
    """A straight line from `start_volume` on day 1 to `target_daily` on day `days`.

    v(d) = start + (target - start) * (d - 1) // (days - 1), integer maths so the last day is
    exactly the target.
    """
    if days < 2:
        raise ValueError(f"linear warm-up needs at least 2 days, got {days}")
    if start_volume < 1:
        raise ValueError(f"linear warm-up start_volume must be at least 1, got {start_volume}")
    if start_volume > target_daily:
        raise ValueError(
            f"linear warm-up start_volume ({start_volume:,}) exceeds target_daily "
            f"({target_daily:,})"
        )
    span = target_daily - start_volume
    return tuple(start_volume + span * d // (days - 1) for d in range(days))


# Fixed schedules by name. `linear` is a preset too, but it is built from the setting's
# start_volume, target_daily and linear_days, so it lives in PRESET_NAMES only.
PRESETS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "sendgrid": SENDGRID_SCHEDULE,
        "sparkpost": SPARKPOST_SCHEDULE,
        "ses45": ses45_schedule(),
    }
)
LINEAR = "linear"
PRESET_NAMES: tuple[str, ...] = (*PRESETS, LINEAR)

# Defaults for the linear preset: start where SendGrid starts, reach the target in 30 days.
DEFAULT_LINEAR_START = 50
DEFAULT_LINEAR_DAYS = 30


def check_preset_name(name: str) -> None:
    """Raise ValueError naming the valid presets unless `name` is one of them."""
    if name not in PRESET_NAMES:
        raise ValueError(
            f"unknown warm-up preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}"
        )


# --- settings --------------------------------------------------------------------------------


def exact_fraction(value: float) -> Fraction:
    """The decimal as written (0.001), not its binary float, as an exact fraction."""
    # Thresholds and shares are written as decimals ("0.001"); compare against that exact
    # decimal, not its binary float, so "exactly at the threshold" behaves as written.
    return Fraction(str(value))


@dataclass(frozen=True)
class WarmupThresholds:
    """Signals that stop a stage from advancing (hold) or push it back (step back).

    A day HOLDS when any value is strictly above its maximum; it STEPS BACK when blocks are
    above `max_blocks`. Rates are per sent message; the deferral share is
    deferred / (sent + deferred).
    """

    max_deferral_share: float = 0.05
    max_bounce_rate: float = 0.02
    max_complaint_rate: float = 0.001
    max_throttles: int = 0
    max_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("max_deferral_share", "max_bounce_rate", "max_complaint_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"warm-up threshold {name} must be within 0..1, got {value}")
        for name in ("max_throttles", "max_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"warm-up threshold {name} must not be negative")


def _ramp(schedule: Sequence[int], target_daily: int) -> tuple[int, ...]:
    """Stage caps: schedule values capped at the target, ending at the first that reaches it."""
    caps: list[int] = []
    for volume in schedule:
        caps.append(min(volume, target_daily))
        if volume >= target_daily:
            break
    return tuple(caps)


@dataclass(frozen=True, kw_only=True)
class WarmupSetting:
    """One sending IP's warm-up: which schedule, from when, up to what, and how it is spread.

    Exactly one of `preset` (a name in PRESET_NAMES) or `volumes` (explicit daily volumes,
    positive and non-decreasing) must be given. `start_volume` and `linear_days` only matter
    for the `linear` preset. Provider names are matched case-insensitively. The sending window
    runs from `window_start_hour` to `window_end_hour` (0..24, start < end, no overnight
    windows) in `timezone`. Invalid values raise ValueError naming the field.
    """

    start: date
    target_daily: int
    preset: str | None = None
    volumes: tuple[int, ...] | None = None
    start_volume: int = DEFAULT_LINEAR_START
    linear_days: int = DEFAULT_LINEAR_DAYS
    provider_caps: Mapping[str, int] = field(default_factory=dict)
    provider_shares: Mapping[str, float] = field(default_factory=dict)
    window_start_hour: int = 0
    window_end_hour: int = 24
    timezone: str = "UTC"
    idle_reset_days: int = 30
    thresholds: WarmupThresholds = field(default_factory=WarmupThresholds)

    def __post_init__(self) -> None:
        # object.__setattr__: the dataclass is frozen; these normalise inputs once, up front.
        if self.target_daily < 1:
            raise ValueError(f"warm-up target_daily must be at least 1, got {self.target_daily}")
        if (self.preset is None) == (self.volumes is None):
            raise ValueError("a warm-up setting needs exactly one of preset or volumes")
        if self.preset is not None:
            check_preset_name(self.preset)
        if self.volumes is not None:
            volumes = tuple(self.volumes)
            _check_volumes(volumes)
            object.__setattr__(self, "volumes", volumes)
        if self.start_volume < 1 or self.linear_days < 2:
            raise ValueError(
                "warm-up start_volume must be at least 1 and linear_days at least 2, got "
                f"{self.start_volume} and {self.linear_days}"
            )
        if self.idle_reset_days < 1:
            raise ValueError(
                f"warm-up idle_reset_days must be at least 1, got {self.idle_reset_days}"
            )
        if not 0 <= self.window_start_hour < self.window_end_hour <= 24:
            raise ValueError(
                "warm-up window needs 0 <= window_start_hour < window_end_hour <= 24, got "
                f"{self.window_start_hour}..{self.window_end_hour}"
            )
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown warm-up time zone {self.timezone!r}") from exc
        object.__setattr__(self, "_zone", zone)

        caps: dict[str, int] = {}
        for provider, cap in self.provider_caps.items():
            if cap < 0:
                raise ValueError(f"warm-up provider cap for {provider!r} must not be negative")
            caps[provider.lower()] = cap
        shares: dict[str, float] = {}
        for provider, share in self.provider_shares.items():
            if not 0 <= share <= 1:
                raise ValueError(
                    f"warm-up provider share for {provider!r} must be within 0..1, got {share}"
                )
            shares[provider.lower()] = share
        object.__setattr__(self, "provider_caps", MappingProxyType(caps))
        object.__setattr__(self, "provider_shares", MappingProxyType(shares))
        # Computed once: the replay looks a stage's cap up for every day.
        object.__setattr__(self, "_ramp", _ramp(self.schedule(), self.target_daily))

    @property
    def name(self) -> str:
        """The preset's name, or "custom" for explicit volumes."""
        return self.preset if self.preset is not None else "custom"

    @property
    def zone(self) -> ZoneInfo:
        """The sending window's time zone."""
        zone: ZoneInfo = self._zone  # type: ignore[attr-defined]
        return zone

    def schedule(self, preset: str | None = None) -> tuple[int, ...]:
        """The raw daily volumes (uncapped) of this setting, or of another preset for it."""
        name = preset if preset is not None else self.preset
        if name is None:
            assert self.volumes is not None  # __post_init__ guarantees one of the two
            return self.volumes
        check_preset_name(name)
        if name == LINEAR:
            # A start above the target would ramp down; start at the target instead (warm).
            start_volume = min(self.start_volume, self.target_daily)
            return linear_schedule(start_volume, self.target_daily, self.linear_days)
        return PRESETS[name]

    def ramp(self, preset: str | None = None) -> tuple[int, ...]:
        """The stage caps: `ramp()[stage - 1]` is the cap of that stage; the last one holds."""
        if preset is None:
            ramp: tuple[int, ...] = self._ramp  # type: ignore[attr-defined]
            return ramp
        return _ramp(self.schedule(preset), self.target_daily)

    def stage_cap(self, stage: int) -> int:
        """The cap of a 1-based stage; stages past the end keep the last cap."""
        ramp = self.ramp()
        return ramp[min(max(stage, 1), len(ramp)) - 1]


def _check_volumes(volumes: tuple[int, ...]) -> None:
    if not volumes:
        raise ValueError("warm-up volumes must not be empty")
    for day, volume in enumerate(volumes, start=1):
        if isinstance(volume, bool) or not isinstance(volume, int) or volume < 1:
            raise ValueError(f"warm-up volume for day {day} must be a positive integer")
    for day in range(1, len(volumes)):
        if volumes[day] < volumes[day - 1]:
            raise ValueError(
                f"warm-up volumes must not decrease (day {day + 1}: {volumes[day]:,} after "
                f"{volumes[day - 1]:,})"
            )
