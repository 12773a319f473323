"""`mailctl warmup`: each sending IP's plan, today's caps, and manual start/hold/reset.

Part of the CLI: parses, calls `mailctl.reputation.status` and the store, formats. Must not
be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mailctl.cli import console
from mailctl.cli.context import as_of, load_profiles_near, open_store
from mailctl.cli.options import CONTEXT, IpArgument, JsonOption, OnlyIpOption, OnlyProfileOption
from mailctl.errors import UsageError
from mailctl.reputation.status import WarmupIp, status_rows, warmup_ips, warmup_plans
from mailctl.reputation.warmup import WarmupPlan
from mailctl.warmup_schedule import PRESET_NAMES

app = typer.Typer(
    help="Per-IP warm-up: the plan, today's caps, and manual start/hold/reset.",
    context_settings=CONTEXT,
)


def _bar(value: int, top: int, width: int = 40) -> str:
    """A bar on a log scale: ramps span 50 to 100,000 a day, and every day must show."""
    if top <= 0 or value <= 0:
        return ""
    return "█" * max(1, round(width * math.log10(1 + value) / math.log10(1 + top)))


@app.command("plan")
def warmup_plan(
    ip: OnlyIpOption = None,
    profile: OnlyProfileOption = None,
    days: Annotated[int, typer.Option(help="How many upcoming sending days to show.", min=1)] = 14,
    date: Annotated[
        str | None, typer.Option(help="Plan as of this day (YYYY-MM-DD) [default: today].")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """The warm-up ramp of each sending IP: past days, upcoming days, target date.

    Stages advance by sending days (days the IP actually sent), not calendar days. A day
    with throttles, deferrals above 5%, bounces above 2% or complaints above 0.1% holds the
    stage; a block steps it back. The chart shows each day's cap and what was sent.

    Example: mailctl warmup plan --profile direct --days 30
    """
    now = as_of(date)
    with open_store() as store:
        ips = warmup_ips(load_profiles_near(None), profile, ip)
        result = warmup_plans(store, ips, now, days)
    if json_output:
        console.emit_json([_plan_json(entry, p) for entry, p in result])
        return
    if not result:
        console.info("no sending IPs with a warm-up in profiles.yaml")
    for (address, setting, profile_name), p in result:
        state = p.state
        title = f"{address} ({profile_name})"
        if setting is None:
            console.out.print(f"{title}: warm (no warm-up setting); only lane limits apply")
            continue
        console.out.print(
            Text.assemble(
                (title, "bold"),
                f": {state.schedule_name or setting.name} to {setting.target_daily:,}/day, "
                f"stage {state.stage}/{state.stages}, {state.status.value}; today's cap "
                f"{state.cap_today if state.cap_today is not None else '-'}; target reached "
                f"{p.target_reached_on or 'not in sight'}",
            )
        )
        table = Table(
            "day",
            "stage",
            "cap",
            "sent",
            "outcome",
            "chart, log scale (█ sent, ░ unused cap)",
            title=f"{address}: past sending days and upcoming plan",
        )
        top = max([d.cap for d in p.past] + [d.cap for d in p.upcoming] + [1])
        for d in p.past[-days:]:
            sent_bar = _bar(min(d.sent, d.cap) if d.cap else d.sent, top)
            unused = _bar(d.cap, top)[len(sent_bar) :]
            table.add_row(
                d.day.isoformat(),
                str(d.stage),
                f"{d.cap:,}",
                f"{d.sent:,}",
                d.outcome.value,
                sent_bar + "░" * len(unused),
            )
        for planned in p.upcoming:
            caps = ", ".join(f"{k} {v:,}" for k, v in planned.provider_caps.items())
            table.add_row(
                planned.day.isoformat(),
                str(planned.stage),
                f"{planned.cap:,}",
                f"{p.sent_today:,}" if planned.day == state.day else "",
                "planned" + (f" ({caps})" if caps else ""),
                "░" * len(_bar(planned.cap, top)),
            )
        console.out.print(table)


def _plan_json(entry: WarmupIp, p: WarmupPlan) -> dict[str, Any]:
    address, setting, profile_name = entry
    state = p.state
    return {
        "ip": address,
        "profile": profile_name,
        "schedule": (state.schedule_name or setting.name) if setting else None,
        "target_daily": setting.target_daily if setting else None,
        "status": state.status.value,
        "stage": state.stage,
        "stages": state.stages,
        "cap_today": state.cap_today,
        "sending_days": state.sending_days,
        "sent_today": p.sent_today,
        "target_reached_on": p.target_reached_on.isoformat() if p.target_reached_on else None,
        "past": [
            {
                "day": d.day.isoformat(),
                "stage": d.stage,
                "cap": d.cap,
                "sent": d.sent,
                "outcome": d.outcome.value,
                "why": d.why,
            }
            for d in p.past
        ],
        "upcoming": [
            {
                "day": d.day.isoformat(),
                "stage": d.stage,
                "cap": d.cap,
                "provider_caps": dict(d.provider_caps),
            }
            for d in p.upcoming
        ],
    }


@app.command("status")
def warmup_status(
    date: Annotated[
        str | None, typer.Option(help="As of this day (YYYY-MM-DD) [default: now].")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Per IP and provider today: cap, sent, remaining, stage, state.

    Example: mailctl warmup status --json
    """
    now = as_of(date)
    with open_store() as store:
        rows = status_rows(store, warmup_ips(load_profiles_near(None), None, None), now.timestamp())
    if json_output:
        console.emit_json(rows)
        return
    table = Table("ip", "provider", "day", "cap", "sent", "remaining", "stage", "state")
    for r in rows:
        table.add_row(
            r["ip"],
            r["provider"],
            r["day"],
            "-" if r["cap"] is None else f"{r['cap']:,}",
            f"{r['sent']:,}",
            "-" if r["remaining"] is None else f"{r['remaining']:,}",
            str(r["stage"]),
            r["state"],
        )
    console.out.print(table)


