"""Recovery after a provider's documented slow period, and pacing at the learned rate, on an
injected clock (no sleeping). Figures live in bench/throttle_bench.py."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mailctl.reputation.lanes import LaneMode, LaneState
from mailctl.reputation.scheduler import Scheduler

T0 = 1_700_000_000.0
MIN = 60.0
GMAIL_4728 = (
    "421 4.7.28 [x.x.x.x] Our system has detected an unusual rate of unsolicited mail "
    "originating from your IP address. To protect our users from spam, mail sent from your IP "
    "address has been temporarily rate limited. Please visit "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
    "Senders Guidelines. - gsmtp"
)


def admitted(admit: Callable[[float], float], start: float, seconds: float) -> int:
    """How many permits a lane (its ``admit``) hands out to a sender that asks when it may."""
    count, t = 0, start
    while t < start + seconds:
        wait = admit(t)
        if wait == 0:
            count += 1
        else:
            t += max(wait, 1e-3)  # below a float's resolution at epoch times, t would not move
    return count


def test_a_learned_rate_paces_the_lane_not_only_its_display() -> None:
    lane = Scheduler(rng=random.Random(1)).lane("192.0.2.10", "example.net")
    lane.state = LaneState("192.0.2.10", "example.net", learned_rate=45.0)

    assert lane.limits(T0).per_minute == 45.0
    # The default ceiling is 6,000 a minute with a burst of 100; the learned 45 governs (one at
    # once, then one every 60/45 s).
    assert admitted(lane.admit, T0, 60.0) == 46


def test_after_gmail_4728_the_lane_grows_additively_from_the_rate_that_held() -> None:
    sched = Scheduler(rng=random.Random(1))
    lane = sched.lane("192.0.2.10", "google")
    # A burst at full speed, then Google's 4.7.28.
    for i in range(100):
        lane.accepted(T0 + i * 0.01)
    lane.on_reply(GMAIL_4728, 421, T0 + 1, from_receiver=True)

    # The rule as Google documents it: 10 minutes of pause, then 10 a minute for 30 minutes.
    assert lane.limits(T0 + 5 * MIN).connections == 0
    assert lane.limits(T0 + 20 * MIN).per_minute == 10
    assert lane.state.mode is LaneMode.SLOWED

    # Afterwards: from the 10 a minute that held, not from a quarter of the 6,000 ceiling.
    end = T0 + 1 + 40 * MIN
    assert lane.limits(end + 1).per_minute == 10
    assert admitted(lane.admit, end + 1, 60.0) <= 11
    # Clean sending adds a little per interval: one more a minute every 10 seconds.
    rates: list[float] = []
    t = end + 1
    for _ in range(30):
        t += 10.0
        lane.accepted(t)
        rates.append(lane.limits(t).per_minute or 0.0)
    steps = [b - a for a, b in zip([10.0, *rates], rates, strict=False)]
    assert all(step == pytest.approx(1.0) for step in steps)
    assert rates[-1] == pytest.approx(40.0)


UNTRUSTED = "451 4.7.1 Received too many messages from a new or untrusted IP: 192.0.2.10"


def test_a_throttle_on_the_first_message_after_a_probe_pause_waits_longer_without_cutting() -> None:
    lane = Scheduler(rng=random.Random(1)).lane("192.0.2.10", "example.net")
    for i in range(600):  # 600 accepted in 6 s: 6,000 a minute observed
        lane.accepted(T0 + i * 0.01)
    lane.on_reply(UNTRUSTED, 451, T0 + 6, from_receiver=True)
    first = lane.state
    assert first.learned_rate == pytest.approx(3000, rel=0.01)  # half the observed rate
    pause = lane.pause_wait(T0 + 6)

    # The receiver's window is still full: the first message after the pause is refused too.
    again = T0 + 6 + pause
    lane.on_reply(UNTRUSTED, 451, again, from_receiver=True)
    # Nothing was accepted since the cut, so nothing new is known: the rate stays, the pause
    # doubles (within the jitter).
    assert lane.state.learned_rate == first.learned_rate
    assert lane.state.learned_peak == first.learned_peak
    assert lane.state.probe_level == 2
    assert lane.pause_wait(again) == pytest.approx(2 * pause, rel=0.25)

    # Once mail was accepted again, a throttle cuts from what was accepted.
    resumed = again + lane.pause_wait(again)
    for i in range(50):
        lane.accepted(resumed + i * 0.1)
    lane.on_reply(UNTRUSTED, 451, resumed + 5, from_receiver=True)
    assert lane.state.learned_rate is not None
    assert lane.state.learned_rate < first.learned_rate  # type: ignore[operator]
