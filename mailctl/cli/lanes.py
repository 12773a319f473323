"""`mailctl lanes`: each sending lane's state, and manual suspend/resume.

Part of the CLI: parses, calls `mailctl.reputation.control`, formats. Must not be imported by
anything outside mailctl/cli.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.cli.context import load_profiles_near, open_store, optional_profiles, when
from mailctl.cli.options import (
    CONTEXT,
    IpOption,
    JsonOption,
    LaneProviderOption,
    ProviderOption,
)
from mailctl.config.nodes import parse_duration
from mailctl.dns.providers import PROVIDER_SUFFIXES
from mailctl.errors import ConfigError, UsageError
from mailctl.replies.rules import RuleSet, load_rules
from mailctl.reputation.control import lane_snapshots, resume_lane, suspend_lane
from mailctl.reputation.lanes import LaneSnapshot

app = typer.Typer(
    help="Sending lanes (IP x provider): state, limits, and manual suspend/resume.",
    context_settings=CONTEXT,
    invoke_without_command=True,
)


def _rules() -> RuleSet:
    """The rules with the default profile's overrides, or the shipped rules alone when
    profiles.yaml cannot be used (lanes can be inspected on any machine)."""
    try:
        overrides = load_profiles_near(None).get(None).rules
    except ConfigError:
        overrides = None
    return load_rules(overrides)


@app.callback()
def lanes_show(
    ctx: typer.Context,
    json_output: JsonOption = False,
) -> None:
    """Show each lane's state, limits, counters, reason and until when, and what it learned.

    A lane is one sending IP toward one mailbox provider (or, for a relay, toward the
    relay's connections). Throttle replies pause or slow only their lane; the state is kept
    in the database, so a cron run honours a suspension set by the run before it. The
    rate and connections a lane learned from its receiver are listed below the table
    with why: which reply, when, and what was observed before it.

    Example: mailctl lanes --json
    """
    if ctx.invoked_subcommand is not None:
        return
    with open_store() as store:
        snapshots = lane_snapshots(store, _rules(), time.time())
    if json_output:
        console.emit_json([s.as_dict() for s in snapshots])
        return
    table = Table(
        "ip",
        "provider",
        "state",
        "until",
        "reason",
        "conn",
        "per min",
        "sent",
        "deferred",
        "throttled",
    )
    for s in snapshots:
        state = s.mode.value + (" (recovering)" if s.recovering else "")
        table.add_row(
            s.ip,
            s.provider,
            state,
            when(s.until),
            s.reason or "",
            str(s.limits.connections),
            str(s.limits.per_minute or "-"),
            str(s.sent),
            str(s.deferred),
            str(s.throttled),
        )
    console.out.print(table)
    for s in snapshots:
        if s.learned_rate is None and s.learned_connections is None:
            continue
        parts = []
        if s.learned_rate is not None:
            parts.append(f"{s.learned_rate:.1f}/min")
        if s.learned_connections is not None:
            plural = "s" if s.learned_connections != 1 else ""
            parts.append(f"{s.learned_connections} connection{plural}")
        console.out.print(
            f"{s.ip} -> {s.provider}: learned {', '.join(parts)} at {when(s.learned_at)}"
            f" after {s.learned_reason or 'a throttle'!r}"
            + (f"; before it: {s.learned_observed}" if s.learned_observed else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not snapshots:
        console.info("no lanes yet: they appear once mail has been sent")


_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


def _check_lane(ip: str, provider: str, snapshots: list[LaneSnapshot]) -> None:
    """A usage error unless `ip` is a sending IP of a profile (or of a lane already seen) and
    `provider` a provider the rules or the known MX suffixes name (or one a lane has used):
    a typo must not leave a real lane running while a made-up one sits suspended."""
    profiles = optional_profiles()
    ips = {s.ip for s in snapshots}
    if profiles is not None:
        for profile in profiles.profiles.values():
            ips.update(sending.ip for pool in profile.pools.values() for sending in pool)
    if ip not in ips:
        known = ", ".join(sorted(ips)) or "none configured"
        raise UsageError(f"--ip: {ip} is not a sending IP (known: {known})")
    providers = {s.provider for s in snapshots} | {name for _, name in PROVIDER_SUFFIXES}
    providers |= set(_rules().limits) - {"default"}
    # Any other provider is a mail domain (its MX's registered domain, or the domain itself
    # when DNS is off): one with a dot and valid labels.
    if provider not in providers and not _DOMAIN.fullmatch(provider):
        raise UsageError(
            f"--provider: unknown provider '{provider}' (known: {', '.join(sorted(providers))}, "
            "or a mail domain such as example.com)"
        )


@app.command("suspend")
def lanes_suspend(
    ip: IpOption,
    provider: LaneProviderOption,
    for_: Annotated[str, typer.Option("--for", help="How long, e.g. 2h.")] = "1h",
    reason: Annotated[
        str, typer.Option(help="Why (shown in `mailctl lanes`).")
    ] = "suspended by hand",
) -> None:
    """Suspend one lane by hand; the send loop defers its messages until then.

    Example: mailctl lanes suspend --ip 203.0.113.20 --provider yahoo --for 2h --reason "TS03"
    """
    try:
        seconds = parse_duration(for_)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    now = time.time()
    with open_store() as store:
        _check_lane(ip, provider, lane_snapshots(store, _rules(), now))
        suspend_lane(store, _rules(), ip, provider, now=now, until=now + seconds, reason=reason)
    console.info(f"lane {ip} -> {provider} suspended until {when(now + seconds)}")


@app.command("resume")
def lanes_resume(
    ip: IpOption,
    provider: ProviderOption,
    ramp: Annotated[
        bool, typer.Option(help="Come back gradually (a quarter of the rate, +25% per step).")
    ] = True,
) -> None:
    """End a lane's pause now (it ramps back up gradually unless --no-ramp).

    Example: mailctl lanes resume --ip 203.0.113.20 --provider yahoo
    """
    now = time.time()
    with open_store() as store:
        released = resume_lane(store, _rules(), ip, provider, now=now, ramp=ramp)
    console.info(
        f"lane {ip} -> {provider} resumed"
        + (" (ramping up)" if ramp else "")
        + f"; {released} waiting messages are due now"
    )
