"""Warm-up caps hold when send runs overlap on one IP: each run's budget takes its sends
from the database (`Store.take_send_quota`) before reserving them.

Two budgets on two connections to one real database of each backend (the `store_url`
fixture: a SQLite file, a throwaway PostgreSQL database), interleaved as two overlapping
runs would route: together they never pass the IP's cap or a provider's share of it, and
what a run did not use goes back for the other.
"""

from __future__ import annotations

import datetime as dt

from mailctl.reputation.budget import WarmupBudget
from mailctl.store.base import IpDayCounts
from mailctl.store.factory import open_store
from mailctl.warmup_schedule import WarmupSetting

IP = "192.0.2.10"
DAY = dt.date(2027, 1, 15)
# Late in the IP's 0-24 h window: the day's whole cap is allowed (no spreading left to wait).
LATE = dt.datetime.combine(DAY, dt.time(23, 30), tzinfo=dt.UTC).timestamp()
CAP = 30


def setting(**extra: object) -> WarmupSetting:
    return WarmupSetting(start=DAY, target_daily=2 * CAP, volumes=(CAP, 2 * CAP), **extra)  # type: ignore[arg-type]


def route(budget: WarmupBudget, provider: str, now: float = LATE) -> bool:
    """What the router does for one message: reserve a slot if the budget has one."""
    left = budget.remaining(IP, provider, now)
    if left is not None and left <= 0:
        return False
    budget.reserve(IP, provider)
    return True


def test_two_overlapping_runs_together_send_exactly_the_cap(store_url: str) -> None:
    with open_store(store_url) as one, open_store(store_url) as two:
        one.bump_ip_day(IP, DAY.isoformat(), "google", sent=4)  # sent earlier today
        first = WarmupBudget(one, {IP: setting()}, shared=True)
        second = WarmupBudget(two, {IP: setting()}, shared=True)
        routed = {"first": 0, "second": 0}
        for _ in range(40):  # each run has far more mail than the cap allows
            routed["first"] += route(first, "google")
            routed["second"] += route(second, "google")
        assert routed["first"] + routed["second"] == CAP - 4
        assert routed["first"] > 0 and routed["second"] > 0  # both sent: they overlapped
        # The second run could not deliver three of its messages: back to its grant, and at
        # its end back to the database, where the first run takes them.
        for _ in range(3):
            second.release(IP, "google")
        second.give_back()
        assert not route(first, "google")  # at the cap by its count: asked again later
        again = sum(route(first, "google", LATE + 60) for _ in range(10))
        assert again == 3
        first.give_back()
    with open_store(store_url) as store:
        assert store.take_send_quota(IP, DAY.isoformat(), "google", 5, CAP, None) == (
            0,
            CAP,
            CAP,
        )


def test_a_provider_share_holds_across_runs_too(store_url: str) -> None:
    shares = {"provider_shares": {"google": 0.5}}
    with open_store(store_url) as one, open_store(store_url) as two:
        first = WarmupBudget(one, {IP: setting(**shares)}, shared=True)
        second = WarmupBudget(two, {IP: setting(**shares)}, shared=True)
        google = sum(route(first, "google") + route(second, "google") for _ in range(40))
        yahoo = sum(route(first, "yahoo") + route(second, "yahoo") for _ in range(40))
    assert (google, yahoo) == (CAP // 2, CAP - CAP // 2)


def test_without_sharing_each_run_would_send_the_whole_cap(store_url: str) -> None:
    """Why the grants exist: budgets that only count their own run overshoot together."""
    with open_store(store_url) as one, open_store(store_url) as two:
        first = WarmupBudget(one, {IP: setting()})
        second = WarmupBudget(two, {IP: setting()})
        routed = sum(route(first, "google") + route(second, "google") for _ in range(40))
        one.record_outcomes([], [IpDayCounts(IP, DAY.isoformat(), "google", sent=routed)])
    assert routed == 2 * CAP


def test_a_provider_wide_hourly_limit_holds_over_ips_and_runs(store_url: str) -> None:
    """`providers: {google: {max_per_hour: 25}}`: whatever IPs (warm ones too) and runs
    send, 25 an hour reach the provider; the next hour brings 25 more."""
    hourly = {"google": 25}
    with open_store(store_url) as one, open_store(store_url) as two:
        first = WarmupBudget(one, {}, shared=True, provider_hourly=hourly)
        second = WarmupBudget(two, {}, shared=True, provider_hourly=hourly)

        def send(budget: WarmupBudget, ip: str, now: float) -> bool:
            room = budget.provider_room("google", now)
            if room is not None and room <= 0:
                return False
            budget.reserve(ip, "google")
            return True

        sent = sum(
            send(first, "192.0.2.1", LATE) + send(second, "192.0.2.2", LATE) for _ in range(40)
        )
        assert sent == 25
        assert first.provider_room("yahoo", LATE) is None  # no limit for yahoo
        # The next hour (00:30 the next day): a new allowance.
        later = LATE + 3600
        assert sum(send(first, "192.0.2.1", later) for _ in range(40)) == 25
        first.give_back()
        second.give_back()
