"""`mailctl report`: what happened, per campaign, sending IP and provider.

Part of the CLI: parses, calls `mailctl.report` (and `mailctl.reputation.status` for each IP's
warm-up stage), writes the HTML file, formats. Must not be imported by anything outside
mailctl/cli.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mailctl.cli import console
from mailctl.cli.context import open_store, optional_profiles
from mailctl.cli.options import CONTEXT, JsonReportOption
from mailctl.errors import MailctlError
from mailctl.files import write_private_text
from mailctl.report.data import build_report
from mailctl.report.html import render_html
from mailctl.report.tables import render_tables
from mailctl.reputation.status import report_warmup
from mailctl.store.base import Store

app = typer.Typer(context_settings=CONTEXT)


@app.command("report")
def report(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign name [default: all campaigns, newest first].")
    ] = None,
    json_output: JsonReportOption = False,
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Also write a self-contained HTML page with charts here.", dir_okay=False
        ),
    ] = None,
) -> None:
    """What happened: counts, bounce and complaint rates against the circuit breakers,
    delivery times, top replies; per sending IP and provider: throttles and lane pauses.

    Example: mailctl report welcome --html welcome.html
    """
    with open_store() as store:
        data = build_report(store, campaign, now=time.time())
        _add_warmup_to_report(store, data)
    if html_file is not None:
        try:
            write_private_text(html_file, render_html(data))  # 0600, atomic: it names recipients
        except OSError as exc:
            raise MailctlError(f"{html_file}: cannot write: {exc.strerror}") from None
        console.info(f"wrote {html_file}")
    if json_output:
        console.emit_json(data)
        return
    for table in render_tables(data):
        console.out.print(table)


def _add_warmup_to_report(store: Store, data: dict[str, Any]) -> None:
    """Each sending IP's warm-up stage, when profiles.yaml can be found."""
    profiles = optional_profiles()
    if profiles is None:
        return
    rows = data.get("by_ip", [])
    warmup = report_warmup(store, profiles, [row.get("ip") for row in rows], time.time())
    for row in rows:
        if row.get("ip") in warmup:
            row["warmup"] = warmup[row["ip"]]
