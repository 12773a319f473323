"""The command line. The only module that knows Typer; it parses, calls and formats.

Exit codes: 0 success; 1 error; 2 usage or configuration error; 75 another run holds the
database lock (cron may simply try again).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mailctl import __version__
from mailctl.cli import console
from mailctl.errors import MailctlError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

app = typer.Typer(
    name="mailctl",
    help=(
        "Bulk email sending and IP warm-up that protects your sending reputation.\n\n"
        "Typical use: `mailctl recipients import list.csv`, `mailctl send campaign.yaml`, "
        "`mailctl send --all --max-time 9m --quiet` from cron."
    ),
    context_settings=CONTEXT,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
recipients_app = typer.Typer(help="Import and inspect recipients.", context_settings=CONTEXT)
suppress_app = typer.Typer(
    help="The suppression list every send honours.", context_settings=CONTEXT
)
campaign_app = typer.Typer(help="Inspect and control campaigns.", context_settings=CONTEXT)
bounces_app = typer.Typer(
    help="Read bounce and complaint mailboxes (mbox, Maildir, .eml).", context_settings=CONTEXT
)
app.add_typer(bounces_app, name="bounces", no_args_is_help=True)
lanes_app = typer.Typer(
    help="Sending lanes (IP x provider): state, limits, and manual suspend/resume.",
    context_settings=CONTEXT,
    invoke_without_command=True,
)
rules_app = typer.Typer(help="Provider limits and reply rules.", context_settings=CONTEXT)
app.add_typer(lanes_app, name="lanes")
warmup_app = typer.Typer(
    help="Per-IP warm-up: the plan, today's caps, and manual start/hold/reset.",
    context_settings=CONTEXT,
)
app.add_typer(warmup_app, name="warmup", no_args_is_help=True)
app.add_typer(rules_app, name="rules", no_args_is_help=True)
dkim_app = typer.Typer(help="DKIM keys.", context_settings=CONTEXT)
app.add_typer(dkim_app, name="dkim", no_args_is_help=True)
app.add_typer(recipients_app, name="recipients", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign", no_args_is_help=True)
app.add_typer(suppress_app, name="suppress", no_args_is_help=True)
db_app = typer.Typer(
    help="The database itself: migrate it, copy it to PostgreSQL.", context_settings=CONTEXT
)
app.add_typer(db_app, name="db", no_args_is_help=True)


@dataclass
class Globals:
    db: str | None = None
    profiles: Path | None = None
    debug: bool = False


state = Globals()


def _version(value: bool) -> None:
    if value:
        console.out.print(f"mailctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="FILE|URL",
            help="SQLite file (or sqlite:///path), or postgresql://user@host/dbname to share "
            "one queue between sending hosts [default: $MAILCTL_DB or ./mailctl.db]",
        ),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            "--profiles",
            metavar="FILE",
            help="profiles.yaml to use [default: $MAILCTL_PROFILES, next to the campaign, or ./]",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    state.db = db
    state.profiles = profiles
    state.debug = debug


def _open_store() -> Any:
    from mailctl.store.factory import open_store

    return open_store(state.db)


# --------------------------------------------------------------------------- recipients


@recipients_app.command("import")
def recipients_import(
    file: Annotated[Path, typer.Argument(help="CSV file with a header row and an email column.")],
    list_name: Annotated[
        str | None, typer.Option("--list", help="Add the recipients to this named list.")
    ] = None,
    email_column: Annotated[
        str | None, typer.Option(help="Column holding the address [default: email].")
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Field delimiter [default: sniffed from the header].")
    ] = None,
    encoding: Annotated[str, typer.Option(help="File encoding, e.g. latin-1.")] = "utf-8",
    skip_existing: Annotated[
        bool, typer.Option(help="Keep stored fields for addresses already in the database.")
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows here with line and reason.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Import recipients from a CSV file, validated and deduplicated.

    Every column besides the address becomes a template field. Invalid rows are rejected
    with their line number and never stop the import; re-importing a file changes nothing.

    Example: mailctl recipients import customers.csv --list customers --rejects bad.csv
    """
    from mailctl.recipients.csv_import import RejectsWriter, import_csv

    console.set_quiet(quiet or json_output)
    rejects_writer = RejectsWriter(rejects) if rejects else None
    shown = 0

    def on_reject(reject: Any, header: list[str]) -> None:
        nonlocal shown
        if rejects_writer:
            rejects_writer(reject, header)
        if shown < 10:
            console.info(f"{file}:{reject.line}: rejected: {reject.reason}")
        shown += 1

    size = file.stat().st_size if file.exists() else 0
    with _open_store() as store, console.progress(f"Importing {file.name}", size) as bar:
        last = 0

        def on_progress(done: int, rows: int) -> None:
            nonlocal last
            bar.advance(done - last, status=f"{rows} rows")
            last = done

        try:
            summary = import_csv(
                store,
                file,
                list_name=list_name,
                email_column=email_column,
                delimiter=delimiter,
                encoding=encoding,
                skip_existing=skip_existing,
                on_reject=on_reject,
                on_progress=on_progress,
            )
        finally:
            if rejects_writer:
                rejects_writer.close()
    if shown > 10:
        console.info(
            f"... {shown - 10} more rejected rows" + (f" (see {rejects})" if rejects else "")
        )
    if json_output:
        console.emit_json(summary.as_dict())
    elif not quiet:
        table = Table(title=f"Imported {file}", show_header=False)
        for key, value in summary.as_dict().items():
            if key not in ("file",):
                table.add_row(key, "" if value is None else str(value))
        console.out.print(table)


