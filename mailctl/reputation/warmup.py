"""Warm-up replay: sending-day counting, holds and step-backs on signals, per-provider caps.

Schedules and the per-IP setting live in mailctl/warmup_schedule.py (presets, stage caps);
this module replays an IP's history against them. Nothing here touches the database, the
clock or the terminal: callers pass the IP's history (one `DayRecord` a day, from `ip_days`),
the manual events the CLI stored (`WarmupEvent`) and `today` / `now`. The same inputs always
give the same answer, so `warmup plan`, the scheduler and the tests all agree. It must not
import the store, the CLI or delivery.

How the replay works (one pass over history, never editing it):

- A run starts on `WarmupSetting.start` (or on an explicit `start` event, which also picks a new
  preset). Days before the first start are not counted.
- Stages advance by *sending days* (days with `sent > 0`), not calendar days. After a sending
  day, the next sending day is one stage up, unless that day had bad signals (hold: repeat the
  stage) or block replies (step back one stage, never below 1). A manual `hold` event freezes
  the stage until `resume` or `start`; blocks still step back during a hold, because a block
  is the receiver saying "too much" and reputation comes before the operator's freeze.
- After `idle_reset_days` calendar days without sending, the ramp starts again from stage 1.
- The stage for a day depends only on history strictly before that day (plus events up to and
  including that day: an operator's `reset` today applies today).
- A stage's cap is `min(schedule value, target_daily)`; the ramp ends at the first stage that
  reaches `target_daily` (the IP is then warm) or at the last schedule entry, whose cap holds.

An IP without a setting (`setting=None` everywhere) is warm: caps are None (unlimited).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType

from mailctl.warmup_schedule import (
    WarmupSetting,
    WarmupThresholds,
    check_preset_name,
    exact_fraction,
)

__all__ = [
    "DayOutcome",
    "DayRecord",
    "PastDay",
    "PlannedDay",
    "WarmupEvent",
    "WarmupEventKind",
    "WarmupPlan",
    "WarmupState",
    "WarmupStatus",
    "local_day",
    "next_send_time",
    "next_window_open",
    "plan",
    "provider_cap",
    "provider_caps",
    "state_on",
    "window_allowance",
    "window_bounds",
]


# --- inputs: history and events --------------------------------------------------------------


@dataclass(frozen=True)
class DayRecord:
    """What one IP did on one (local) day. `sent == 0` means it was not a sending day.

    `throttles` counts throttle replies received, `blocks` block / TS03-type replies.
    `by_provider` (sent per provider) is carried for callers; the warm-up decides on totals.
    Several records for the same day are summed (e.g. one per provider from `ip_days`).
    """

    day: date
    sent: int
    deferred: int = 0
    bounced: int = 0
    complained: int = 0
    throttles: int = 0
    blocks: int = 0
    by_provider: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sent", "deferred", "bounced", "complained", "throttles", "blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} for {self.day} must not be negative")


class WarmupEventKind(StrEnum):
    """Manual warm-up commands the CLI stores as events."""

    START = "start"  # (re)start at stage 1 on `day`, optionally with another preset
    HOLD = "hold"  # freeze the stage: sending days no longer advance it
    RESUME = "resume"  # end a hold
    RESET = "reset"  # back to stage 1 now, same preset; also ends a hold


@dataclass(frozen=True)
class WarmupEvent:
    """One manual command, applied at the start of `day` during the replay."""

    day: date
    kind: WarmupEventKind
    preset: str | None = None  # start only: switch to this preset (None keeps the current one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WarmupEventKind(self.kind))
        if self.preset is not None:
            if self.kind is not WarmupEventKind.START:
                raise ValueError(f"only a start event takes a preset, not {self.kind}")
            check_preset_name(self.preset)


# --- outputs ---------------------------------------------------------------------------------


class DayOutcome(StrEnum):
    """What a past day did to the ramp."""

    ADVANCED = "advanced"  # clean sending day: next sending day is one stage up
    HELD = "held"  # bad signals: next sending day repeats the stage
    STEPPED_BACK = "stepped_back"  # block replies: one stage down (never below 1)
    PAUSED = "paused"  # manual hold: the stage is frozen (also: the hold event itself)
    COMPLETE = "complete"  # clean day at the ramp's last stage: nothing left to advance
    NOT_COUNTED = "not_counted"  # sent before the warm-up started
    STARTED = "started"  # a start (config or event) on a day without sending
    RESUMED = "resumed"  # a resume event on a day without sending
    RESET = "reset"  # a reset event on a day without sending


class WarmupStatus(StrEnum):
    """Where an IP stands on a day."""

    NOT_STARTED = "not_started"  # before its start date: cap 0, it should not send yet
    WARMING = "warming"
    HELD = "held"  # manual hold in force
    WARM = "warm"  # cap has reached target_daily, or no warm-up setting (cap None)
    SCHEDULE_END = "schedule_end"  # schedule ran out below target_daily; its last cap holds


@dataclass(frozen=True)
class PastDay:
    """One past day that mattered: a sending day, a block, or a manual event.

    `stage` and `cap` are those in force that day (0 before the warm-up started).
    """

    day: date
    stage: int
    cap: int
    sent: int
    outcome: DayOutcome
    why: str


@dataclass(frozen=True)
class PlannedDay:
    """One upcoming sending day, assuming every day before it sends its full cap cleanly."""

    day: date
    stage: int
    cap: int
    provider_caps: Mapping[str, int]


@dataclass(frozen=True)
class WarmupState:
    """Where an IP stands on `day`.

    `stage` is 1-based while on the ramp and 0 when there is no ramp (no setting, or not
    started). `cap_today` is None when the IP is unmanaged (warm, unlimited). `sending_days`
    counts sending days since the ramp last (re)started. `warm_since` is the first day whose
    cap reached target_daily in the current run.
    """

    day: date
    status: WarmupStatus
    stage: int
    stages: int
    cap_today: int | None
    sending_days: int
    last_sending_day: date | None
    schedule_name: str | None
    warm_since: date | None
    why: str

    @property
    def is_warm(self) -> bool:
        return self.status is WarmupStatus.WARM


@dataclass(frozen=True)
class WarmupPlan:
    """`warmup plan` for one IP: the past replay, today's state and the next sending days."""

    state: WarmupState
    past: tuple[PastDay, ...]
    upcoming: tuple[PlannedDay, ...]
    target_reached_on: date | None  # past (warm_since) or projected; None if not reachable
    sent_today: int = 0  # what the IP has sent so far on `state.day` (all providers)


