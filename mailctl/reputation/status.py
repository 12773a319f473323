"""Where each sending IP stands in its warm-up: which IPs are ours, today's caps and counts
per IP and provider, the plan ahead, and the summary a report shows.

Domain code: it may import config, the store and the other reputation modules; never the
CLI, delivery or anything that prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, NamedTuple

from mailctl.config.profiles import ProfilesFile
from mailctl.errors import MailctlError
from mailctl.reputation.budget import WarmupBudget, events, history, profile_settings
from mailctl.reputation.warmup import WarmupPlan, local_day, plan, provider_caps
from mailctl.store.base import Store
from mailctl.warmup_schedule import WarmupSetting


class WarmupIp(NamedTuple):
    """One of our sending IPs, its warm-up setting (None: warm) and the profile naming it."""

    ip: str
    setting: WarmupSetting | None
    profile: str


def warmup_ips(profiles: ProfilesFile, profile_name: str | None, ip: str | None) -> list[WarmupIp]:
    """The sending IPs of one profile (or all), optionally only `ip`, which must be ours."""
    names = [profile_name] if profile_name else list(profiles.profiles)
    found = []
    for name in names:
        profile = profiles.profiles.get(name) if profile_name is None else profiles.get(name)
        if profile is None:
            continue
        for address, setting in profile_settings(profile).items():
            if address == "0.0.0.0":  # a relay without pools: no IP of ours to warm
                continue
            if ip is None or address == ip:
                found.append(WarmupIp(address, setting, name))
    if ip is not None and not found:
        raise MailctlError(f"IP {ip} is in no profile's pools ({profiles.path})")
    return found


def warmup_plans(
    store: Store, ips: list[WarmupIp], now: dt.datetime, days: int
) -> list[tuple[WarmupIp, WarmupPlan]]:
    """Each IP's past sending days replayed and its next `days` sending days planned."""
    result = []
    for entry in ips:
        today = local_day(entry.setting, now)
        ip_plan = plan(
            entry.setting, history(store, entry.ip), events(store, entry.ip), today, days
        )
        sent_today = sum(
            r["sent"] for r in store.ip_days(entry.ip) if r["day"] == today.isoformat()
        )
        result.append((entry, replace(ip_plan, sent_today=sent_today)))
    return result


def status_rows(store: Store, ips: list[WarmupIp], timestamp: float) -> list[dict[str, Any]]:
    """Per IP (provider "*") and per provider on the IP's current day: cap, sent, remaining,
    stage and state; the rows `mailctl warmup status` prints and its JSON form."""
    rows: list[dict[str, Any]] = []
    budget = WarmupBudget(store, {entry.ip: entry.setting for entry in ips})
    for address, setting, profile_name in ips:
        cap = budget.cap_today(address, timestamp)
        state = budget.state(address, timestamp)
        day = budget.day_of(address, timestamp)
        sent_by_provider = {
            r["provider"]: r["sent"] for r in store.ip_days(address) if r["day"] == day
        }
        total_sent = sum(sent_by_provider.values())
        providers = sorted(set(sent_by_provider) | set(provider_caps(setting, cap)))
        status = "warm" if setting is None else state.status.value
        rows.append(
            {
                "ip": address,
                "profile": profile_name,
                "provider": "*",
                "day": day,
                "cap": cap,
                "sent": total_sent,
                "remaining": None if cap is None else max(cap - total_sent, 0),
                "stage": state.stage,
                "state": status,
            }
        )
        for provider in providers:
            lane_cap = provider_caps(setting, cap).get(provider, cap)
            sent = sent_by_provider.get(provider, 0)
            rows.append(
                {
                    "ip": address,
                    "profile": profile_name,
                    "provider": provider,
                    "day": day,
                    "cap": lane_cap,
                    "sent": sent,
                    "remaining": None if lane_cap is None else max(lane_cap - sent, 0),
                    "stage": state.stage,
                    "state": status,
                }
            )
    return rows


def report_warmup(
    store: Store, profiles: ProfilesFile, ips: Iterable[str | None], now: float
) -> dict[str, dict[str, Any]]:
    """Each warming IP among `ips`: its stage, status and today's cap, as a report shows them."""
    settings = profile_settings(*profiles.profiles.values())
    budget = WarmupBudget(store, settings)
    found = {}
    for ip in ips:
        setting = settings.get(ip) if ip is not None else None
        if ip is not None and setting is not None:
            state = budget.state(ip, now)
            found[ip] = {"stage": state.stage, "status": state.status.value, "cap": state.cap_today}
    return found