@recipients_app.command("list")
def recipients_list(
    list_name: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show recipients and their fields.

    Example: mailctl recipients list --list customers --limit 10
    """
    with _open_store() as store:
        if list_name and not store.list_exists(list_name):
            raise MailctlError(f"no list named '{list_name}'")
        rows = store.iter_recipients(list_name, None if json_output else limit)
        if json_output:
            for row in rows:
                console.emit_json_line({"email": row["email"], "fields": row["fields"]})
            return
        table = Table("email", "fields")
        for row in rows:
            fields = ", ".join(f"{k}={v}" for k, v in row["fields"].items())
            table.add_row(row["email"], fields)
        console.out.print(table)
        total = store.count_recipients(list_name)
        if total > limit:
            console.info(f"showing {limit} of {total}; use --limit or --json")


@recipients_app.command("count")
def recipients_count(
    list_name: Annotated[str | None, typer.Option("--list", help="Only this list.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count recipients, in total and per list.

    Example: mailctl recipients count --json
    """
    with _open_store() as store:
        if list_name and not store.list_exists(list_name):
            raise MailctlError(f"no list named '{list_name}'")
        total = store.count_recipients(list_name)
        lists = dict(store.list_counts()) if not list_name else {list_name: total}
    if json_output:
        console.emit_json({"total": total, "lists": lists})
        return
    console.out.print(f"{total} recipients")
    for name, count in lists.items():
        if not list_name:
            console.out.print(f"  {name}: {count}")


# --------------------------------------------------------------------------- send

SEND_HELP = """Send a campaign, or every active campaign with --all (the cron form).

Loads the campaign file, imports its CSV, queues every recipient not yet queued and
sends. Running it again resumes: nothing sent is sent again and new CSV rows are queued.
Suppressed recipients are never sent. A campaign whose content changed since it started
is refused unless --update (applied to unsent messages only).

Exit codes: 0 finished, or stopped for a normal reason (--limit, --max-time, Ctrl-C, all
remaining work deferred); 1 error; 2 usage or configuration error; 75 another run holds
the database lock.

\b
Examples:
  mailctl send campaigns/welcome.yaml
  mailctl send campaigns/welcome.yaml --dry-run
  mailctl send --all --max-time 9m --quiet     # from cron every 10 minutes
"""


def _load_profiles(near: Path | None) -> Any:
    from mailctl.config.profiles import find_profiles, load_profiles

    return load_profiles(find_profiles(state.profiles, near))


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
    zone: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE",
            help="Answer the preflight from this zone file, not live DNS (repeatable).",
        ),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for deferred messages that fall due before --max-time "
            "[default: wait only when --max-time is given].",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="This sending host: send only from pool IPs on it (a pool IP's `host:`) "
            "[default: the machine's hostname].",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    from mailctl.config.nodes import parse_duration

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
    profiles = _load_profiles(campaign_file.parent if campaign_file else None)
    if not dry_run:
        import socket

        host = host or socket.gethostname()
        profiles = profiles.for_host(host)
    if dry_run:
        assert campaign_file is not None
        _dry_run(campaign_file, profiles, show)
        return
    from mailctl.delivery.context import SendOptions

    options = SendOptions(limit=limit, max_time=seconds, wait=wait)
    if campaign_file is not None and not skip_check:
        _preflight(campaign_file, profiles, zone or [])
    summary = _send(campaign_file, profiles, options, update=update, host=host)
    if json_output:
        console.emit_json(summary.as_dict())
    elif not quiet:
        _print_summary(summary)


def _preflight(campaign_file: Path, profiles: Any, zones: list[Path]) -> None:
    """The fast DNS checks, before a campaign's first send over a relay or direct."""
    from mailctl.config.campaign import load_campaign
    from mailctl.config.profiles import TransportKind
    from mailctl.dns.preflight import check as run_check
    from mailctl.dns.preflight import resolver_for

    campaign = load_campaign(campaign_file)
    profile = profiles.get(campaign.profile)
    if profile.transport is TransportKind.SANDBOX or not profile.preflight:
        return
    if not profile.dns and not zones:
        return  # a profile with DNS off (rehearsal): check zones with `mailctl check --zone`
    with _open_store() as store:
        if store.get_campaign(campaign.name) is not None:
            return  # checked when it started
    report = run_check(resolver_for(zones), profile, campaign, fast=True)
    if report.failed:
        for c in report.failed:
            console.error(f"{c.id.value} {c.subject}: {c.detail}; fix: {c.fix}")
        raise MailctlError(
            f"preflight failed for {campaign.name} ({len(report.failed)} checks); fix DNS, "
            "see `mailctl check`, or send with --skip-check"
        )


def _send(
    campaign_file: Path | None, profiles: Any, options: Any, *, update: bool, host: str | None
) -> Any:
    import asyncio
    import os
    import socket
    import time

    from mailctl.delivery.campaigns import active_jobs, prepare
    from mailctl.delivery.engine import Engine
    from mailctl.delivery.record import RunSummary

    host = host or socket.gethostname()
    with _open_store() as store, store.send_lock(host):
        now = time.time()
        recovered = store.recover_interrupted()
        if recovered:
            console.warn(
                f"{recovered} messages were in flight when an earlier run died; they are "
                "queued again and may reach their recipients twice"
            )
        if campaign_file is not None:
            with console.progress("Loading recipients", None) as bar:
                prepared = [
                    prepare(
                        store,
                        campaign_file,
                        profiles,
                        update=update,
                        now=now,
                        on_progress=lambda done, rows: bar.advance(0, status=f"{rows} rows"),
                    )
                ]
        else:
            prepared, problems = active_jobs(store, profiles, now=now)
            for problem in problems:
                console.warn(problem)
        jobs = []
        for item in prepared:
            row = store.get_campaign(item.job.name)
            if item.imported is not None and item.imported.invalid:
                console.warn(
                    f"{item.imported.invalid} rows of {item.imported.file} were rejected "
                    "(see `mailctl recipients import --rejects FILE`)"
                )
            if row is not None and row["status"] != "active" and row["status"] != "done":
                console.info(f"campaign {item.job.name} is {row['status']}: not sending")
                continue
            jobs.append(item.job)
        summary_queued = sum(p.queued for p in prepared)
        summary_suppressed = sum(p.suppressed for p in prepared)
        if not jobs:
            summary = RunSummary(
                campaigns=[p.job.name for p in prepared], stop_reason="nothing to send"
            )
            summary.queued, summary.suppressed = summary_queued, summary_suppressed
            return summary
        total = sum(store.remaining(job.campaign_id) for job in jobs)
        run_id = store.start_run(os.getpid(), host, now)

        async def main() -> RunSummary:
            import signal

            from mailctl.config.profiles import TransportKind
            from mailctl.delivery.sandbox import Sandbox

            sandbox = None
            sandbox_jobs = [j for j in jobs if j.profile.transport is TransportKind.SANDBOX]
            if sandbox_jobs:
                outbox = sandbox_jobs[0].profile.outbox or Path("outbox")
                sandbox = Sandbox(outbox)
                await sandbox.start()
                console.info(f"sandbox: delivering to an embedded SMTP server, Maildir {outbox}/")
            display = console.SendProgress()
            started = time.monotonic()

            def on_progress(engine: Engine) -> None:
                s = engine.summary
                done = s.sent + s.deferred + s.bounced + s.failed + s.expired + s.suppressed
                rate = s.sent / max(time.monotonic() - started, 1e-6)
                lanes = engine.lane_rows()
                display.update(total, done, rate, lanes)

            engine = Engine(
                store,
                jobs,
                run_id=run_id,
                options=options,
                sandbox_port=sandbox.port if sandbox else None,
                on_progress=on_progress,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, engine.request_stop)

            async def refresh() -> None:
                # The engine reports progress as it commits outcomes; this keeps the display
                # current while the run waits for deferred work (wall time: the CLI's clock).
                while True:
                    await asyncio.sleep(0.25)
                    on_progress(engine)

            refresher = asyncio.create_task(refresh())
            try:
                with display:
                    return await engine.run()
            finally:
                refresher.cancel()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                if sandbox is not None:
                    await sandbox.close()

        summary = asyncio.run(main())
        summary.queued = summary_queued
        summary.suppressed += summary_suppressed
        summary.recovered = recovered
        store.finish_run(run_id, time.time(), summary.stop_reason, recovered)
        return summary


