"""Today's warm-up capacity per sending IP and provider, enforced by the send loop.

Caps come from the warm-up replay (reputation/warmup.py, over the schedules in
mailctl/warmup_schedule.py) applied to the IP's history in SQLite; they are counted across
all campaigns, spread across the IP's sending window, and reserved when a message is routed
so concurrent sends can never overshoot.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Mapping

from mailctl.config.profiles import Profile
from mailctl.reputation.warmup import (
    DayRecord,
    WarmupEvent,
    WarmupEventKind,
    WarmupState,
    local_day,
    next_send_time,
    next_window_open,
    provider_cap,
    state_on,
    window_allowance,
    window_bounds,
)
from mailctl.store.base import Store
from mailctl.warmup_schedule import WarmupSetting


def profile_settings(*profiles: Profile) -> dict[str, WarmupSetting | None]:
    """Every IP of these profiles with its warm-up setting (None: a warm IP)."""
    return {
        ip.ip: ip.warmup for profile in profiles for pool in profile.pools.values() for ip in pool
    }


def history(store: Store, ip: str) -> list[DayRecord]:
    """The IP's ip_days rows as one record per day, with per-provider volumes."""
    days: dict[str, dict[str, int]] = {}
    providers: dict[str, dict[str, int]] = {}
    for row in store.ip_days(ip):
        totals = days.setdefault(row["day"], Counter())
        for key in ("sent", "deferred", "bounced", "complained", "throttles", "blocks"):
            totals[key] += row[key]
        providers.setdefault(row["day"], {})[row["provider"]] = row["sent"]
    return [
        DayRecord(day=dt.date.fromisoformat(day), by_provider=providers[day], **totals)
        for day, totals in sorted(days.items())
    ]


def events(store: Store, ip: str) -> list[WarmupEvent]:
    return [
        WarmupEvent(dt.date.fromisoformat(day), WarmupEventKind(kind), preset)
        for day, kind, preset in store.warmup_events(ip)
    ]


def _aware(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


class WarmupBudget:
    """Reservations against each IP's cap for its current local day."""

    def __init__(self, store: Store, settings: Mapping[str, WarmupSetting | None]) -> None:
        self.store = store
        self.settings = dict(settings)
        self._day: dict[str, dt.date] = {}
        self._state: dict[str, WarmupState] = {}
        self._sent_ip: Counter[str] = Counter()
        self._sent_lane: Counter[tuple[str, str]] = Counter()
        self._utc_second = -1
        self._utc_day = ""

    def _refresh(self, ip: str, now: float) -> WarmupSetting | None:
        setting = self.settings.get(ip)
        today = local_day(setting, _aware(now))
        if self._day.get(ip) == today:
            return setting
        self._day[ip] = today
        self._state[ip] = state_on(setting, history(self.store, ip), events(self.store, ip), today)
        self._sent_ip[ip] = 0
        for key in [k for k in self._sent_lane if k[0] == ip]:
            del self._sent_lane[key]
        for row in self.store.ip_days(ip):
            if row["day"] == today.isoformat():
                self._sent_ip[ip] += row["sent"]
                self._sent_lane[(ip, row["provider"])] += row["sent"]
        return setting

    def day_of(self, ip: str, now: float) -> str:
        """The IP's local calendar day: the day its cap (and its ip_days row) is for."""
        setting = self.settings.get(ip)
        if setting is None:  # the hot path: a warm IP counts in UTC days
            second = int(now)
            if second != self._utc_second:
                self._utc_second = second
                self._utc_day = time.strftime("%Y-%m-%d", time.gmtime(now))
            return self._utc_day
        return local_day(setting, _aware(now)).isoformat()

    def state(self, ip: str, now: float) -> WarmupState:
        """Where the IP's warm-up stands on its current local day."""
        self._refresh(ip, now)
        return self._state[ip]

    def cap_today(self, ip: str, now: float) -> int | None:
        self._refresh(ip, now)
        return None if self.settings.get(ip) is None else self._state[ip].cap_today

    def remaining(self, ip: str, provider: str, now: float) -> int | None:
        """How many more messages may go out now (None: no warm-up limit)."""
        if self.settings.get(ip) is None:
            return None
        setting = self._refresh(ip, now)
        if setting is None:
            return None
        cap = self._state[ip].cap_today
        if cap is None:
            return None
        when = _aware(now)
        if when >= window_bounds(setting, self._day[ip])[1]:
            return 0  # the window has closed: the rest waits for tomorrow's, never a burst now
        left = (window_allowance(setting, cap, when) or 0) - self._sent_ip[ip]
        lane_cap = provider_cap(setting, cap, provider)
        if lane_cap is not None:
            lane_left = (window_allowance(setting, lane_cap, when) or 0) - self._sent_lane[
                (ip, provider)
            ]
            left = min(left, lane_left)
        return max(left, 0)

    def remaining_today(self, ip: str, provider: str, now: float) -> int | None:
        """What is left of the IP's cap for the whole day, window aside (None: no cap).

        A cold IP keeps its day's share while this is above zero, even when its window
        allows nothing right now: only the excess spills over to other IPs of the pool."""
        if self.settings.get(ip) is None:
            return None
        setting = self._refresh(ip, now)
        cap = self._state[ip].cap_today
        if setting is None or cap is None:
            return None
        if _aware(now) >= window_bounds(setting, self._day[ip])[1]:
            return 0
        left = cap - self._sent_ip[ip]
        lane_cap = provider_cap(setting, cap, provider)
        if lane_cap is not None:
            left = min(left, lane_cap - self._sent_lane[(ip, provider)])
        return max(left, 0)

    def next_day_opens(self, ip: str, now: float) -> float:
        """When the IP's next day's window opens (its next cap)."""
        setting = self._refresh(ip, now)
        if setting is None:
            return now
        closes = window_bounds(setting, self._day[ip])[1]
        return next_window_open(setting, max(_aware(now), closes)).timestamp()

    def window_pace(self, ip: str, now: float) -> float:
        """Seconds between two messages when the day's cap is spread over the window."""
        setting = self._refresh(ip, now)
        cap = self._state[ip].cap_today if setting is not None else None
        if setting is None or not cap:
            return 0.0
        opens, closes = window_bounds(setting, self._day[ip])
        return (closes - opens).total_seconds() / cap

    def reserve(self, ip: str, provider: str) -> None:
        self._sent_ip[ip] += 1
        self._sent_lane[(ip, provider)] += 1

    def release(self, ip: str, provider: str) -> None:
        """A reserved message was not delivered: its slot goes back to the day's cap."""
        self._sent_ip[ip] -= 1
        self._sent_lane[(ip, provider)] -= 1

    def capacity_returns(self, ip: str, provider: str, now: float) -> float:
        """When this IP may send to this provider again (its window or tomorrow's cap)."""
        setting = self._refresh(ip, now)
        cap = self._state[ip].cap_today if setting is not None else None
        if setting is None or cap is None:
            return now
        when = _aware(now)
        if when >= window_bounds(setting, self._day[ip])[1]:
            return next_window_open(setting, when).timestamp()  # today's window has closed
        moments = [next_send_time(setting, cap, self._sent_ip[ip], when)]
        lane_cap = provider_cap(setting, cap, provider)
        if lane_cap is not None:
            moments.append(next_send_time(setting, lane_cap, self._sent_lane[(ip, provider)], when))
        return max(moment.timestamp() for moment in moments)
