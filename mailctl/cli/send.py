"""`mailctl send`: send a campaign, or every active campaign (the cron form).

Part of the CLI: parses, calls `mailctl.delivery.preview` (dry run, first-send DNS check),
hands the run to `mailctl.delivery.run.SendRun` and formats its progress and summary. Must
not be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailctl.cli import console, displays
from mailctl.cli.context import (
    campaign_recipient_keys,
    existing_store,
    load_profiles_near,
    open_store,
    scratch_store,
    state,
)
from mailctl.cli.options import (
    CONTEXT,
    HostOption,
    JsonSummaryOption,
    QuietOption,
    SendZoneOption,
)
from mailctl.config.nodes import parse_duration
from mailctl.config.profiles import ProfilesFile
from mailctl.delivery.campaigns import csv_size
from mailctl.delivery.context import SendOptions
from mailctl.delivery.preview import dry_run, first_send_preflight
from mailctl.delivery.record import RunSummary
from mailctl.delivery.run import SendRun
from mailctl.errors import NeedsOperator, UsageError
from mailctl.store.sqlite import resolve_db_path

app = typer.Typer(context_settings=CONTEXT)

SEND_HELP = """Send a campaign, or every active campaign with --all (the cron form).

Loads the campaign file, imports its CSV, queues every recipient not yet queued and
sends. Running it again resumes: nothing sent is sent again and new CSV rows are queued.
Suppressed recipients are never sent. A campaign whose content changed since it started
is refused unless --update (applied to unsent messages only).

Exit codes: 0 finished, or stopped for a normal reason (--limit, --max-time, Ctrl-C, all
remaining work deferred by receivers); 1 error; 2 usage or configuration error; 3 mail
cannot go until the operator fixes something (the relay refused authentication, TLS
required but not offered, the relay unreachable for the whole run, the preflight failed, a
campaign stopped by a breaker or a refusal of the sender): one line on stderr says what,
even with --quiet; 75 another run holds the database lock.

\b
Examples:
  mailctl send campaigns/welcome.yaml
  mailctl send campaigns/welcome.yaml --dry-run
  mailctl send --all --max-time 9m --quiet     # from cron every 10 minutes
"""


@app.command("send", help=SEND_HELP)
def send(
    campaign_file: Annotated[
        Path | None, typer.Argument(help="Campaign YAML file.", show_default=False)
    ] = None,
    all_campaigns: Annotated[
        bool, typer.Option("--all", help="Send every active campaign in the database.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Attempt at most this many messages in this run.", min=1)
    ] = None,
    max_time: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Stop after this long, e.g. 9m, 1h30m.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render and print the first messages; change nothing.")
    ] = False,
    show: Annotated[int, typer.Option(help="How many messages --dry-run prints.", min=0)] = 3,
    update: Annotated[
        bool, typer.Option("--update", help="Apply a changed campaign to its unsent messages.")
    ] = False,
    skip_check: Annotated[
        bool,
        typer.Option("--skip-check", help="Skip the DNS preflight before a campaign's first send."),
    ] = False,
    zone: SendZoneOption = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for deferred messages that fall due before --max-time "
            "[default: wait only when --max-time is given].",
            show_default=False,
        ),
    ] = None,
    host: HostOption = None,
    quiet: QuietOption = False,
    json_output: JsonSummaryOption = False,
) -> None:
    if (campaign_file is None) == (not all_campaigns):
        raise UsageError("give a campaign file or --all (not both)")
    if dry_run and campaign_file is None:
        raise UsageError("--dry-run needs a campaign file")
    seconds = None
    if max_time is not None:
        try:
            seconds = parse_duration(max_time)
        except ValueError as exc:
            raise UsageError(f"--max-time: {exc}") from None
    console.set_quiet(quiet or json_output)
    profiles = load_profiles_near(campaign_file.parent if campaign_file else None)
    if not dry_run:
        host = host or socket.gethostname()
        profiles = profiles.for_host(host)
    if dry_run:
        assert campaign_file is not None
        _dry_run(campaign_file, profiles, show)
        return
    options = SendOptions(limit=limit, max_time=seconds, wait=wait)
    if campaign_file is not None and not skip_check:
        _preflight(campaign_file, profiles, zone or [])
    summary = _send(campaign_file, profiles, options, update=update, host=host)
    if json_output:
        console.emit_json(summary.as_dict())
    elif not quiet:
        _print_summary(summary)
    if summary.attention:
        raise NeedsOperator(summary.attention)


def _preflight(campaign_file: Path, profiles: ProfilesFile, zones: list[Path]) -> None:
    """The fast DNS checks, before a campaign's first send over a relay or direct."""
    due = first_send_preflight(open_store, campaign_file, profiles, zones)
    if due is None:
        return
    name, report = due
    if report.failed:
        for c in report.failed:
            console.error(f"{c.id.value} {c.subject}: {c.detail}; fix: {c.fix}")
        raise NeedsOperator(
            f"preflight failed for {name} ({len(report.failed)} checks); fix DNS, "
            "see `mailctl check`, or send with --skip-check"
        )