def _print_summary(summary: Any) -> None:
    import datetime as dt

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


def _dry_run(campaign_file: Path, profiles: Any, show: int) -> None:
    """Render the first messages without touching the database or the network."""
    from mailctl.config.campaign import load_campaign
    from mailctl.delivery.campaigns import check_fields, make_renderer
    from mailctl.message.tracking import new_tracking_id
    from mailctl.recipients.csv_import import import_csv
    from mailctl.store.factory import backend_of, open_store, resolve_db, sqlite_path
    from mailctl.store.sqlite import SqliteStore

    campaign = load_campaign(campaign_file)
    profiles.get(campaign.profile)
    renderer = make_renderer(campaign, profiles)
    with SqliteStore.open(":memory:") as scratch:
        if campaign.csv is not None:
            summary = import_csv(
                scratch,
                campaign.csv.path,
                list_name=campaign.list_key,
                email_column=campaign.csv.email_column,
                delimiter=campaign.csv.delimiter,
                encoding=campaign.csv.encoding,
            )
            if summary.invalid:
                console.warn(f"{summary.invalid} rows of {campaign.csv.path} would be rejected")
            source = scratch
        else:
            target = resolve_db(state.db)
            if backend_of(target) == "sqlite" and not sqlite_path(target).exists():
                raise MailctlError(
                    f"{sqlite_path(target)} does not exist, so list '{campaign.list_key}' is empty"
                )
            source = open_store(target, migrate=False)  # type: ignore[assignment]
        check_fields(source, renderer, campaign.list_key)
        total = source.count_recipients(campaign.list_key)
        for row in source.iter_recipients(campaign.list_key, limit=show):
            message = renderer.render(row["email"], row["fields"], new_tracking_id())
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
    console.info(
        f"dry run: {total} recipients would be queued for {campaign.name}; nothing was sent"
    )


# --------------------------------------------------------------------------- campaigns


def _campaign_row(store: Any, name: str) -> dict[str, Any]:
    row = store.get_campaign(name)
    if row is None:
        raise MailctlError(f"no campaign named '{name}' (see `mailctl campaign list`)")
    return row