# --- the replay ------------------------------------------------------------------------------


def _merge_history(history: Iterable[DayRecord]) -> dict[date, DayRecord]:
    by_day: dict[date, DayRecord] = {}
    for record in history:
        seen = by_day.get(record.day)
        if seen is None:
            by_day[record.day] = record
            continue
        providers = dict(seen.by_provider)
        for provider, sent in record.by_provider.items():
            providers[provider] = providers.get(provider, 0) + sent
        by_day[record.day] = DayRecord(
            day=record.day,
            sent=seen.sent + record.sent,
            deferred=seen.deferred + record.deferred,
            bounced=seen.bounced + record.bounced,
            complained=seen.complained + record.complained,
            throttles=seen.throttles + record.throttles,
            blocks=seen.blocks + record.blocks,
            by_provider=providers,
        )
    return by_day


def _bad_signals(record: DayRecord, thresholds: WarmupThresholds) -> list[str]:
    """Why a day holds the stage (empty when clean). Blocks are judged separately."""
    reasons: list[str] = []
    if record.throttles > thresholds.max_throttles:
        reasons.append(f"throttle replies: {record.throttles:,}")
    attempted = record.sent + record.deferred
    if attempted and Fraction(record.deferred, attempted) > exact_fraction(
        thresholds.max_deferral_share
    ):
        reasons.append(f"deferral share {record.deferred / attempted:.1%}")
    if record.sent and Fraction(record.bounced, record.sent) > exact_fraction(
        thresholds.max_bounce_rate
    ):
        reasons.append(f"bounce rate {record.bounced / record.sent:.2%}")
    if record.sent and Fraction(record.complained, record.sent) > exact_fraction(
        thresholds.max_complaint_rate
    ):
        reasons.append(f"complaint rate {record.complained / record.sent:.3%}")
    return reasons


