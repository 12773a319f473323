"""The warm-up model: presets, sending-day replay, signals, events, provider caps, the window."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailctl.reputation.warmup import (
    DayOutcome,
    DayRecord,
    WarmupEvent,
    WarmupEventKind,
    WarmupStatus,
    local_day,
    next_send_time,
    next_window_open,
    plan,
    provider_cap,
    provider_caps,
    state_on,
    window_allowance,
    window_bounds,
)
from mailctl.warmup_schedule import (
    PRESET_NAMES,
    PRESETS,
    WarmupSetting,
    WarmupThresholds,
    linear_schedule,
    ses45_schedule,
)

START = date(2025, 3, 3)
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def setting(**overrides: object) -> WarmupSetting:
    values: dict[str, object] = {"preset": "sendgrid", "start": START, "target_daily": 1_000_000}
    values.update(overrides)
    return WarmupSetting(**values)  # type: ignore[arg-type]


def clean_days(first: date, count: int, sent: int = 10) -> list[DayRecord]:
    return [DayRecord(first + timedelta(days=i), sent=sent) for i in range(count)]


def day(n: int) -> date:
    """The n-th calendar day of the warm-up (1 = START)."""
    return START + timedelta(days=n - 1)


# --- presets ---------------------------------------------------------------------------------


def test_sendgrid_preset_known_days() -> None:
    sendgrid = setting()
    assert sendgrid.schedule()[0] == 50
    assert sendgrid.schedule()[14] == 1_000_000
    assert sendgrid.stage_cap(1) == 50
    assert sendgrid.stage_cap(15) == 1_000_000
    assert sendgrid.stage_cap(99) == 1_000_000  # past the end the last cap holds


def test_sendgrid_day_15_capped_by_target() -> None:
    sendgrid = setting(target_daily=500_000)
    # 600k on day 14 already passes the target, so the ramp ends there at the target.
    assert sendgrid.ramp()[-3:] == (250_000, 400_000, 500_000)
    history = clean_days(START, 14)
    assert state_on(sendgrid, history, [], day(15)).cap_today == 500_000
    assert state_on(sendgrid, history[:13], [], day(14)).cap_today == 500_000


def test_sparkpost_preset_and_its_continuation() -> None:
    sparkpost = setting(preset="sparkpost", target_daily=2_000_000)
    assert sparkpost.stage_cap(1) == 200
    assert sparkpost.stage_cap(15) == 325_000
    assert sparkpost.schedule()[15:] == (400_000, 500_000, 600_000, 750_000, 1_000_000, 1_250_000)
    # The schedule ends below this target: the last value holds and the IP is never "warm".
    state = state_on(sparkpost, clean_days(START, 40), [], day(41))
    assert (state.stage, state.cap_today) == (21, 1_250_000)
    assert state.status is WarmupStatus.SCHEDULE_END


def test_ses45_preset_ramps_geometrically_to_50000_in_45_days() -> None:
    ses = ses45_schedule()
    assert ses == PRESETS["ses45"]
    assert len(ses) == 45
    assert ses[0] == 50
    assert ses[44] == 50_000
    assert all(a < b for a, b in zip(ses, ses[1:], strict=False))
    # Roughly geometric: every step is about 17%.
    assert all(1.12 < b / a < 1.22 for a, b in zip(ses, ses[1:], strict=False))
    state = state_on(
        setting(preset="ses45", target_daily=50_000), clean_days(START, 44), [], day(45)
    )
    assert (state.stage, state.cap_today, state.status) == (45, 50_000, WarmupStatus.WARM)


def test_linear_preset_defaults_and_parameters() -> None:
    linear = setting(preset="linear", target_daily=10_000)
    assert linear.schedule() == linear_schedule(50, 10_000, 30)
    assert len(linear.schedule()) == 30
    assert linear.schedule()[0] == 50
    assert linear.schedule()[-1] == 10_000
    custom = setting(preset="linear", target_daily=1_000, start_volume=100, linear_days=10)
    assert custom.schedule() == (100, 200, 300, 400, 500, 600, 700, 800, 900, 1_000)


def test_explicit_volumes_are_capped_at_the_target() -> None:
    custom = setting(preset=None, volumes=[10, 20, 40], target_daily=30)
    assert custom.schedule() == (10, 20, 40)
    assert custom.ramp() == (10, 20, 30)
    assert custom.name == "custom"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preset": "mailchimp"}, "unknown warm-up preset 'mailchimp'"),
        ({"preset": None}, "exactly one of preset or volumes"),
        ({"volumes": (1, 2)}, "exactly one of preset or volumes"),
        ({"preset": None, "volumes": ()}, "must not be empty"),
        ({"preset": None, "volumes": (10, 5)}, "must not decrease"),
        ({"preset": None, "volumes": (10, 0)}, "positive integer"),
        ({"target_daily": 0}, "target_daily"),
        ({"timezone": "Mars/Olympus"}, "unknown warm-up time zone"),
        ({"window_start_hour": 20, "window_end_hour": 8}, "window"),
        ({"window_end_hour": 25}, "window"),
        ({"provider_shares": {"google": 1.5}}, "share for 'google'"),
        ({"provider_caps": {"google": -1}}, "cap for 'google'"),
        ({"idle_reset_days": 0}, "idle_reset_days"),
        ({"linear_days": 1}, "linear_days"),
    ],
)
def test_invalid_settings_raise_clear_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setting(**overrides)


def test_invalid_thresholds_and_events() -> None:
    with pytest.raises(ValueError, match="max_bounce_rate"):
        WarmupThresholds(max_bounce_rate=2)
    with pytest.raises(ValueError, match="unknown warm-up preset"):
        WarmupEvent(START, WarmupEventKind.START, preset="nope")
    with pytest.raises(ValueError, match="only a start event"):
        WarmupEvent(START, WarmupEventKind.HOLD, preset="sendgrid")
    assert WarmupEvent(START, "hold").kind is WarmupEventKind.HOLD  # type: ignore[arg-type]
    assert set(PRESET_NAMES) == {"sendgrid", "sparkpost", "ses45", "linear"}


# --- sending days and idle resets ------------------------------------------------------------


def test_stages_count_sending_days_not_calendar_days() -> None:
    history = [
        DayRecord(day(1), sent=40),
        DayRecord(day(4), sent=90),  # two idle days in between do not advance the stage
        DayRecord(day(5), sent=0, deferred=3),  # sent == 0: not a sending day
        DayRecord(day(9), sent=300),
    ]
    state = state_on(setting(), history, [], day(12))
    assert state.stage == 4
    assert state.cap_today == 1_000
    assert state.sending_days == 3
    assert state.last_sending_day == day(9)


def test_first_day_and_before_start() -> None:
    sendgrid = setting()
    before = state_on(sendgrid, [], [], START - timedelta(days=1))
    assert (before.status, before.stage, before.cap_today) == (WarmupStatus.NOT_STARTED, 0, 0)
    assert "starts on 2025-03-03" in before.why
    first = state_on(sendgrid, [], [], START)
    assert (first.status, first.stage, first.cap_today) == (WarmupStatus.WARMING, 1, 50)


def test_days_before_start_do_not_count() -> None:
    history = clean_days(START - timedelta(days=5), 5, sent=1_000) + [DayRecord(day(1), sent=50)]
    result = plan(setting(), history, [], day(2))
    assert result.state.stage == 2
    assert [p.outcome for p in result.past[:5]] == [DayOutcome.NOT_COUNTED] * 5
    assert result.past[5].outcome is DayOutcome.ADVANCED


def test_today_depends_only_on_days_before_it() -> None:
    yesterday = [DayRecord(day(1), sent=50)]
    blocked_today = yesterday + [DayRecord(day(2), sent=100, blocks=9)]
    assert state_on(setting(), blocked_today, [], day(2)) == state_on(
        setting(), yesterday, [], day(2)
    )


def test_duplicate_day_records_are_summed() -> None:
    per_provider = [
        DayRecord(day(1), sent=900, bounced=10, by_provider={"google": 900}),
        DayRecord(day(1), sent=100, bounced=11, by_provider={"yahoo": 100}),
    ]
    # 21 / 1000 = 2.1% > 2%: only the sum crosses the threshold.
    result = plan(setting(), per_provider, [], day(2))
    assert result.past[0].outcome is DayOutcome.HELD
    assert result.past[0].sent == 1_000


@pytest.mark.parametrize(
    ("idle_days", "stage", "sending_days", "why"),
    [
        (29, 4, 3, "clean day: stage 4 next"),
        (30, 1, 0, "30 days without sending: back to stage 1"),
        (45, 1, 0, "45 days without sending: back to stage 1"),
    ],
)
def test_ramp_restarts_at_stage_1_after_30_idle_days(
    idle_days: int, stage: int, sending_days: int, why: str
) -> None:
    history = clean_days(START, 3)
    today = day(3) + timedelta(days=idle_days + 1)
    state = state_on(setting(), history, [], today)
    assert state.stage == stage
    assert state.sending_days == sending_days
    assert why in state.why


def test_idle_reset_then_ramp_again_and_configurable() -> None:
    history = clean_days(START, 3) + [DayRecord(day(3) + timedelta(days=31), sent=50)]
    result = plan(setting(), history, [], day(3) + timedelta(days=32))
    assert result.state.stage == 2
    assert result.past[-1].stage == 1
    assert "30 days without sending" in result.past[-1].why
    short = setting(idle_reset_days=5)
    assert state_on(short, clean_days(START, 3), [], day(3) + timedelta(days=6)).stage == 1
    assert state_on(short, clean_days(START, 3), [], day(3) + timedelta(days=5)).stage == 4


# --- signals ---------------------------------------------------------------------------------


def outcome_of(record: DayRecord, thresholds: WarmupThresholds | None = None) -> DayOutcome:
    sendgrid = setting(thresholds=thresholds or WarmupThresholds())
    result = plan(sendgrid, [record], [], record.day + timedelta(days=1))
    return result.past[-1].outcome


@pytest.mark.parametrize(
    ("at_threshold", "above_threshold"),
    [
        # deferral share = deferred / (sent + deferred): 50/1000 = 5% vs 51/1000 = 5.1%
        (DayRecord(START, sent=950, deferred=50), DayRecord(START, sent=949, deferred=51)),
        # bounce rate 2% of sent
        (DayRecord(START, sent=1000, bounced=20), DayRecord(START, sent=1000, bounced=21)),
        # complaint rate 0.1% of sent
        (DayRecord(START, sent=1000, complained=1), DayRecord(START, sent=1000, complained=2)),
        (DayRecord(START, sent=3000, complained=3), DayRecord(START, sent=2999, complained=3)),
        # throttles: any throttle reply holds
        (DayRecord(START, sent=1000, throttles=0), DayRecord(START, sent=1000, throttles=1)),
    ],
)
def test_signals_hold_above_their_threshold(
    at_threshold: DayRecord, above_threshold: DayRecord
) -> None:
    # "above 5%" / "over 2%": exactly at the threshold still advances, one more message holds.
    assert outcome_of(at_threshold) is DayOutcome.ADVANCED
    assert outcome_of(above_threshold) is DayOutcome.HELD


def test_held_stage_repeats_on_next_sending_day() -> None:
    history = [
        DayRecord(day(1), sent=50),
        DayRecord(day(2), sent=100, throttles=2),
        DayRecord(day(3), sent=100),
    ]
    result = plan(setting(), history, [], day(4))
    assert [(p.stage, p.outcome) for p in result.past] == [
        (1, DayOutcome.ADVANCED),
        (2, DayOutcome.HELD),
        (2, DayOutcome.ADVANCED),
    ]
    assert "throttle replies: 2" in result.past[1].why
    assert result.state.stage == 3


def test_thresholds_are_configurable() -> None:
    lenient = WarmupThresholds(max_bounce_rate=0.05, max_throttles=2)
    assert outcome_of(DayRecord(START, sent=100, bounced=4, throttles=2), lenient) is (
        DayOutcome.ADVANCED
    )
    assert outcome_of(DayRecord(START, sent=100, bounced=6), lenient) is DayOutcome.HELD


def test_blocks_step_back_one_stage_never_below_one() -> None:
    history = clean_days(START, 4) + [DayRecord(day(5), sent=100, blocks=1)]
    result = plan(setting(), history, [], day(6))
    assert result.past[-1].outcome is DayOutcome.STEPPED_BACK
    assert result.past[-1].stage == 5
    assert result.state.stage == 4
    at_one = [DayRecord(day(1), sent=50, blocks=3), DayRecord(day(2), sent=50, blocks=3)]
    assert state_on(setting(), at_one, [], day(3)).stage == 1
    # Blocks beat other signals: step back, not just hold.
    worst = clean_days(START, 3) + [DayRecord(day(4), sent=10, bounced=9, throttles=5, blocks=1)]
    assert state_on(setting(), worst, [], day(5)).stage == 3


def test_blocks_step_back_even_when_nothing_got_through() -> None:
    history = clean_days(START, 4) + [DayRecord(day(5), sent=0, deferred=500, blocks=2)]
    state = state_on(setting(), history, [], day(6))
    assert state.stage == 4
    assert state.sending_days == 4  # not a sending day


def test_a_block_steps_a_warm_ip_back_a_stage() -> None:
    small = setting(preset=None, volumes=(10, 20, 40), target_daily=40)
    history = clean_days(START, 3)
    assert state_on(small, history, [], day(4)).status is WarmupStatus.WARM
    assert state_on(small, history, [], day(4)).warm_since == day(3)
    history.append(DayRecord(day(4), sent=40, blocks=1))
    stepped = state_on(small, history, [], day(5))
    assert (stepped.status, stepped.stage, stepped.cap_today) == (WarmupStatus.WARMING, 2, 20)


# --- manual events ---------------------------------------------------------------------------


def test_hold_freezes_until_resume() -> None:
    history = clean_days(START, 6)
    events = [
        WarmupEvent(day(3), WarmupEventKind.HOLD),
        WarmupEvent(day(5), WarmupEventKind.RESUME),
    ]
    result = plan(setting(), history, events, day(7))
    assert [p.stage for p in result.past] == [1, 2, 3, 3, 3, 4]
    assert [p.outcome for p in result.past][2:4] == [DayOutcome.PAUSED, DayOutcome.PAUSED]
    assert result.state.stage == 5
    held = state_on(setting(), history, events[:1], day(7))
    assert (held.status, held.stage) == (WarmupStatus.HELD, 3)


def test_hold_does_not_stop_a_step_back() -> None:
    history = clean_days(START, 3) + [DayRecord(day(4), sent=10, blocks=1)]
    events = [WarmupEvent(day(2), WarmupEventKind.HOLD)]
    assert state_on(setting(), history, events, day(5)).stage == 1


def test_reset_event_restarts_at_stage_one_and_today_counts() -> None:
    history = clean_days(START, 5)
    reset_today = [WarmupEvent(day(6), WarmupEventKind.RESET)]
    state = state_on(setting(), history, reset_today, day(6))
    assert (state.stage, state.cap_today, state.sending_days) == (1, 50, 0)
    assert "reset" in state.why
    # Events after today have not happened yet.
    assert state_on(setting(), history, reset_today, day(5)).stage == 5


def test_reset_event_ends_a_hold() -> None:
    history = clean_days(START, 4)
    events = [WarmupEvent(day(2), WarmupEventKind.HOLD), WarmupEvent(day(3), WarmupEventKind.RESET)]
    assert state_on(setting(), history, events, day(5)).stage == 3


def test_start_event_switches_preset_and_date() -> None:
    history = clean_days(START, 8)
    events = [WarmupEvent(day(6), WarmupEventKind.START, preset="sparkpost")]
    result = plan(setting(), history, events, day(9))
    assert result.state.schedule_name == "sparkpost"
    assert (result.state.stage, result.state.cap_today) == (4, 2_000)
    assert result.past[5].why.startswith("start event: sparkpost")


def test_start_event_before_configured_start_wins() -> None:
    later = setting(start=day(10))
    events = [WarmupEvent(day(1), WarmupEventKind.START)]
    # The configured start does not restart a ramp an event already began.
    assert state_on(later, clean_days(START, 12), events, day(13)).stage == 13
    assert state_on(later, clean_days(START, 12), [], day(13)).stage == 4


def test_start_event_ends_a_hold_and_same_day_events_apply_in_order() -> None:
    history = clean_days(START, 4)
    events = [
        WarmupEvent(day(2), WarmupEventKind.HOLD),
        WarmupEvent(day(3), WarmupEventKind.START),
        WarmupEvent(day(3), WarmupEventKind.HOLD),
    ]
    state = state_on(setting(), history, events, day(5))
    assert (state.status, state.stage) == (WarmupStatus.HELD, 1)
    reordered = [events[0], events[2], events[1]]
    assert state_on(setting(), history, reordered, day(5)).stage == 3


def test_events_are_recorded_in_the_past_even_without_sending() -> None:
    events = [
        WarmupEvent(day(2), WarmupEventKind.HOLD),
        WarmupEvent(day(4), WarmupEventKind.RESUME),
    ]
    result = plan(setting(), [DayRecord(day(1), sent=50)], events, day(5))
    assert [(p.day, p.outcome) for p in result.past] == [
        (day(1), DayOutcome.ADVANCED),
        (day(2), DayOutcome.PAUSED),
        (day(4), DayOutcome.RESUMED),
    ]


# --- plan ------------------------------------------------------------------------------------


def test_plan_projects_upcoming_sending_days_and_target_date() -> None:
    result = plan(setting(target_daily=100_000), clean_days(START, 3), [], day(4))
    assert [p.stage for p in result.upcoming] == [4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 10, 10, 10, 10]
    assert result.upcoming[0].day == day(4)
    assert result.upcoming[0].cap == 1_000
    assert result.target_reached_on == day(10)
    short = plan(setting(target_daily=100_000), clean_days(START, 3), [], day(4), days=2)
    assert len(short.upcoming) == 2
    assert short.target_reached_on == day(10)  # projected beyond the listed days


def test_plan_before_start_and_with_hold() -> None:
    ahead = plan(setting(), [], [], START - timedelta(days=10), days=3)
    assert [p.day for p in ahead.upcoming] == [day(1), day(2), day(3)]
    assert ahead.target_reached_on == day(15)
    events = [WarmupEvent(day(2), WarmupEventKind.HOLD)]
    held = plan(setting(), clean_days(START, 3), events, day(4), days=5)
    assert {p.stage for p in held.upcoming} == {2}
    assert held.target_reached_on is None
    events.append(WarmupEvent(day(8), WarmupEventKind.RESUME))
    resumed = plan(setting(), clean_days(START, 3), events, day(4), days=6)
    assert [p.stage for p in resumed.upcoming] == [2, 2, 2, 2, 2, 3]
    assert resumed.target_reached_on == day(21)


def test_plan_when_already_warm_and_when_target_unreachable() -> None:
    warm = plan(setting(target_daily=500), clean_days(START, 5), [], day(6), days=2)
    assert warm.state.status is WarmupStatus.WARM
    assert warm.target_reached_on == day(3)
    assert [p.cap for p in warm.upcoming] == [500, 500]
    short = setting(preset=None, volumes=(10, 20), target_daily=100)
    assert plan(short, [], [], START).target_reached_on is None


def test_unmanaged_ip_is_warm_and_unlimited() -> None:
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    state = state_on(None, [DayRecord(START, sent=5)], [], START)
    assert (state.status, state.cap_today, state.is_warm) == (WarmupStatus.WARM, None, True)
    result = plan(None, [], [], START)
    assert (result.upcoming, result.target_reached_on) == ((), None)
    assert provider_cap(None, None, "google") is None
    assert window_allowance(None, None, now) is None
    assert next_window_open(None, now) == now
    assert next_send_time(None, None, 10**9, now) == now


# --- per-provider caps -----------------------------------------------------------------------


def test_provider_caps_and_shares_split_the_days_cap() -> None:
    split = setting(
        provider_caps={"Microsoft": 300}, provider_shares={"google": 0.4, "yahoo": 0.29}
    )
    assert provider_cap(split, 1_000, "google") == 400
    assert provider_cap(split, 1_000, "GOOGLE") == 400
    assert provider_cap(split, 100, "yahoo") == 29  # exact decimal: not 28 from float error
    assert provider_cap(split, 1_000, "microsoft") == 300
    assert provider_cap(split, 200, "microsoft") == 200  # never above the day's cap
    assert provider_cap(split, 1_000, "other") == 1_000
    assert provider_cap(split, None, "google") is None
    assert dict(provider_caps(split, 1_000)) == {"google": 400, "microsoft": 300, "yahoo": 290}
    both = setting(provider_caps={"google": 100}, provider_shares={"google": 0.5})
    assert provider_cap(both, 1_000, "google") == 100
    assert provider_cap(both, 150, "google") == 75


def test_plan_lists_each_upcoming_days_provider_caps() -> None:
    split = setting(provider_shares={"google": 0.4})
    result = plan(split, [], [], START, days=2)
    assert [dict(p.provider_caps) for p in result.upcoming] == [{"google": 20}, {"google": 40}]


# --- the sending window ----------------------------------------------------------------------


def test_window_spreads_the_cap_evenly() -> None:
    office = setting(window_start_hour=8, window_end_hour=20, timezone="Europe/Paris")
    cap = 12_000  # 1,000 an hour; the burst allowance is one minute's share, ~17
    at = lambda h, m=0: datetime(2025, 3, 10, h, m, tzinfo=PARIS)  # noqa: E731
    assert window_allowance(office, cap, at(7, 59)) == 0
    assert window_allowance(office, cap, at(8)) == 17
    assert window_allowance(office, cap, at(9)) == 1_017
    assert window_allowance(office, cap, at(14)) == 6_017
    assert window_allowance(office, cap, at(19, 59)) == cap
    assert window_allowance(office, cap, at(20)) == cap
    assert window_allowance(office, cap, at(23)) == cap
    # `now` may be in any zone: it is read in the IP's zone.
    assert window_allowance(office, cap, datetime(2025, 3, 10, 8, tzinfo=UTC)) == 1_017
    assert window_allowance(office, 0, at(12)) == 0
    assert window_allowance(office, 1, at(8)) == 1


def test_window_spreading_across_dst_changes() -> None:
    paris_day = setting(timezone="Europe/Paris")  # 0-24
    # 2025-03-30: clocks jump 02:00 -> 03:00, the day is 23 hours long.
    opens, closes = window_bounds(paris_day, date(2025, 3, 30))
    assert closes.astimezone(UTC) - opens.astimezone(UTC) == timedelta(hours=23)
    noon = datetime(2025, 3, 30, 12, tzinfo=PARIS)  # 11 real hours after midnight
    assert window_allowance(paris_day, 23_000, noon) == 11_000 + 17
    # 2025-10-26: clocks go back 03:00 -> 02:00, the day is 25 hours long.
    noon = datetime(2025, 10, 26, 12, tzinfo=PARIS)  # 13 real hours after midnight
    assert window_allowance(paris_day, 25_000, noon) == 13_000 + 17
    # Both 02:30s of the fall-back day are distinct instants, and the allowance grows.
    first = datetime(2025, 10, 26, 2, 30, tzinfo=PARIS, fold=0)
    second = datetime(2025, 10, 26, 2, 30, tzinfo=PARIS, fold=1)
    a, b = window_allowance(paris_day, 25_000, first), window_allowance(paris_day, 25_000, second)
    assert a is not None and b is not None and b - a == 1_000


def test_window_in_another_zone_and_next_opening() -> None:
    ny = setting(window_start_hour=9, window_end_hour=17, timezone="America/New_York")
    # 13:00 UTC on 2025-03-10 is 09:00 EDT (DST began on 2025-03-09).
    assert window_allowance(ny, 8_000, datetime(2025, 3, 10, 12, 59, tzinfo=UTC)) == 0
    assert window_allowance(ny, 8_000, datetime(2025, 3, 10, 14, tzinfo=UTC)) == 1_017
    # 02:00 UTC on the 11th is still the 10th in New York, after the window.
    late = datetime(2025, 3, 11, 2, tzinfo=UTC)
    assert local_day(ny, late) == date(2025, 3, 10)
    assert window_allowance(ny, 8_000, late) == 8_000
    assert next_window_open(ny, late) == datetime(2025, 3, 11, 9, tzinfo=NEW_YORK)
    early = datetime(2025, 3, 10, 6, tzinfo=NEW_YORK)
    assert next_window_open(ny, early) == datetime(2025, 3, 10, 9, tzinfo=NEW_YORK)
    inside = datetime(2025, 3, 10, 10, tzinfo=NEW_YORK)
    assert next_window_open(ny, inside) == datetime(2025, 3, 11, 9, tzinfo=NEW_YORK)
    # Across the spring-forward night: the opening is 9:00 local, 13:00 UTC, not 14:00.
    saturday = datetime(2025, 3, 8, 18, tzinfo=NEW_YORK)
    assert next_window_open(ny, saturday).astimezone(UTC) == datetime(2025, 3, 9, 13, tzinfo=UTC)


def test_next_send_time_waits_for_allowance_and_the_window() -> None:
    office = setting(window_start_hour=8, window_end_hour=20, timezone="Europe/Paris")
    cap = 12_000
    nine = datetime(2025, 3, 10, 9, tzinfo=PARIS)
    assert next_send_time(office, cap, 0, nine) == nine  # allowance 1,017 > 0
    later = next_send_time(office, cap, 2_000, nine)
    assert window_allowance(office, cap, later) == 2_001
    assert window_allowance(office, cap, later - timedelta(microseconds=1)) == 2_000
    early = datetime(2025, 3, 10, 6, tzinfo=PARIS)
    assert next_send_time(office, cap, 0, early) == datetime(2025, 3, 10, 8, tzinfo=PARIS)
    assert next_send_time(office, cap, cap, nine) == datetime(2025, 3, 11, 8, tzinfo=PARIS)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_allowance(setting(), 100, datetime(2025, 3, 10, 12))


# --- properties ------------------------------------------------------------------------------

schedules = st.lists(st.integers(1, 5_000), min_size=1, max_size=25).map(
    lambda volumes: tuple(sorted(volumes))
)
records = st.builds(
    DayRecord,
    day=st.integers(-5, 120).map(lambda offset: START + timedelta(days=offset)),
    sent=st.integers(0, 5_000),
    deferred=st.integers(0, 300),
    bounced=st.integers(0, 100),
    complained=st.integers(0, 10),
    throttles=st.integers(0, 2),
    blocks=st.sampled_from([0, 0, 0, 0, 1]),
)
events = st.builds(
    WarmupEvent,
    day=st.integers(-5, 120).map(lambda offset: START + timedelta(days=offset)),
    kind=st.sampled_from(list(WarmupEventKind)),
)


@settings(max_examples=150, deadline=None)
@given(
    volumes=schedules,
    target=st.integers(1, 6_000),
    history=st.lists(records, max_size=40),
    manual=st.lists(events, max_size=4),
    offset=st.integers(-5, 130),
)
def test_replayed_plan_agrees_with_state_on_and_stays_within_caps(
    volumes: tuple[int, ...],
    target: int,
    history: list[DayRecord],
    manual: list[WarmupEvent],
    offset: int,
) -> None:
    custom = setting(preset=None, volumes=volumes, target_daily=target, idle_reset_days=10)
    today = START + timedelta(days=offset)
    result = plan(custom, history, manual, today, days=5)
    assert result.state == state_on(custom, history, manual, today)
    states = [result.state, *(state_on(custom, history, manual, p.day) for p in result.past)]
    for state in states:
        assert state.cap_today is not None and state.cap_today <= target
        if state.status is not WarmupStatus.NOT_STARTED:
            assert 1 <= state.stage <= len(volumes)
            assert state.cap_today == custom.stage_cap(state.stage)
    for past in result.past:
        assert past.cap <= target
        assert 0 <= past.stage <= len(volumes)
    for upcoming in result.upcoming:
        assert 1 <= upcoming.stage <= len(volumes)
        assert upcoming.cap == custom.stage_cap(upcoming.stage) <= target
    assert all(p.day < today for p in result.past)
    # With no holds ahead, a schedule that reaches the target is projected to reach it.
    if (
        volumes[-1] >= target
        and result.state.status is not WarmupStatus.HELD
        and not any(e.kind is WarmupEventKind.HOLD and e.day >= today for e in manual)
    ):
        assert result.target_reached_on is not None


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hours=st.tuples(st.integers(0, 23), st.integers(1, 24)).filter(lambda h: h[0] < h[1]),
    cap=st.integers(0, 2_000_000),
    # Around the 2025 DST changes of Paris, New York and Lord Howe.
    base=st.sampled_from(
        [datetime(2025, 3, 30), datetime(2025, 10, 26), datetime(2025, 3, 9), datetime(2025, 4, 6)]
    ),
    seconds=st.lists(st.integers(-86_400, 2 * 86_400), min_size=2, max_size=6),
    sent=st.integers(0, 2_000_000),
)
def test_window_allowance_is_monotonic_and_bounded(
    zone: str,
    hours: tuple[int, int],
    cap: int,
    base: datetime,
    seconds: list[int],
    sent: int,
) -> None:
    ip = setting(timezone=zone, window_start_hour=hours[0], window_end_hour=hours[1])
    moments = sorted(base.replace(tzinfo=UTC) + timedelta(seconds=s) for s in seconds)
    last: tuple[date, int] | None = None
    for now in moments:
        allowance = window_allowance(ip, cap, now)
        assert allowance is not None and 0 <= allowance <= cap
        today = local_day(ip, now)
        if last is not None and last[0] == today:
            assert allowance >= last[1]
        last = (today, allowance)
        opening = next_window_open(ip, now)
        assert opening > now
        assert opening.tzinfo is UTC
        assert window_allowance(ip, cap, opening - timedelta(microseconds=1)) in (0, cap)
        when = next_send_time(ip, cap, sent, now)
        assert when >= now
        if sent < cap:
            at_when = window_allowance(ip, cap, when)
            assert at_when is not None and at_when > sent