@campaign_app.command("list")
def campaign_list(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List campaigns, newest first, with their message counts.

    Example: mailctl campaign list
    """
    with _open_store() as store:
        rows = []
        for row in store.list_campaigns():
            counts = store.message_counts(row["id"])
            rows.append(
                {
                    "name": row["name"],
                    "status": row["status"],
                    "class": row["traffic_class"],
                    "stop_reason": row["stop_reason"],
                    **counts,
                }
            )
    if json_output:
        console.emit_json(rows)
        return
    table = Table(
        "name", "status", "class", "queued", "sent", "deferred", "bounced", "failed", "suppressed"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            r["class"],
            str(r["queued"]),
            str(r["sent"]),
            str(r["deferred"]),
            str(r["bounced"]),
            str(r["failed"]),
            str(r["suppressed"]),
        )
    console.out.print(table)


@campaign_app.command("show")
def campaign_show(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one campaign: status, why it stopped, counts and the top replies.

    Example: mailctl campaign show welcome
    """
    with _open_store() as store:
        row = _campaign_row(store, name)
        counts = store.message_counts(row["id"])
        replies = store.top_replies(row["id"])
    data = {
        "name": row["name"],
        "status": row["status"],
        "stop_reason": row["stop_reason"],
        "profile": row["profile"],
        "class": row["traffic_class"],
        "pool": row["pool"],
        "list": row["list_name"],
        "file": row["path"],
        "content_version": row["content_version"],
        "counts": counts,
        "top_replies": [{"reply": t, "count": n} for t, n in replies],
    }
    if json_output:
        console.emit_json(data)
        return
    table = Table(title=f"Campaign {name}", show_header=False)
    for key in ("status", "stop_reason", "profile", "class", "pool", "list", "file"):
        if data[key] is not None:
            table.add_row(key.replace("_", " "), str(data[key]))
    for key, value in counts.items():
        table.add_row(key.replace("_", " "), str(value))
    console.out.print(table)
    if replies:
        top = Table("count", "reply", title="Top replies")
        for text, count in replies:
            top.add_row(str(count), text or "")
        console.out.print(top)


def _set_status(name: str, status: str, allowed_from: tuple[str, ...], verb: str) -> None:
    with _open_store() as store:
        row = _campaign_row(store, name)
        if row["status"] not in allowed_from:
            raise MailctlError(f"campaign '{name}' is {row['status']}; cannot {verb} it")
        store.set_campaign_status(
            row["id"], status, f"{verb}d by hand" if status != "active" else None
        )
        extra = ""
        if status == "cancelled":
            extra = f"; {store.cancel_unsent(row['id'])} unsent messages cancelled"
    console.info(f"campaign {name}: {status}{extra}")


@campaign_app.command("pause")
def campaign_pause(name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Pause a campaign: `send --all` skips it until it is resumed.

    Example: mailctl campaign pause welcome
    """
    _set_status(name, "paused", ("active", "done"), "pause")


@campaign_app.command("resume")
def campaign_resume(name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Resume a paused campaign, or one a circuit breaker stopped (deliberately).

    Example: mailctl campaign resume welcome
    """
    _set_status(name, "active", ("paused", "stopped", "active"), "resume")


@campaign_app.command("cancel")
def campaign_cancel(name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Cancel a campaign for good: its unsent messages are never sent.

    Example: mailctl campaign cancel welcome
    """
    _set_status(name, "cancelled", ("active", "paused", "stopped", "done"), "cancel")


# --------------------------------------------------------------------------- bounces


@bounces_app.command("import")
def bounces_import(
    paths: Annotated[
        list[str], typer.Argument(help="mbox files, Maildir folders, .eml files, or - for stdin.")
    ],
    errors: Annotated[
        Path | None,
        typer.Option(
            help="Append messages that could not be parsed, and unsure reports (read by the "
            "generic path only), to this mbox."
        ),
    ] = None,
    soft_limit: Annotated[
        int, typer.Option(help="Suppress after this many soft bounces on distinct days.", min=1)
    ] = 3,
    soft_window: Annotated[int, typer.Option(help="...within this many days.", min=1)] = 30,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Import bounces and complaints into the suppression list.

    Hard bounces (unknown user or domain) and complaints suppress the address at once;
    soft bounces suppress it (for a while) only after repeated failures on distinct days;
    delays and auto-replies never do. Failures that are the sender's fault (blocklists,
    authentication, policy, content) never suppress anyone. Each report is tied to the
    message it is about. Importing the same mailbox twice changes nothing.

    Example: mailctl bounces import /var/mail/bounces --json
    """
    import time

    from mailctl.bounces.suppression import SoftBouncePolicy, import_reports

    console.set_quiet(quiet or json_output)
    errors_file = errors.open("ab") if errors else None

    def on_error(source: str, raw: bytes, why: str, label: str = "not parsed") -> None:
        console.info(f"{source}: {label}: {why}")
        if errors_file is not None:
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
            errors_file.write(f"From MAILER-DAEMON {stamp}\n".encode())
            errors_file.write(raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From "))
            errors_file.write(b"\n\n")

    try:
        with _open_store() as store, console.progress("Importing reports") as bar:
            result = import_reports(
                store,
                paths,
                policy=SoftBouncePolicy(limit=soft_limit, window_days=soft_window),
                on_message=lambda r: bar.advance(1, status=f"{r.suppressed} suppressed"),
                on_error=on_error,
                on_unsure=lambda source, raw, why: on_error(source, raw, why, "unsure"),
            )
    finally:
        if errors_file is not None:
            errors_file.close()
    if json_output:
        console.emit_json(result.as_dict())
    elif not quiet:
        table = Table(title="Bounce import", show_header=False)
        for key, value in result.as_dict().items():
            if not key.endswith("_sources"):
                table.add_row(key.replace("_", " "), str(value))
        console.out.print(table)


@bounces_app.command("parse")
def bounces_parse(
    paths: Annotated[
        list[str], typer.Argument(help="mbox files, Maildir folders, .eml files, or - for stdin.")
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per message (the stable format).")
    ] = True,
) -> None:
    """Parse bounce reports without touching the database.

    Prints one JSON object per message: source, kind (bounce, delay, complaint, autoreply,
    delivered, unknown), recipients (address, status, action, reason, permanent, suppress,
    diagnostic), tracking_id and original_message_id.

    Example: mailctl bounces parse bounce.eml --json
    """
    from mailctl.bounces.mailbox import iter_messages
    from mailctl.bounces.parse import parse_message
    from mailctl.errors import BounceParseError

    for path in paths:
        if path != "-" and not Path(path).exists():
            raise MailctlError(f"{path}: no such file or directory")
        for source, raw in iter_messages(path):
            try:
                report = parse_message(raw, source)
            except BounceParseError as exc:
                console.error(f"{source}: {exc}")
                continue
            if json_output:
                console.emit_json_line(report.to_json())
            else:
                console.out.print(
                    f"{source}: {report.kind} " + ", ".join(r.address for r in report.recipients)
                )


# --------------------------------------------------------------------------- suppression


def _target(value: str) -> str:
    from mailctl.bounces.suppression import parse_suppression_target
    from mailctl.errors import InvalidAddress

    try:
        return parse_suppression_target(value)
    except InvalidAddress as exc:
        raise UsageError(str(exc)) from None


def _reason(value: str) -> str:
    from mailctl.bounces.suppression import REASONS

    if value not in REASONS:
        raise UsageError(f"reason must be one of {', '.join(REASONS)}")
    return value


@suppress_app.command("list")
def suppress_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List suppressed addresses and domains.

    Example: mailctl suppress list --reason complaint
    """
    with _open_store() as store:
        rows = list(store.iter_suppression(_reason(reason) if reason else None))
    if json_output:
        for row in rows:
            console.emit_json_line(row)
        return
    table = Table("address", "reason", "status", "count", "source")
    for row in rows:
        table.add_row(
            row["address"],
            row["reason"],
            row["status"] or "",
            str(row["count"]),
            row["source"] or "",
        )
    console.out.print(table)
    console.info(f"{len(rows)} suppressed")


@suppress_app.command("add")
def suppress_add(
    address: Annotated[str, typer.Argument(help="An address, or *@domain for a whole domain.")],
    reason: Annotated[
        str, typer.Option(help="manual, unsubscribe, complaint, hard_bounce ...")
    ] = "manual",
) -> None:
    """Suppress an address (or a whole domain with *@domain): it is never sent to.

    Example: mailctl suppress add '*@competitor.example' --reason manual
    """
    target = _target(address)
    with _open_store() as store:
        added = store.suppress(target, _reason(reason), source="cli")
    console.info(f"{target}: {'suppressed' if added else 'already suppressed (updated)'}")


@suppress_app.command("remove")
def suppress_remove(
    address: Annotated[str, typer.Argument(help="An address, or *@domain.")],
) -> None:
    """Remove an address or domain from the suppression list.

    Example: mailctl suppress remove ada@example.com
    """
    target = _target(address)
    with _open_store() as store:
        if not store.unsuppress(target):
            raise MailctlError(f"{target} is not on the suppression list")
    console.info(f"{target}: removed")


@suppress_app.command("check")
def suppress_check(
    address: Annotated[str, typer.Argument(help="The address to look up.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say whether an address is suppressed, and why (exit 0 either way).

    Example: mailctl suppress check ada@example.com
    """
    target = _target(address)
    with _open_store() as store:
        entry = store.suppression_for(target)
    if json_output:
        console.emit_json({"address": target, "suppressed": entry is not None, "entry": entry})
    elif entry is None:
        console.out.print(f"{target} is not suppressed")
    else:
        via = "" if entry["address"] == target else f" via {entry['address']}"
        console.out.print(
            f"{target} is suppressed{via}: {entry['reason']}"
            + (f" ({entry['status']})" if entry["status"] else "")
            + (f", source {entry['source']}" if entry["source"] else "")
        )


@suppress_app.command("import")
def suppress_import(
    file: Annotated[Path, typer.Argument(help="CSV with an address (or email) column.")],
    reason: Annotated[
        str, typer.Option(help="Reason for rows without a reason column.")
    ] = "manual",
) -> None:
    """Import suppressions from a CSV file (e.g. an ESP's export).

    Example: mailctl suppress import unsubscribes.csv --reason unsubscribe
    """
    import time

    from mailctl.bounces.suppression import import_suppression_csv

    with _open_store() as store:
        added, invalid = import_suppression_csv(
            store, file, reason=_reason(reason), now=time.time()
        )
    console.info(f"{added} added, {invalid} invalid rows skipped")


@suppress_app.command("export")
def suppress_export(
    file: Annotated[Path, typer.Argument(help="CSV file to write.")],
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
) -> None:
    """Export the suppression list to CSV.

    Example: mailctl suppress export suppressed.csv
    """
    from mailctl.bounces.suppression import export_suppression_csv

    with _open_store() as store:
        count = export_suppression_csv(store, file, _reason(reason) if reason else None)
    console.info(f"{count} rows written to {file}")


# --------------------------------------------------------------------------- lanes and rules


def _scheduler(store: Any, profile_name: str | None = None) -> Any:
    from mailctl.replies.rules import load_rules
    from mailctl.reputation.lanes import LaneState, Scheduler

    overrides = None
    try:
        profiles = _load_profiles(None)
        overrides = profiles.get(profile_name).rules
    except MailctlError:
        if profile_name:
            raise
    states = [LaneState.from_row(row) for row in store.lane_rows()]
    return Scheduler(load_rules(overrides), states=states)


def _when(timestamp: float | None) -> str:
    import datetime as dt

    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@lanes_app.callback()
def lanes_show(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each lane's state, limits, counters, reason and until when.

    A lane is one sending IP toward one mailbox provider. Throttle replies pause or slow
    only their lane; the state is kept in the database, so a cron run honours a
    suspension set by the run before it.

    Example: mailctl lanes --json
    """
    if ctx.invoked_subcommand is not None:
        return
    import time

    with _open_store() as store:
        snapshots = _scheduler(store).snapshot(time.time())
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
            _when(s.until),
            s.reason or "",
            str(s.limits.connections),
            str(s.limits.per_minute or "-"),
            str(s.sent),
            str(s.deferred),
            str(s.throttled),
        )
    console.out.print(table)
    if not snapshots:
        console.info("no lanes yet: they appear once mail has been sent")


@lanes_app.command("suspend")
def lanes_suspend(
    ip: Annotated[str, typer.Option(help="Sending IP.")],
    provider: Annotated[str, typer.Option(help="Provider, e.g. google, microsoft, yahoo.")],
    for_: Annotated[str, typer.Option("--for", help="How long, e.g. 2h.")] = "1h",
    reason: Annotated[
        str, typer.Option(help="Why (shown in `mailctl lanes`).")
    ] = "suspended by hand",
) -> None:
    """Suspend one lane by hand; the send loop defers its messages until then.

    Example: mailctl lanes suspend --ip 203.0.113.20 --provider yahoo --for 2h --reason "TS03"
    """
    import time

    from mailctl.config.nodes import parse_duration

    try:
        seconds = parse_duration(for_)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    now = time.time()
    with _open_store() as store:
        scheduler = _scheduler(store)
        scheduler.lane(ip, provider).suspend(now, now + seconds, reason)
        store.upsert_lanes([st.to_row() for st in scheduler.changed_states()])
        store.add_lane_event(
            at=now,
            ip=ip,
            provider=provider,
            kind="suspended",
            until=now + seconds,
            reason=reason,
            rule="manual",
            campaign_id=None,
        )
    console.info(f"lane {ip} -> {provider} suspended until {_when(now + seconds)}")


@lanes_app.command("resume")
def lanes_resume(
    ip: Annotated[str, typer.Option(help="Sending IP.")],
    provider: Annotated[str, typer.Option(help="Provider.")],
    ramp: Annotated[
        bool, typer.Option(help="Come back gradually (a quarter of the rate, +25% per step).")
    ] = True,
) -> None:
    """End a lane's pause now (it ramps back up gradually unless --no-ramp).

    Example: mailctl lanes resume --ip 203.0.113.20 --provider yahoo
    """
    import time

    now = time.time()
    with _open_store() as store:
        scheduler = _scheduler(store)
        scheduler.lane(ip, provider).resume(now, ramp=ramp)
        store.upsert_lanes([st.to_row() for st in scheduler.changed_states()])
        released = store.release_lane_deferrals(ip, provider, now)
        store.add_lane_event(
            at=now,
            ip=ip,
            provider=provider,
            kind="resumed",
            until=None,
            reason="resumed by hand",
            rule="manual",
            campaign_id=None,
        )
    console.info(
        f"lane {ip} -> {provider} resumed"
        + (" (ramping up)" if ramp else "")
        + f"; {released} waiting messages are due now"
    )


@rules_app.command("test")
def rules_test(
    reply: Annotated[str, typer.Argument(help='The SMTP reply, e.g. "421 4.7.28 ... gsmtp".')],
    provider: Annotated[str | None, typer.Option(help="The provider the reply came from.")] = None,
    profile: Annotated[str | None, typer.Option(help="Use this profile's rule overrides.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Explain what mailctl does with an SMTP reply: scope, suppression, lane action.

    Example: mailctl rules test "421 4.7.0 [TSS04] Messages from 192.0.2.1 deferred" \\
      --provider yahoo
    """
    from mailctl.replies.classify import classify_reply, parse_reply_code
    from mailctl.replies.rules import load_rules

    overrides = _load_profiles(None).get(profile).rules if profile else None
    rules = load_rules(overrides)
    code = parse_reply_code(reply)
    verdict = classify_reply(code, reply, provider)
    found = rules.match(reply, provider)
    data = {
        "reply": reply,
        "provider": provider,
        "code": code,
        "status": verdict.status,
        "scope": verdict.scope.value,
        "permanent": verdict.permanent,
        "reason": verdict.reason,
        "suppress": verdict.suppress,
        "classifier_rule": verdict.rule,
        "lane_rule": found.rule.id if found else None,
        "lane_action": found.rule.action.value if found else None,
        "duration": found.rule.duration if found else None,
        "retry_after": found.retry_after if found else None,
    }
    if json_output:
        console.emit_json(data)
        return
    table = Table(show_header=False, title="Decision")
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "" if value is None else str(value))
    console.out.print(table)


@rules_app.command("list")
def rules_list(
    profile: Annotated[str | None, typer.Option(help="Include this profile's overrides.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List provider lane limits and reply rules.

    Example: mailctl rules list --json
    """
    from mailctl.replies.rules import load_rules

    overrides = _load_profiles(None).get(profile).rules if profile else None
    rules = load_rules(overrides)
    limits = {name: lim.as_dict() for name, lim in rules.limits.items()}
    replies = [
        {
            "id": r.id,
            "match": r.pattern.pattern,
            "action": r.action.value,
            "providers": list(r.providers),
            "duration": r.duration,
            "trigger": f"{r.trigger.count} in {r.trigger.window:g}s" if r.trigger else None,
        }
        for r in rules.replies
    ]
    if json_output:
        console.emit_json({"limits": limits, "replies": replies})
        return
    lim = Table(
        "provider",
        "connections",
        "msgs/conn",
        "per min",
        "per hour",
        "per day",
        "tls",
        title="Lane limits",
    )
    for name, values in limits.items():
        lim.add_row(
            name,
            *(
                str(values.get(k) if values.get(k) is not None else "-")
                for k in (
                    "connections",
                    "messages_per_connection",
                    "per_minute",
                    "per_hour",
                    "per_day",
                    "tls",
                )
            ),
        )
    console.out.print(lim)
    rep = Table("id", "providers", "action", "duration", "trigger", title="Reply rules")
    for rule in rules.replies:
        rep.add_row(
            rule.id,
            ",".join(rule.providers) or "any",
            rule.action.value,
            "" if rule.duration is None else f"{rule.duration:g}s",
            f"{rule.trigger.count} in {rule.trigger.window:g}s" if rule.trigger else "",
        )
    console.out.print(rep)


# --------------------------------------------------------------------------- warm-up


def _warmup_ips(profile_name: str | None, ip: str | None) -> list[tuple[str, Any, str]]:
    """(ip, setting or None, profile name) for the IPs the command is about."""
    from mailctl.reputation.budget import profile_settings

    profiles = _load_profiles(None)
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
                found.append((address, setting, name))
    if ip is not None and not found:
        raise MailctlError(f"IP {ip} is in no profile's pools ({profiles.path})")
    return found


def _as_of(date_text: str | None) -> Any:
    import datetime as dt

    if date_text is None:
        return dt.datetime.now(dt.UTC)
    try:
        day = dt.date.fromisoformat(date_text)
    except ValueError:
        raise UsageError(f"--date: '{date_text}' is not a date (YYYY-MM-DD)") from None
    return dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)


def _bar(value: int, top: int, width: int = 40) -> str:
    """A bar on a log scale: ramps span 50 to 100,000 a day, and every day must show."""
    import math

    if top <= 0 or value <= 0:
        return ""
    return "█" * max(1, round(width * math.log10(1 + value) / math.log10(1 + top)))


@warmup_app.command("plan")
def warmup_plan(
    ip: Annotated[str | None, typer.Option(help="Only this sending IP.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only this profile's IPs.")] = None,
    days: Annotated[int, typer.Option(help="How many upcoming sending days to show.", min=1)] = 14,
    date: Annotated[
        str | None, typer.Option(help="Plan as of this day (YYYY-MM-DD) [default: today].")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The warm-up ramp of each sending IP: past days, upcoming days, target date.

    Stages advance by sending days (days the IP actually sent), not calendar days. A day
    with throttles, deferrals above 5%, bounces above 2% or complaints above 0.1% holds the
    stage; a block steps it back. The chart shows each day's cap and what was sent.

    Example: mailctl warmup plan --profile direct --days 30
    """
    from mailctl.reputation.budget import events, history
    from mailctl.reputation.warmup import local_day, plan

    now = _as_of(date)
    result = []
    with _open_store() as store:
        for address, setting, profile_name in _warmup_ips(profile, ip):
            today = local_day(setting, now)
            p = plan(setting, history(store, address), events(store, address), today, days)
            result.append((address, profile_name, setting, p))
    if json_output:
        console.emit_json([_plan_json(a, n, s, p) for a, n, s, p in result])
        return
    if not result:
        console.info("no sending IPs with a warm-up in profiles.yaml")
    for address, profile_name, setting, p in result:
        state = p.state
        title = f"{address} ({profile_name})"
        if setting is None:
            console.out.print(f"{title}: warm (no warm-up setting); only lane limits apply")
            continue
        console.out.print(
            f"[bold]{title}[/bold]: {setting.name} to {setting.target_daily:,}/day, "
            f"stage {state.stage}/{state.stages}, {state.status.value}; today's cap "
            f"{state.cap_today if state.cap_today is not None else '-'}; target reached "
            f"{p.target_reached_on or 'not in sight'}"
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
                "",
                "planned" + (f" ({caps})" if caps else ""),
                "░" * len(_bar(planned.cap, top)),
            )
        console.out.print(table)


def _plan_json(address: str, profile_name: str, setting: Any, p: Any) -> dict[str, Any]:
    state = p.state
    return {
        "ip": address,
        "profile": profile_name,
        "schedule": setting.name if setting else None,
        "target_daily": setting.target_daily if setting else None,
        "status": state.status.value,
        "stage": state.stage,
        "stages": state.stages,
        "cap_today": state.cap_today,
        "sending_days": state.sending_days,
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


@warmup_app.command("status")
def warmup_status(
    date: Annotated[
        str | None, typer.Option(help="As of this day (YYYY-MM-DD) [default: now].")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per IP and provider today: cap, sent, remaining, stage, state.

    Example: mailctl warmup status --json
    """
    from mailctl.reputation.budget import WarmupBudget
    from mailctl.reputation.warmup import provider_caps

    now = _as_of(date)
    timestamp = now.timestamp()
    rows = []
    with _open_store() as store:
        ips = _warmup_ips(None, None)
        budget = WarmupBudget(store, {a: s for a, s, _ in ips})
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
    import datetime as dt
    import time

    from mailctl.warmup_schedule import PRESET_NAMES

    if preset is not None and preset not in PRESET_NAMES:
        raise UsageError(f"--preset must be one of {', '.join(PRESET_NAMES)}")
    _warmup_ips(None, ip)  # the IP must be one of ours
    day = _as_of(date).date() if date else dt.date.today()
    with _open_store() as store:
        store.add_warmup_event(ip, day.isoformat(), kind, preset, time.time())
    console.info(f"{ip}: warm-up {kind}" + (f" ({preset})" if preset else "") + f" from {day}")


@warmup_app.command("start")
def warmup_start(
    ip: Annotated[str, typer.Argument(help="Sending IP.")],
    preset: Annotated[str, typer.Option(help="sendgrid, sparkpost, ses45 or linear.")],
    date: Annotated[
        str | None, typer.Option(help="First day (YYYY-MM-DD) [default: today].")
    ] = None,
) -> None:
    """(Re)start an IP's warm-up at stage 1 with a preset, without editing history.

    Example: mailctl warmup start 203.0.113.20 --preset ses45 --date 2026-12-01
    """
    _warmup_event(ip, "start", preset, date)


@warmup_app.command("hold")
def warmup_hold(ip: Annotated[str, typer.Argument(help="Sending IP.")]) -> None:
    """Freeze an IP's stage (it keeps sending at today's cap) until `warmup start`.

    Example: mailctl warmup hold 203.0.113.20
    """
    _warmup_event(ip, "hold", None, None)


@warmup_app.command("reset")
def warmup_reset(ip: Annotated[str, typer.Argument(help="Sending IP.")]) -> None:
    """Send an IP back to stage 1 of its schedule (e.g. after a block or a long pause).

    Example: mailctl warmup reset 203.0.113.20
    """
    _warmup_event(ip, "reset", None, None)


# --------------------------------------------------------------------------- check and dkim


def _print_check(report: Any) -> None:
    colour = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    table = Table("check", "subject", "result", "detail", "fix", title="Preflight checks")
    for c in report.checks:
        table.add_row(
            c.id.value,
            c.subject,
            f"[{colour[c.status.value]}]{c.status.value}[/]",
            _escape(c.detail),
            _escape(c.fix or ""),
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
            "[green]met[/]" if status.met else "[red]not met[/]",
            ", ".join(status.missing),
            ", ".join(status.unchecked),
        )
    console.out.print(req)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command("check")
def check(
    profile: Annotated[
        str | None, typer.Option(help="Profile to check [default: the default].")
    ] = None,
    campaign: Annotated[
        Path | None, typer.Option(help="Campaign file: its From domain, class and unsubscribe.")
    ] = None,
    zone: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE", help="Answer from this zone file instead of live DNS (repeatable)."
        ),
    ] = None,
    fast: Annotated[bool, typer.Option(help="Only the quick subset `send` runs.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
    from mailctl.config.campaign import load_campaign
    from mailctl.dns.preflight import check as run_check
    from mailctl.dns.preflight import resolver_for

    profiles = _load_profiles(campaign.parent if campaign else None)
    loaded = load_campaign(campaign) if campaign else None
    chosen = profiles.get(profile or (loaded.profile if loaded else None))
    result = run_check(resolver_for(zone or []), chosen, loaded, fast=fast)
    if json_output:
        console.emit_json(result.as_dict())
    else:
        _print_check(result)
    if result.failed:
        raise typer.Exit(1)


@dkim_app.command("keygen")
def dkim_keygen(
    selector: Annotated[str, typer.Option(help="Selector, e.g. s2026.")],
    domain: Annotated[str, typer.Option(help="Signing domain (d=), e.g. example.com.")],
    bits: Annotated[int, typer.Option(help="RSA key size.")] = 2048,
    algorithm: Annotated[str, typer.Option(help="rsa-sha256 or ed25519-sha256.")] = "rsa-sha256",
    out: Annotated[
        Path | None, typer.Option(help="Private key file [default: DOMAIN.SELECTOR.pem].")
    ] = None,
) -> None:
    """Create a DKIM key pair: the private key goes to a file (mode 0600), the DNS TXT
    record to publish is printed. Then add the key to the profile's `dkim:` list.

    Example: mailctl dkim keygen --selector s2026 --domain example.com
    """
    import os

    from mailctl.errors import DkimError
    from mailctl.message.dkim import generate_keypair, txt_record

    path = out or Path(f"{domain}.{selector}.pem")
    if path.exists():
        raise MailctlError(f"{path} exists; refusing to overwrite a private key")
    try:
        pem, txt = generate_keypair(bits, algorithm=algorithm)
    except (DkimError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    console.out.print(
        txt_record(selector, domain, txt), markup=False, highlight=False, soft_wrap=True
    )
    console.info(f"private key written to {path} (keep it secret); publish the record above")


# --------------------------------------------------------------------------- report


@app.command("report")
def report(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign name [default: all campaigns, newest first].")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (stable; see README).")
    ] = False,
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
    import time

    from mailctl.report.data import build_report
    from mailctl.report.html import render_html
    from mailctl.report.tables import render_tables

    with _open_store() as store:
        data = build_report(store, campaign, now=time.time())
        _add_warmup_to_report(store, data)
    if html_file is not None:
        try:
            html_file.write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            raise MailctlError(f"{html_file}: cannot write: {exc.strerror}") from None
        console.info(f"wrote {html_file}")
    if json_output:
        console.emit_json(data)
        return
    for table in render_tables(data):
        console.out.print(table)


def _add_warmup_to_report(store: Any, data: dict[str, Any]) -> None:
    """Each sending IP's warm-up stage, when profiles.yaml can be found."""
    import time

    try:
        profiles = _load_profiles(None)
    except MailctlError:
        return
    from mailctl.reputation.budget import WarmupBudget, profile_settings

    settings = profile_settings(*profiles.profiles.values())
    budget = WarmupBudget(store, settings)
    now = time.time()
    for row in data.get("by_ip", []):
        ip = row.get("ip")
        if ip in settings and settings[ip] is not None:
            state = budget.state(ip, now)
            row["warmup"] = {
                "stage": state.stage,
                "status": state.status.value,
                "cap": state.cap_today,
            }


# --------------------------------------------------------------------------- sim


@app.command("sim")
def sim(
    provider: Annotated[
        str, typer.Option(help="Behave like google, microsoft, yahoo, generic or sandbox.")
    ] = "generic",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 2525,
    mbox: Annotated[
        Path | None, typer.Option(help="Append DSNs for asynchronous bounces to this mbox.")
    ] = None,
    maildir: Annotated[Path | None, typer.Option(help="Store accepted messages here.")] = None,
    log: Annotated[
        Path | None, typer.Option(help="Append one JSON line per accepted recipient.")
    ] = None,
) -> None:
    """Run a simulated mailbox provider on this machine, for rehearsal.

    It answers like the real provider: its throttle replies once a source IP sends too
    fast, 550 5.1.1 for local parts starting with `unknown`, greylisting and more (see
    mailctl/sim/). Point a profile at it with mx_override. Stop with Ctrl-C.

    Example: mailctl sim --provider google --port 2525 --mbox bounces.mbox
    """
    from mailctl.sim.server import SimConfig, preset, run_forever

    config = SimConfig(
        behaviour=preset(provider), host=host, port=port, mbox=mbox, maildir=maildir, jsonl=log
    )

    def on_event(event: Any) -> None:
        console.err.print(
            f"sim[{provider}] {event.kind}: {event.message}", markup=False, highlight=False
        )

    try:
        run_forever(config, on_event=on_event)
    except KeyboardInterrupt:
        console.info("sim stopped")


# --------------------------------------------------------------------------- db


@db_app.command("migrate")
def db_migrate() -> None:
    """Bring the database (--db / MAILCTL_DB) to this mailctl's schema version.

    Example: mailctl --db postgresql://mailctl@db1/mail db migrate
    """
    from mailctl.store.factory import open_store

    with open_store(state.db, migrate=False) as store:
        before = store.schema_version  # type: ignore[attr-defined]
        store.migrate()  # type: ignore[attr-defined]
        after = store.schema_version  # type: ignore[attr-defined]
        where = store.location
    if after == before:
        console.info(f"{where}: schema version {after}, up to date")
    else:
        console.info(f"{where}: schema version {before} -> {after}")


@db_app.command("copy")
def db_copy(
    source: Annotated[str, typer.Argument(metavar="SRC", help="SQLite file (or sqlite:///path).")],
    destination: Annotated[
        str, typer.Argument(metavar="DST", help="postgresql://user@host/dbname, empty.")
    ],
) -> None:
    """Copy a whole SQLite database into an empty PostgreSQL one: campaigns and their
    history, suppression, warm-up state, lanes. The source is only read (and brought to
    the current schema version first).

    Example: mailctl db copy mailctl.db postgresql://mailctl@db1/mail
    """
    from mailctl.store.copy import copy_database
    from mailctl.store.factory import backend_of, open_store, sqlite_path

    if backend_of(source) == "sqlite" and not sqlite_path(source).exists():
        raise UsageError(f"{sqlite_path(source)}: no such database file")
    with open_store(source) as src, open_store(destination) as dst:
        copied = copy_database(src, dst)
        where = dst.location
    total = sum(copied.values())
    console.info(
        f"copied {total} rows into {where}: "
        + ", ".join(f"{table} {n}" for table, n in copied.items() if n)
    )


# --------------------------------------------------------------------------- entry point


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    state.debug = "--debug" in args
    console.set_quiet(False)
    try:
        result = command.main(args=args, prog_name="mailctl", standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            return result  # typer.Exit(code) comes back as the return value here
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        console.error("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        exc.show(file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except MailctlError as exc:
        if state.debug:
            traceback.print_exc()
        console.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no tracebacks by default
        if state.debug:
            traceback.print_exc()
        console.error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return 1
    return 0


def main() -> None:
    sys.exit(run())