_EVENT_OUTCOME = {
    WarmupEventKind.START: DayOutcome.STARTED,
    WarmupEventKind.HOLD: DayOutcome.PAUSED,
    WarmupEventKind.RESUME: DayOutcome.RESUMED,
    WarmupEventKind.RESET: DayOutcome.RESET,
}


class _Replay:
    """The ramp as a small state machine: open a day (events, idle check), then close it."""

    def __init__(
        self, setting: WarmupSetting, events: Iterable[WarmupEvent], record_past: bool = True
    ):
        self.setting = setting
        # Stable sort: same-day events keep the order they were given (the order they happened).
        self.events = sorted(events, key=lambda event: event.day)
        self.next_event = 0
        self.record_past = record_past
        self.past: list[PastDay] = []
        self.started = False
        self.schedule_name: str | None = None
        self.ramp: tuple[int, ...] = ()
        self.stage = 0
        self.held = False
        self.sending_days = 0
        self.last_sending_day: date | None = None
        self.run_last_sending_day: date | None = None  # for the idle reset; None after a restart
        self.warm_since: date | None = None
        self.why = "not started"

    # -- queries

    @property
    def cap(self) -> int:
        return self.ramp[self.stage - 1] if self.started else 0

    @property
    def at_target(self) -> bool:
        return (
            self.started
            and self.stage == len(self.ramp)
            and self.ramp[-1] == self.setting.target_daily
        )

    @property
    def pending_events(self) -> bool:
        return self.next_event < len(self.events)

    def next_start_after(self, day: date) -> date | None:
        """The next day something can start the ramp (config start or a start event)."""
        candidates = [
            e.day for e in self.events[self.next_event :] if e.kind is WarmupEventKind.START
        ]
        if not self.started and self.setting.start > day:
            candidates.append(self.setting.start)
        later = [d for d in candidates if d > day]
        return min(later) if later else None

    # -- transitions

    def _restart(self, day: date, preset: str | None) -> None:
        self.started = True
        if preset is not None:
            self.schedule_name = preset
            self.ramp = self.setting.ramp(preset)
        elif self.schedule_name is None:
            self.schedule_name = self.setting.name
            self.ramp = self.setting.ramp()
        self.stage = 1
        self.sending_days = 0
        self.run_last_sending_day = None
        self.warm_since = day if self.at_target else None

    def open_day(self, day: date) -> list[tuple[DayOutcome, str]]:
        """Apply what happens at the start of `day`: config start, idle reset, events."""
        notes: list[tuple[DayOutcome, str]] = []
        if not self.started and self.setting.start <= day:
            # The configured start applies only if no start event began the ramp earlier.
            self._restart(self.setting.start, None)
            notes.append((DayOutcome.STARTED, f"started {self.schedule_name} at stage 1"))
        if self.started and self.run_last_sending_day is not None:
            idle = (day - self.run_last_sending_day).days - 1
            if idle >= self.setting.idle_reset_days:
                self.run_last_sending_day = None
                if self.stage > 1 or self.sending_days:
                    self.stage, self.sending_days = 1, 0
                    self.warm_since = day if self.at_target else None
                    notes.append(
                        (DayOutcome.RESET, f"{idle} days without sending: back to stage 1")
                    )
        while self.pending_events and self.events[self.next_event].day <= day:
            event = self.events[self.next_event]
            self.next_event += 1
            notes.append(self._apply(event, day))
        if notes:
            self.why = notes[-1][1]
        return notes

    def _apply(self, event: WarmupEvent, day: date) -> tuple[DayOutcome, str]:
        outcome = _EVENT_OUTCOME[event.kind]
        if event.kind is WarmupEventKind.START:
            self.held = False
            self._restart(day, event.preset)
            return outcome, f"start event: {self.schedule_name} from stage 1"
        if event.kind is WarmupEventKind.HOLD:
            self.held = True
            return outcome, "hold event: stage frozen until resume"
        if event.kind is WarmupEventKind.RESUME:
            self.held = False
            return outcome, "resume event: hold lifted"
        # RESET
        self.held = False
        if not self.started:
            return outcome, "reset event before the start: nothing to reset"
        self.stage, self.sending_days, self.run_last_sending_day = 1, 0, None
        self.warm_since = day if self.at_target else None
        return outcome, "reset event: back to stage 1"

    def close_day(
        self, day: date, record: DayRecord | None, notes: list[tuple[DayOutcome, str]]
    ) -> None:
        """Apply what `day`'s sending did to the next sending day's stage."""
        texts = [text for _, text in notes]
        sent = record.sent if record is not None else 0
        if not self.started:
            if sent:
                why = "; ".join([*texts, "sent before the warm-up start: not counted"])
                self._remember(day, 0, 0, sent, DayOutcome.NOT_COUNTED, why)
            elif notes:
                self._remember(day, 0, 0, 0, notes[-1][0], "; ".join(texts))
            return
        stage, cap = self.stage, self.cap
        thresholds = self.setting.thresholds
        if record is not None and record.blocks > thresholds.max_blocks:
            # Blocks step back even on a day that got nothing through: that is when they matter.
            self.stage = max(1, self.stage - 1)
            outcome = DayOutcome.STEPPED_BACK
            reason = f"block replies: {record.blocks:,}: stage {self.stage} next"
        elif record is None or not sent:
            if notes:
                self._remember(day, stage, cap, 0, notes[-1][0], "; ".join(texts))
            return
        elif reasons := _bad_signals(record, thresholds):
            outcome = DayOutcome.HELD
            reason = "; ".join(reasons) + f": stage {stage} repeats"
        elif self.held:
            outcome = DayOutcome.PAUSED
            reason = f"manual hold: stage {stage} repeats"
        elif self.stage >= len(self.ramp):
            outcome = DayOutcome.COMPLETE
            reason = "clean day at the last stage"
        else:
            self.stage += 1
            outcome = DayOutcome.ADVANCED
            reason = f"clean day: stage {self.stage} next"
        if sent:
            self.sending_days += 1
            self.last_sending_day = day
            self.run_last_sending_day = day
            if sent > cap:
                texts.append(f"sent {sent:,} over the cap of {cap:,}")
        if self.at_target:
            if self.warm_since is None:
                self.warm_since = day + timedelta(days=1)
        else:
            self.warm_since = None
        texts.append(reason)
        self.why = f"{day}: {reason}"
        self._remember(day, stage, cap, sent, outcome, "; ".join(texts))

    def _remember(
        self, day: date, stage: int, cap: int, sent: int, outcome: DayOutcome, why: str
    ) -> None:
        if self.record_past:
            self.past.append(PastDay(day, stage, cap, sent, outcome, why))

    def state(self, day: date) -> WarmupState:
        why = self.why
        if not self.started:
            status = WarmupStatus.NOT_STARTED
            start = self.next_start_after(day)
            why = f"starts on {start}" if start is not None else "no start date ahead"
        elif self.held:
            status = WarmupStatus.HELD
        elif self.at_target:
            status = WarmupStatus.WARM
        elif self.stage == len(self.ramp):
            status = WarmupStatus.SCHEDULE_END
        else:
            status = WarmupStatus.WARMING
        return WarmupState(
            day=day,
            status=status,
            stage=self.stage,
            stages=len(self.ramp),
            cap_today=self.cap,
            sending_days=self.sending_days,
            last_sending_day=self.last_sending_day,
            schedule_name=self.schedule_name,
            warm_since=self.warm_since if self.at_target else None,
            why=why,
        )


