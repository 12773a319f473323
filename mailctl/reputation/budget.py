"""Today's warm-up capacity per sending IP and provider, enforced by the send loop.

Caps come from the warm-up replay (reputation/warmup.py, over the schedules in
mailctl/warmup_schedule.py) applied to the IP's history in the store; they are counted across
all campaigns, spread across the IP's sending window, and reserved when a message is routed
so concurrent sends can never overshoot. A send run's budget (``shared=True``) also takes its
sends from the store in small blocks (`Store.take_send_quota`) before it reserves them, so
runs that overlap on one IP (several hosts on one PostgreSQL database, or one host under two
``--host`` names) hold the cap together; `give_back` returns what a run did not use.
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


def provider_hourly(*profiles: Profile) -> dict[str, int]:
    """The provider-wide hourly limits these profiles set (the lowest where several do)."""
    limits: dict[str, int] = {}
    for profile in profiles:
        for provider, limit in profile.provider_hourly.items():
            limits[provider] = min(limit, limits.get(provider, limit))
    return limits


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


# The most sends of a capped lane a run takes from the store at once (fewer for small caps),
# and how often (seconds) a run at the cap asks again for sends other runs gave back.
GRANT_BLOCK = 50
GRANT_RECHECK = 30.0


class WarmupBudget:
    """Reservations against each IP's cap for its current local day."""

    def __init__(
        self,
        store: Store,
        settings: Mapping[str, WarmupSetting | None],
        *,
        shared: bool = False,
        provider_hourly: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store
        self.settings = dict(settings)
        # Provider-wide limits over every IP and run (`providers:` in the profile): granted
        # per (provider, UTC hour) by the store like the warm-up caps (a shared budget only).
        self.provider_hourly = {k.lower(): v for k, v in (provider_hourly or {}).items()}
        self._hour_granted: Counter[tuple[str, str]] = Counter()
        self._hour_used: Counter[tuple[str, str]] = Counter()
        self._hour_of: dict[str, str] = {}
        # Shared: capped sends are granted by the store first (other runs may send from the
        # same IPs); `_granted` holds what this run was granted and has not used yet, per
        # (ip, provider) of the IP's current day, and `_sent_*` then count every run's.
        self.shared = shared
        self._granted: Counter[tuple[str, str]] = Counter()
        self._recheck: dict[tuple[str, str], float] = {}
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
        previous = self._day.get(ip)
        if previous is not None and self.shared:
            self._give_back_ip(ip, previous.isoformat())
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
        allowed = window_allowance(setting, cap, when) or 0
        left = allowed - self._sent_ip[ip]
        lane_cap = provider_cap(setting, cap, provider)
        lane_allowed = None if lane_cap is None else window_allowance(setting, lane_cap, when) or 0
        if lane_allowed is not None:
            left = min(left, lane_allowed - self._sent_lane[(ip, provider)])
        if not self.shared:
            return max(left, 0)
        key = (ip, provider)
        if self._granted[key] <= 0 and (left > 0 or now >= self._recheck.get(key, 0.0)):
            # Asked of the store under what the window allows by now, counting every run's
            # sends; at the limit by this run's count, asked again now and then (other runs
            # may have given back sends they did not use).
            self._recheck[key] = now + GRANT_RECHECK
            want = max(1, min(GRANT_BLOCK, cap // 20))
            self._take(ip, provider, min(want, left) if left > 0 else want, allowed, lane_allowed)
        # Granted sends are already counted in `_sent_*`: they are this run's to use.
        return self._granted[key]

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
        return max(left, 0) + (self._granted[(ip, provider)] if self.shared else 0)

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

    def provider_room(self, provider: str, now: float) -> int | None:
        """How many more messages this run may send to `provider` in this UTC hour under
        its provider-wide limit, over every IP and run (None: no such limit). Taken from the
        store in blocks; a run at the limit asks again now and then."""
        limit = self.provider_hourly.get(provider.lower()) if self.shared else None
        if limit is None:
            return None
        hour = time.strftime("%Y-%m-%dT%H", time.gmtime(now))
        previous = self._hour_of.get(provider)
        if previous != hour:
            if previous is not None:
                self._give_back_hour(provider, previous)
            self._hour_of[provider] = hour
        key = (provider, hour)
        if self._hour_granted[key] <= 0 and now >= self._recheck.get(("*", provider), 0.0):
            want = max(1, min(GRANT_BLOCK, limit // 20))
            granted, _, _ = self.store.take_send_quota("*", hour, provider, want, limit, None)
            self._hour_granted[key] += granted
            if not granted:
                self._recheck[("*", provider)] = now + GRANT_RECHECK
        return self._hour_granted[key]

    @staticmethod
    def next_hour(now: float) -> float:
        """When the next UTC hour (and its provider-wide allowance) begins."""
        return (int(now) // 3600 + 1) * 3600.0

    def _give_back_hour(self, provider: str, hour: str) -> None:
        self._hour_used.pop((provider, hour), None)
        unused = self._hour_granted.pop((provider, hour), 0)
        if unused > 0:
            self.store.return_send_quota("*", hour, provider, unused)

    def reserve(self, ip: str, provider: str) -> None:
        hour = self._hour_of.get(provider)
        if hour is not None and self._hour_granted[(provider, hour)] > 0:
            self._hour_granted[(provider, hour)] -= 1
            self._hour_used[(provider, hour)] += 1
        key = (ip, provider)
        if self.shared and self._granted[key] > 0:
            self._granted[key] -= 1  # granted (and counted) when it was taken from the store
            return
        self._sent_ip[ip] += 1
        self._sent_lane[key] += 1

    def release(self, ip: str, provider: str) -> None:
        """A reserved message was not delivered: its slot goes back to the day's cap (a
        granted one back to this run's grant, given back to the store at the end)."""
        hour = self._hour_of.get(provider)
        if hour is not None and self._hour_used[(provider, hour)] > 0:
            # Back to this hour's grant; one reserved in an earlier hour stays spent.
            self._hour_used[(provider, hour)] -= 1
            self._hour_granted[(provider, hour)] += 1
        if (
            self.shared
            and self.settings.get(ip) is not None
            and ip in self._state
            and self._state[ip].cap_today is not None
        ):
            self._granted[(ip, provider)] += 1
            return
        self._sent_ip[ip] -= 1
        self._sent_lane[(ip, provider)] -= 1

    def _take(
        self, ip: str, provider: str, want: int, ip_limit: int, lane_limit: int | None
    ) -> None:
        """Ask the store for `want` more of today's sends, all runs' total kept within the
        limits (the window's allowance so far: never above the day's caps); what every run
        has taken becomes this run's count of the day."""
        day = self._day[ip].isoformat()
        granted, ip_total, lane_total = self.store.take_send_quota(
            ip, day, provider, want, ip_limit, lane_limit
        )
        self._granted[(ip, provider)] += granted
        self._sent_ip[ip] = ip_total
        self._sent_lane[(ip, provider)] = lane_total

    def _give_back_ip(self, ip: str, day: str) -> None:
        for key in [k for k, n in self._granted.items() if k[0] == ip and n > 0]:
            self.store.return_send_quota(ip, day, key[1], self._granted.pop(key))

    def give_back(self) -> None:
        """Return every grant this run did not use (at the end of a run)."""
        if not self.shared:
            return
        for ip, day in list(self._day.items()):
            self._give_back_ip(ip, day.isoformat())
        for provider, hour in list(self._hour_of.items()):
            self._give_back_hour(provider, hour)

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
