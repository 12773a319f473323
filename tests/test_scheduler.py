"""Lanes, recovery, pick_ip and the circuit breaker, on an injected clock (no sleeping)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailctl.replies.rules import load_rules
from mailctl.reputation.breaker import BreakerPolicy, BreakerState, check_breaker
from mailctl.reputation.lanes import LaneEventKind, LaneMode, LaneState, RecoveryPolicy
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.sqlite import SqliteStore

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MIN, HOUR = 60.0, 3600.0

GMAIL_4728 = (
    "421 4.7.28 [x.x.x.x] Our system has detected an unusual rate of unsolicited mail "
    "originating from your IP address. To protect our users from spam, mail sent from your IP "
    "address has been temporarily rate limited. Please visit "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
    "Senders Guidelines. - gsmtp"
)
YAHOO_TSS04 = (
    "421 4.7.0 [TSS04] Messages from x.x.x.x temporarily deferred due to unexpected volume or "
    "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
MS_BUSY = "451 4.7.500 Server busy. Please try again later from [x.x.x.x]. (S77719)"
MS_S775 = (
    "451 4.7.650 The mail server [x.x.x.x] has been temporarily rate limited due to IP "
    "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)"
)
YAHOO_TS03 = "421 4.7.1 [TS03] All messages from x.x.x.x will be permanently deferred; Retrying will NOT succeed."  # noqa: E501
UNKNOWN_421 = "421 4.7.0 Try again later, closing connection"


def scheduler(seed: int = 1, **policy: float) -> Scheduler:
    return Scheduler(rng=random.Random(seed), policy=RecoveryPolicy(**policy))


# ------------------------------------------------------------------------ rules acting on lanes


def test_gmail_4728_slows_only_that_lane() -> None:
    sched = scheduler()
    hit = sched.lane("192.0.2.10", "google")
    same_ip_other_provider = sched.lane("192.0.2.10", "yahoo")
    other_ip_same_provider = sched.lane("192.0.2.11", "google")
    full = hit.limits(T0)

    event = hit.on_reply(GMAIL_4728, 421, T0, from_receiver=True)
    assert event.kind is LaneEventKind.SLOWED
    assert event.rule == "google.rate-limited"
    assert event.until == T0 + 10 * MIN + 30 * MIN

    # Google: stop at least 10 minutes ...
    assert hit.admit(T0 + 1) == pytest.approx(10 * MIN - 1)
    assert hit.limits(T0 + 1).connections == 0
    # ... then one connection at about 10 a minute for 30 minutes.
    slowed = hit.limits(T0 + 10 * MIN)
    assert hit.state.mode is LaneMode.SLOWED
    assert (slowed.connections, slowed.per_minute, slowed.burst) == (1, 10, 1)
    assert hit.admit(T0 + 10 * MIN) == 0.0
    assert hit.admit(T0 + 10 * MIN + 1) == pytest.approx(5.0)  # one token per 6 s

    for lane in (same_ip_other_provider, other_ip_same_provider):
        assert lane.admit(T0 + 1) == 0.0
        assert lane.state.mode is LaneMode.NORMAL
    assert other_ip_same_provider.limits(T0 + 1) == full


def test_yahoo_tss04_suspends_two_hours_and_survives_a_new_run(tmp_path: Path) -> None:
    run1 = scheduler()
    lane = run1.lane("192.0.2.10", "yahoo")
    event = lane.on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    assert (event.kind, event.until) == (LaneEventKind.SUSPENDED, T0 + 2 * HOUR)

    with SqliteStore.open(tmp_path / "m.db") as store:
        store.upsert_lanes([state.to_row() for state in run1.changed_states()])
    assert run1.changed_states() == []  # flushed

    # The cron run ten minutes later.
    with SqliteStore.open(tmp_path / "m.db") as store:
        loaded = [LaneState.from_row(row) for row in store.lane_rows()]
    assert loaded == [lane.state]
    run2 = Scheduler(rng=random.Random(2), states=loaded)
    again = run2.lane("192.0.2.10", "yahoo")
    assert again.admit(T0 + 10 * MIN) == pytest.approx(2 * HOUR - 10 * MIN)
    assert run2.snapshot(T0 + 10 * MIN)[0].as_dict()["state"] == "suspended"
    # After two hours it sends again, at a quarter of its earlier rate on one connection.
    assert again.admit(T0 + 2 * HOUR) == 0.0
    limits = again.limits(T0 + 2 * HOUR)
    full = run2.rules.limits_for("yahoo")
    assert limits.per_minute == pytest.approx(full.per_minute * 0.25)  # type: ignore[operator]
    assert limits.connections == 1


def test_synthetic_deferrals_never_trigger_or_extend() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "yahoo")
    before = lane.state
    for text, code in ((YAHOO_TSS04, 421), (UNKNOWN_421, 421), ("lane paused", None)):
        assert lane.on_reply(text, code, T0, from_receiver=False).kind is LaneEventKind.IGNORED
    assert lane.state == before
    lane.on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    paused = lane.state
    # mailctl deferring the queued messages of the paused lane changes nothing.
    for i in range(50):
        lane.on_reply(YAHOO_TSS04, 421, T0 + 60 + i, from_receiver=False)
    assert lane.state == paused
    # Nor do they count towards a trigger.
    busy = sched.lane("192.0.2.10", "microsoft")
    for i in range(5):
        busy.on_reply(MS_BUSY, 451, T0 + i, from_receiver=False)
    assert busy.on_reply(MS_BUSY, 451, T0 + 10, from_receiver=True).kind is LaneEventKind.COUNTED


def test_trigger_needs_n_matches_within_the_window() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "microsoft")  # server busy: 3 within 10 minutes
    # Spread out: never three inside one window.
    for i in range(6):
        event = lane.on_reply(MS_BUSY, 451, T0 + i * 6 * MIN, from_receiver=True)
        assert event.kind is LaneEventKind.COUNTED
    assert lane.state.mode is LaneMode.NORMAL
    # Close together: the third acts.
    start = T0 + HOUR
    assert lane.on_reply(MS_BUSY, 451, start, from_receiver=True).kind is LaneEventKind.COUNTED
    assert lane.on_reply(MS_BUSY, 451, start + 60, from_receiver=True).kind is LaneEventKind.COUNTED
    event = lane.on_reply(MS_BUSY, 451, start + 9 * MIN, from_receiver=True)
    # "50%" is a share of what was observed; the pause is a short probe, not 30 minutes.
    assert event.kind is LaneEventKind.SLOWED and event.until is not None
    assert start + 9 * MIN < event.until <= start + 9 * MIN + 3
    limits = lane.limits(event.until)
    assert limits.connections == 2  # 50% of 5
    # The count restarts after firing, and survives persistence.
    assert lane.on_reply(MS_BUSY, 451, start + 10 * MIN, from_receiver=True).kind is (
        LaneEventKind.COUNTED
    )
    assert LaneState.from_row(lane.state.to_row()).hits == lane.state.hits


def test_same_rule_within_a_minute_extends_but_does_not_compound() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "office365")
    forest = (
        "421 4.3.2 The maximum number of concurrent connections per resource forest has "
        "exceeded a limit, closing transmission channel"
    )
    # Four connections' replies in the same second, then one more after two minutes.
    for i in range(4):
        lane.on_reply(forest, 421, T0 + i * 0.1, from_receiver=True)
    assert lane.limits(T0 + 1).connections == 2  # halved once (5 -> 2), not four times
    # A connection signal: no new connection for a probe pause; the lane itself still sends.
    assert lane.state.mode is LaneMode.NORMAL and lane.limits(T0 + 1).per_minute == 6000
    assert 0 < lane.connect_wait(T0 + 0.3) <= 2.2
    lane.on_reply(forest, 421, T0 + 2 * MIN, from_receiver=True)
    assert lane.limits(T0 + 2 * MIN).connections == 1


def test_s775_then_gradual_recovery() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "microsoft")
    lane.on_reply(MS_S775, 451, T0, from_receiver=True)
    limits = lane.limits(T0)
    assert (limits.connections, limits.per_minute) == (1, 1)
    assert lane.limits(T0 + 89 * MIN).per_minute == 1
    after = lane.limits(T0 + 90 * MIN)
    assert lane.state.mode is LaneMode.NORMAL and lane.state.ramp_factor == 0.25
    # From the 1 a minute that held, growing additively (test_recovery.py), not from a
    # quarter of the ceiling.
    assert after.connections == 1 and after.per_minute == 1
    assert lane.state.learned_rate == 1


def test_ts03_disables_the_ip_for_yahoo_until_resumed() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "yahoo")
    event = lane.on_reply(YAHOO_TS03, 421, T0, from_receiver=True)
    assert event.kind is LaneEventKind.DISABLED and event.alert and event.until is None
    assert math.isinf(lane.admit(T0 + 30 * 86400))
    assert sched.next_wake(T0, busy=[("192.0.2.10", "yahoo")]) is None
    assert sched.pick_ip(["192.0.2.10"], "yahoo", T0) is None
    lane.resume(T0 + HOUR)
    assert lane.admit(T0 + HOUR) == 0.0
    assert lane.state.ramp_factor == 0.25  # even a deliberate resume ramps


def test_stop_campaign_and_recipient_replies_leave_the_lane_alone() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "google")
    before = lane.limits(T0)
    dmarc = "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy."  # noqa: E501
    assert lane.on_reply(dmarc, 550, T0, from_receiver=True).kind is LaneEventKind.STOP_CAMPAIGN
    grey = "451 4.7.1 <x@example.org>: Recipient address rejected: Greylisted for 5 minutes"
    event = lane.on_reply(grey, 451, T0, from_receiver=True)
    assert (event.kind, event.retry_after) == (LaneEventKind.DEFER_RECIPIENT, 300)
    nouser = "550 5.1.1 The email account that you tried to reach does not exist. https://support.google.com/mail/?p=NoSuchUser"  # noqa: E501
    assert lane.on_reply(nouser, 550, T0, from_receiver=True).kind is LaneEventKind.BOUNCE_RECIPIENT
    assert lane.on_reply("250 2.0.0 OK", 250, T0, from_receiver=True).kind is LaneEventKind.NONE
    assert lane.state.mode is LaneMode.NORMAL and lane.limits(T0) == before
    assert lane.state.sent == 1


# ------------------------------------------------------------------------ backoff and recovery


def test_unknown_421_pauses_briefly_doubling_with_jitter_capped_at_ten_minutes() -> None:
    sched = scheduler(seed=7)
    lane = sched.lane("192.0.2.10", "gmx.net")
    now = T0
    delays = []
    for _ in range(10):
        event = lane.on_reply(UNKNOWN_421, 421, now, from_receiver=True)
        assert event.kind is LaneEventKind.BACKOFF and event.rule is None
        assert event.until is not None
        delays.append(event.until - now)
        # Replies of messages already in flight do not escalate the same pause.
        assert lane.on_reply(UNKNOWN_421, 421, now + 1, from_receiver=True).kind is (
            LaneEventKind.IGNORED
        )
        now = event.until + 30  # resumes, and is throttled again within the clean interval
    for level, delay in enumerate(delays):
        nominal = 2 * 2**level  # a probe after 2 s, doubling on repeats
        assert min(600, nominal * 0.9) <= delay <= min(600, nominal * 1.1)
    assert delays[-1] == 600  # capped
    assert len(set(delays[:5])) == 5  # jittered, not fixed
    # A clean interval after resuming resets the pause to its first step.
    later = now + 10 * MIN + 600
    event = lane.on_reply(UNKNOWN_421, 421, later, from_receiver=True)
    assert event.until is not None and 1.8 <= event.until - later <= 2.2


def test_recovery_is_gradual_and_changes_at_most_once_a_minute() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "yahoo")
    full = sched.rules.limits_for("yahoo")
    lane.on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    resume = T0 + 2 * HOUR
    samples = []
    t = resume
    while t < resume + 2 * HOUR:
        limits = lane.limits(t)
        samples.append((t, limits.per_minute, limits.connections))
        t += 7.0
    assert samples[0][1] == pytest.approx(full.per_minute * 0.25)  # type: ignore[operator]
    assert samples[0][2] == 1
    changes = [
        (t, rate, conns)
        for (t, rate, conns), (_, prev_rate, prev_conns) in zip(samples[1:], samples, strict=False)
        if (rate, conns) != (prev_rate, prev_conns)
    ]
    times = [resume] + [t for t, _, _ in changes]
    assert all(b - a >= 60 for a, b in zip(times, times[1:], strict=False))
    rates = [samples[0][1]] + [rate for _, rate, _ in changes]
    conns = [samples[0][2]] + [c for _, _, c in changes]
    for before, after in zip(rates, rates[1:], strict=False):
        assert before < after <= before * 1.25 + 1e-9  # never snaps back
    for before, after in zip(conns, conns[1:], strict=False):
        assert before <= after <= before + 1  # connections one at a time
    assert samples[-1][1:] == (full.per_minute, full.connections)  # recovered in the end
    assert lane.state.ramp_factor is None


def test_throttle_during_recovery_starts_from_the_reduced_pace() -> None:
    sched = scheduler()
    lane = sched.lane("192.0.2.10", "yahoo")
    lane.on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    resume = T0 + 2 * HOUR
    assert lane.limits(resume).per_minute == pytest.approx(1500)
    lane.on_reply(YAHOO_TSS04, 421, resume + 60, from_receiver=True)
    assert lane.limits(resume + 60 + 2 * HOUR).per_minute == pytest.approx(1500 * 0.25)


# ------------------------------------------------------------------------ token bucket


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=600),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=300),
)
def test_token_bucket_never_exceeds_its_rate(
    per_minute: int, burst: int, gaps: list[float]
) -> None:  # noqa: E501
    rules = load_rules({"limits": {"default": {"per_minute": per_minute, "burst": burst}}})
    lane = Scheduler(rules, rng=random.Random(0)).lane("192.0.2.10", "example.net")
    rate = per_minute / 60.0
    capacity = max(1, min(burst, per_minute))
    admitted: list[float] = []
    now = T0
    for gap in gaps:
        now += gap
        wait = lane.admit(now)
        if wait == 0.0:
            admitted.append(now)
        else:
            assert wait > 0
            # The wait it names is enough: a permit is there at that moment.
            assert lane.ready_in(now + wait) == pytest.approx(0.0, abs=1e-6)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            count = j - i + 1
            assert count <= capacity + rate * (admitted[j] - start) + 1e-6


def test_per_hour_limit_applies_too() -> None:
    rules = load_rules({"limits": {"default": {"per_hour": 120, "burst": 5}}})
    lane = Scheduler(rules).lane("192.0.2.10", "example.net")
    sent = sum(1 for i in range(600) if lane.admit(T0 + i) == 0.0)  # ten minutes, 1 try/s
    assert sent <= 5 + 120 * 600 / 3600


# ------------------------------------------------------------------------ pools


def test_pick_ip_spills_over_from_a_cold_ip_and_never_leaves_the_pool() -> None:
    sched = scheduler()
    pool = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    remaining = {"192.0.2.10": 3, "192.0.2.11": None, "192.0.2.12": None}  # .10 is cold

    def capacity(ip: str, provider: str) -> int | None:
        assert ip in pool  # never even asked about another pool's IPs
        return remaining[ip]

    picks = []
    for _ in range(9):
        ip = sched.pick_ip(pool, "google", T0, capacity)
        assert ip in pool
        picks.append(ip)
        if remaining[ip] is not None:
            remaining[ip] -= 1  # type: ignore[operator]
    # The cold IP gets its allowance first, then the warm IPs share the rest.
    assert picks[:3] == ["192.0.2.10"] * 3
    assert picks[3:].count("192.0.2.11") == picks[3:].count("192.0.2.12") == 3


def test_pick_ip_skips_paused_lanes_and_balances_capacity() -> None:
    sched = scheduler()
    pool = ["192.0.2.10", "192.0.2.11"]
    sched.lane("192.0.2.10", "yahoo").on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    assert {sched.pick_ip(pool, "yahoo", T0 + 1) for _ in range(5)} == {"192.0.2.11"}
    # Other providers are not affected by the Yahoo pause.
    assert sched.pick_ip(pool, "google", T0 + 1) == "192.0.2.10"
    sched.lane("192.0.2.11", "yahoo").on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    assert sched.pick_ip(pool, "yahoo", T0 + 1) is None
    assert sched.next_wake(T0 + 1, busy=[(ip, "yahoo") for ip in pool]) == T0 + 2 * HOUR
    # Capped IPs: the one with more left goes first.
    caps = {"192.0.2.10": 5, "192.0.2.11": 50}
    assert sched.pick_ip(pool, "google", T0, lambda ip, _: caps[ip]) == "192.0.2.11"
    assert sched.pick_ip(pool, "google", T0, lambda ip, _: 0) is None


def test_pick_ip_takes_the_preferred_ip_only_while_it_may_send() -> None:
    # A greylisted retry goes back to the IP that was greylisted (the receiver keys on it).
    sched = scheduler()
    pool = ["192.0.2.10", "192.0.2.11"]
    assert [sched.pick_ip(pool, "yahoo", T0, prefer="192.0.2.11") for _ in range(3)] == [
        "192.0.2.11"
    ] * 3
    assert sched.pick_ip(pool, "yahoo", T0, lambda ip, _: 0, prefer="192.0.2.11") is None
    sched.lane("192.0.2.11", "yahoo").on_reply(YAHOO_TSS04, 421, T0, from_receiver=True)
    assert sched.pick_ip(pool, "yahoo", T0 + 1, prefer="192.0.2.11") == "192.0.2.10"
    assert sched.pick_ip(pool, "yahoo", T0 + 1, prefer="192.0.2.99") == "192.0.2.10"


@settings(max_examples=100, deadline=None)
@given(
    pool=st.lists(st.sampled_from([f"10.0.0.{i}" for i in range(8)]), min_size=1, max_size=5),
    caps=st.dictionaries(
        st.sampled_from([f"10.0.0.{i}" for i in range(8)]),
        st.one_of(st.none(), st.integers(min_value=-1, max_value=3)),
    ),
)
def test_pick_ip_only_returns_pool_ips_with_capacity(
    pool: list[str], caps: dict[str, int | None]
) -> None:
    sched = scheduler()
    for _ in range(10):
        ip = sched.pick_ip(pool, "google", T0, lambda ip, _: caps.get(ip))
        if ip is None:
            assert all((caps.get(i) is not None and caps[i] <= 0) for i in pool)  # type: ignore[operator]
            break
        assert ip in pool
        assert caps.get(ip) is None or caps[ip] > 0  # type: ignore[operator]


def test_next_wake_is_the_earliest_lane_and_snapshot_shows_suspensions() -> None:
    sched = scheduler()
    sched.lane("192.0.2.10", "apple").on_reply(
        "421 [HCM1] Your mail from x.x.x.x was deferred", 421, T0, from_receiver=True
    )
    assert sched.next_wake(T0) == T0 + 15 * MIN
    sched.lane("192.0.2.10", "google")
    assert sched.next_wake(T0) == T0  # a lane with work may send now
    rows = {(s.ip, s.provider): s.as_dict() for s in sched.snapshot(T0)}
    apple = rows[("192.0.2.10", "apple")]
    assert apple["state"] == "suspended" and apple["until"] == T0 + 15 * MIN
    assert apple["rule"] == "apple.hcm" and apple["ready_in"] == 15 * MIN


# ------------------------------------------------------------------------ circuit breaker


def test_breaker_trips_above_the_threshold_and_not_at_or_below() -> None:
    policy = BreakerPolicy()
    assert check_breaker(BreakerState(sent=200, bounced=4), policy) is None  # exactly 2%
    trip = check_breaker(BreakerState(sent=200, bounced=5), policy)
    assert trip is not None and trip.kind == "bounce_rate"
    assert "2.50%" in trip.reason and "5 of 200" in trip.reason
    assert check_breaker(BreakerState(sent=1000, complained=3), policy) is None  # 0.3%
    trip = check_breaker(BreakerState(sent=1000, complained=4), policy)
    assert trip is not None and trip.kind == "complaint_rate"
    # Below the minimum number of sends nothing trips, however bad it looks.
    assert check_breaker(BreakerState(sent=199, bounced=100), policy) is None
    assert check_breaker(BreakerState(), policy) is None


def test_breaker_is_configurable_and_accumulates() -> None:
    policy = BreakerPolicy(bounce_rate=0.05, complaint_rate=0.001, min_sent=10)
    state = BreakerState().add(sent=10).add(bounced=1)
    trip = check_breaker(state, policy)
    assert trip is not None and trip.rate == pytest.approx(0.1)
    state = BreakerState(sent=100, bounced=5)
    assert check_breaker(state, policy) is None
    assert check_breaker(state.add(bounced=1), policy) is not None