def _replay_until(
    setting: WarmupSetting,
    history: Iterable[DayRecord],
    events: Iterable[WarmupEvent],
    today: date,
) -> _Replay:
    """Replay every day before `today`, then open `today` (its events apply, its sends don't)."""
    replay = _Replay(setting, events)
    by_day = _merge_history(history)
    days = {d for d in by_day if d < today}
    days.update(e.day for e in replay.events if e.day < today)
    if setting.start < today:
        days.add(setting.start)
    for day in sorted(days):
        notes = replay.open_day(day)
        replay.close_day(day, by_day.get(day), notes)
    replay.open_day(today)
    return replay


def _unmanaged_state(today: date) -> WarmupState:
    return WarmupState(
        day=today,
        status=WarmupStatus.WARM,
        stage=0,
        stages=0,
        cap_today=None,
        sending_days=0,
        last_sending_day=None,
        schedule_name=None,
        warm_since=None,
        why="no warm-up setting: warm, no cap",
    )


def state_on(
    setting: WarmupSetting | None,
    history: Iterable[DayRecord],
    events: Iterable[WarmupEvent],
    today: date,
) -> WarmupState:
    """Where the IP stands on `today`: stage and cap from history strictly before today."""
    if setting is None:
        return _unmanaged_state(today)
    return _replay_until(setting, history, events, today).state(today)