def _warmup_event(ip: str, kind: str, preset: str | None, date: str | None) -> None:
    if preset is not None and preset not in PRESET_NAMES:
        raise UsageError(f"--preset must be one of {', '.join(PRESET_NAMES)}")
    entries = warmup_ips(load_profiles_near(None), None, ip)  # the IP must be one of ours
    day = as_of(date).date() if date else dt.date.today()
    with open_store() as store:
        store.add_warmup_event(ip, day.isoformat(), kind, preset, time.time())
    what = ""
    setting = entries[0].setting if entries else None
    if preset and setting is not None:
        ramp = setting.ramp(preset)
        what = f" ({preset}: {len(ramp)} stages, {ramp[0]:,} to {ramp[-1]:,}/day)"
    elif preset:
        what = f" ({preset})"
    console.info(f"{ip}: warm-up {kind}{what} from {day}")


@app.command("start")
def warmup_start(
    ip: IpArgument,
    preset: Annotated[str, typer.Option(help="sendgrid, sparkpost, ses45 or linear.")],
    date: Annotated[
        str | None, typer.Option(help="First day (YYYY-MM-DD) [default: today].")
    ] = None,
) -> None:
    """(Re)start an IP's warm-up at stage 1 with a preset, without editing history.

    Example: mailctl warmup start 203.0.113.20 --preset ses45 --date 2026-12-01
    """
    _warmup_event(ip, "start", preset, date)


@app.command("hold")
def warmup_hold(ip: IpArgument) -> None:
    """Freeze an IP's stage (it keeps sending at today's cap) until `warmup start`.

    Example: mailctl warmup hold 203.0.113.20
    """
    _warmup_event(ip, "hold", None, None)


@app.command("reset")
def warmup_reset(ip: IpArgument) -> None:
    """Send an IP back to stage 1 of its schedule (e.g. after a block or a long pause).

    Example: mailctl warmup reset 203.0.113.20
    """
    _warmup_event(ip, "reset", None, None)