def _send(
    campaign_file: Path | None,
    profiles: ProfilesFile,
    options: SendOptions,
    *,
    update: bool,
    host: str | None,
) -> RunSummary:
    with (
        open_store() as store,
        SendRun(store, on_warning=console.warn, on_info=console.info, host=host) as run,
    ):
        if campaign_file is not None:
            with displays.LoadProgress("Loading recipients", csv_size(campaign_file)) as bar:
                run.prepare_campaign(campaign_file, profiles, update=update, on_progress=bar.update)
        else:
            run.prepare_active(profiles)
        display = displays.SendProgress()
        return run.send(options, on_progress=display.update, live=display)


def _print_summary(summary: RunSummary) -> None:
    data = summary.as_dict()
    table = Table(title="Send summary", show_header=False)
    for key in (
        "campaign",
        "queued",
        "sent",
        "deferred",
        "bounced",
        "failed",
        "expired",
        "suppressed",
        "remaining",
        "elapsed",
        "stop_reason",
    ):
        value = data[key]
        if key == "campaign" and isinstance(value, list):
            value = ", ".join(value)
        if key == "elapsed":
            value = f"{value:.1f} s"
        table.add_row(key.replace("_", " "), str(value))
    console.out.print(table)
    if summary.next_attempt_at and summary.remaining:
        when = dt.datetime.fromtimestamp(summary.next_attempt_at).strftime("%Y-%m-%d %H:%M:%S")
        console.info(f"{summary.remaining} messages wait for a retry; next one is due at {when}")
    if summary.deferral_reasons:
        waits = Table("count", "why deferred messages wait", title="Top deferral reasons")
        for reason, count in summary.deferral_reasons:
            waits.add_row(str(count), reason)
        console.out.print(waits)


def _dry_run(campaign_file: Path, profiles: ProfilesFile, show: int) -> None:
    """Render the first messages without touching the database or the network."""
    db_file = resolve_db_path(state.db)
    preview = dry_run(
        campaign_file,
        profiles,
        scratch_store=scratch_store,
        existing_store=existing_store,
        show=show,
        on_warning=console.warn,
        database=db_file if db_file.exists() else None,
        known_keys=campaign_recipient_keys,
    )
    for message in preview.messages:
        console.out.print(
            f"--- MAIL FROM:<{message.envelope_from}> RCPT TO:<{message.recipient}>",
            markup=False,
            highlight=False,
        )
        console.out.print(
            message.data.decode("utf-8", errors="replace").replace("\r\n", "\n"),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    already = (
        f" ({preview.already} already have a message from an earlier run)"
        if preview.already
        else ""
    )
    console.info(
        f"dry run: {preview.total} recipients would be queued for {preview.campaign}"
        f"{already}; nothing was sent"
    )