def plan(
    setting: WarmupSetting | None,
    history: Iterable[DayRecord],
    events: Iterable[WarmupEvent],
    today: date,
    days: int = 14,
) -> WarmupPlan:
    """The past replay, today's state, the next `days` sending days and the target date.

    The projection assumes every day from today on is a sending day that sends its full cap
    with clean signals; recorded future events (a dated start, a resume) are honoured. While a
    manual hold lasts with no resume ahead, the target date is None.
    """
    if days < 0:
        raise ValueError(f"days must not be negative, got {days}")
    if setting is None:
        return WarmupPlan(_unmanaged_state(today), (), (), None)
    replay = _replay_until(setting, history, events, today)
    state = replay.state(today)
    past = tuple(replay.past)
    replay.record_past = False

    upcoming: list[PlannedDay] = []
    target_on = replay.warm_since if replay.at_target else None
    day = today
    while True:
        if replay.started:
            if replay.at_target and target_on is None:
                target_on = day
            if len(upcoming) < days:
                upcoming.append(
                    PlannedDay(day, replay.stage, replay.cap, provider_caps(setting, replay.cap))
                )
            replay.close_day(day, DayRecord(day, sent=replay.cap), [])
        unreachable = not replay.pending_events and (
            replay.held or (replay.started and replay.ramp[-1] < setting.target_daily)
        )
        if len(upcoming) >= days and (target_on is not None or unreachable):
            break
        if replay.started:
            day += timedelta(days=1)
        else:
            next_start = replay.next_start_after(day)
            if next_start is None:
                break  # never starts (only possible with no pending start at all)
            day = next_start
        replay.open_day(day)
    return WarmupPlan(state, past, tuple(upcoming), target_on)


# --- per-provider caps -----------------------------------------------------------------------


def provider_cap(setting: WarmupSetting | None, day_cap: int | None, provider: str) -> int | None:
    """The provider's share of the day's cap: min(day cap, absolute cap, floor(share * cap)).

    None when there is no cap (unmanaged IP). A provider without a cap or share may take the
    whole day's cap.
    """
    if setting is None or day_cap is None:
        return None
    key = provider.lower()
    limit = day_cap
    if key in setting.provider_caps:
        limit = min(limit, setting.provider_caps[key])
    if key in setting.provider_shares:
        limit = min(limit, math.floor(day_cap * exact_fraction(setting.provider_shares[key])))
    return limit


def provider_caps(setting: WarmupSetting | None, day_cap: int | None) -> Mapping[str, int]:
    """The caps of every provider the setting names (empty when there is no cap)."""
    if setting is None or day_cap is None:
        return MappingProxyType({})
    names = sorted({*setting.provider_caps, *setting.provider_shares})
    caps: dict[str, int] = {}
    for name in names:
        cap = provider_cap(setting, day_cap, name)
        assert cap is not None
        caps[name] = cap
    return MappingProxyType(caps)


# --- the sending window ----------------------------------------------------------------------


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def local_day(setting: WarmupSetting | None, now: datetime) -> date:
    """The IP's calendar day at `now` (its zone; UTC without a setting): the day caps are for."""
    _require_aware(now)
    zone = setting.zone if setting is not None else UTC
    return now.astimezone(zone).date()


