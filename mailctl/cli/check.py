"""`mailctl check`: the DNS preflight (SPF, DKIM, DMARC, reverse DNS, MX).

Part of the CLI: parses, calls `mailctl.dns.preflight`, formats. Must not be imported by
anything outside mailctl/cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mailctl.cli import console
from mailctl.cli.context import load_profiles_near
from mailctl.cli.options import CONTEXT, CheckProfileOption, CheckZoneOption, JsonOption
from mailctl.config.campaign import load_campaign
from mailctl.dns.checks import CheckReport
from mailctl.dns.preflight import check as run_check
from mailctl.dns.preflight import resolver_for

app = typer.Typer(context_settings=CONTEXT)


def _print_check(report: CheckReport) -> None:
    colour = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    table = Table("check", "subject", "result", "detail", "fix", title="Preflight checks")
    for c in report.checks:
        table.add_row(
            c.id.value,
            c.subject,
            Text(c.status.value, style=colour[c.status.value]),
            c.detail,
            c.fix or "",
        )
    console.out.print(table)
    req = Table(
        "provider",
        "bulk-sender requirements",
        "missing",
        "not checked",
        title="Provider requirements",
    )
    for provider, status in report.requirements.items():
        req.add_row(
            str(provider),
            Text("met", style="green") if status.met else Text("not met", style="red"),
            ", ".join(status.missing),
            ", ".join(status.unchecked),
        )
    console.out.print(req)


@app.command("check")
def check(
    profile: CheckProfileOption = None,
    campaign: Annotated[
        Path | None, typer.Option(help="Campaign file: its From domain, class and unsubscribe.")
    ] = None,
    zone: CheckZoneOption = None,
    fast: Annotated[bool, typer.Option(help="Only the quick subset `send` runs.")] = False,
    json_output: JsonOption = False,
) -> None:
    """DNS preflight: SPF, DKIM, DMARC, reverse DNS and MX, before the providers see mail.

    Gmail, Yahoo and Microsoft reject bulk mail that fails authentication: check SPF (it
    authorises every sending IP, within 10 lookups), the DKIM key record (matches your
    private key, >= 1024 bits), DMARC (published, aligned), forward-confirmed reverse DNS
    and the HELO name, the bounce domain's MX, and one-click unsubscribe for marketing.
    Each failure comes with a one-line fix. Exit 0 when nothing fails, 1 otherwise.
    With --zone, answers come from zone files: check a zone before you publish it.

    Example: mailctl check --campaign campaigns/welcome.yaml --zone example.com.zone
    """
    profiles = load_profiles_near(campaign.parent if campaign else None)
    loaded = load_campaign(campaign) if campaign else None
    chosen = profiles.get(profile or (loaded.profile if loaded else None))
    result = run_check(resolver_for(zone or []), chosen, loaded, fast=fast)
    if json_output:
        console.emit_json(result.as_dict())
    else:
        _print_check(result)
    if result.failed:
        raise typer.Exit(1)