def window_bounds(setting: WarmupSetting, day: date) -> tuple[datetime, datetime]:
    """When the window opens and closes on the IP's local `day`, as UTC datetimes.

    UTC because aware datetimes that share a zone compare and subtract by wall clock, which is
    wrong across a DST change; convert with `.astimezone(setting.zone)` only to display. An hour
    that does not exist that day (spring-forward gap) resolves to the instant the clocks jump;
    an ambiguous hour (fall-back) to its first occurrence.
    """
    zone = setting.zone
    opens = datetime.combine(day, time(setting.window_start_hour), tzinfo=zone)
    if setting.window_end_hour == 24:
        closes = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    else:
        closes = datetime.combine(day, time(setting.window_end_hour), tzinfo=zone)
    return opens.astimezone(UTC), closes.astimezone(UTC)


_MICROSECOND = timedelta(microseconds=1)
# The burst allowance: one minute's share of the cap (at least one message) may go out ahead
# of the even spread, so the first message need not wait for a whole slice to elapse.
_BURST = timedelta(minutes=1)


def _burst(day_cap: int, span_us: int) -> int:
    return max(1, -(-day_cap * (_BURST // _MICROSECOND) // span_us))


def window_allowance(
    setting: WarmupSetting | None, day_cap: int | None, now: datetime
) -> int | None:
    """How many of the day's cap may have gone out by `now`, spread evenly over the window.

    0 before the window opens, the full cap at and after it closes; inside, the elapsed
    fraction of the (real, DST-aware) window times the cap, plus one minute's share as a burst
    allowance (at least 1), never above the cap. It is monotonic in `now` within the IP's local
    day (`local_day`); a new local day brings a new cap. None when there is no cap; the whole
    cap when there is a cap but no setting (no window).
    """
    _require_aware(now)
    if day_cap is None:
        return None
    if setting is None or day_cap <= 0:
        return max(day_cap, 0)
    opens, closes = window_bounds(setting, local_day(setting, now))
    now = now.astimezone(UTC)
    if now < opens:
        return 0
    if now >= closes:  # also covers a window lost wholly in a spring-forward gap
        return day_cap
    span_us = (closes - opens) // _MICROSECOND
    elapsed_us = (now - opens) // _MICROSECOND
    return min(day_cap, day_cap * elapsed_us // span_us + _burst(day_cap, span_us))


def next_window_open(setting: WarmupSetting | None, now: datetime) -> datetime:
    """When a new day's cap begins (UTC): the next window opening after `now`.

    Before today's window it is today's opening; from the opening on, tomorrow's. Without a
    setting capacity never stops, so it is `now`.
    """
    _require_aware(now)
    now = now.astimezone(UTC)
    if setting is None:
        return now
    day = local_day(setting, now)
    opens, _ = window_bounds(setting, day)
    if now < opens:
        return opens
    return window_bounds(setting, day + timedelta(days=1))[0]


def next_send_time(
    setting: WarmupSetting | None, day_cap: int | None, sent: int, now: datetime
) -> datetime:
    """The earliest moment (UTC) from `now` on when `window_allowance` exceeds `sent`.

    `sent` is what the IP (or lane) already sent on its local day. When the day's cap is used
    up it is the next window opening (tomorrow's cap is the caller's to compute). This is what
    a lane sleeps until instead of polling.
    """
    _require_aware(now)
    now = now.astimezone(UTC)
    if day_cap is None or (setting is None and sent < day_cap):
        return now
    if setting is None:  # a cap but no window: the cap renews at midnight UTC
        return datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)
    if sent >= day_cap:
        return next_window_open(setting, now)
    opens, closes = window_bounds(setting, local_day(setting, now))
    if now >= closes:
        return now
    span_us = (closes - opens) // _MICROSECOND
    if span_us <= 0:  # a window lost wholly in a spring-forward gap: all of it at once
        return closes
    # Smallest elapsed e with day_cap * e // span + burst > sent.
    needed = sent - _burst(day_cap, span_us) + 1
    elapsed_us = 0 if needed <= 0 else -(-needed * span_us // day_cap)
    moment = min(opens + elapsed_us * _MICROSECOND, closes)
    return max(moment, now)
