"""`mailctl bounces`: read bounce and complaint mailboxes into the suppression list.

Part of the CLI: parses, calls `mailctl.bounces`, formats. Must not be imported by anything
outside mailctl/cli.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailctl.bounces.mailbox import iter_messages
from mailctl.bounces.parse import parse_message
from mailctl.bounces.suppression import SoftBouncePolicy, import_reports
from mailctl.cli import console
from mailctl.cli.context import open_store
from mailctl.cli.options import (
    CONTEXT,
    JsonPerMessageOption,
    JsonSummaryOption,
    MailboxPaths,
    QuietOption,
)
from mailctl.errors import BounceParseError, MailctlError

app = typer.Typer(
    help="Read bounce and complaint mailboxes (mbox, Maildir, .eml).", context_settings=CONTEXT
)


@app.command("import")
def bounces_import(
    paths: MailboxPaths,
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
    json_output: JsonSummaryOption = False,
    quiet: QuietOption = False,
) -> None:
    """Import bounces and complaints into the suppression list.

    Hard bounces (unknown user or domain) and complaints suppress the address at once;
    soft bounces suppress it (for a while) only after repeated failures on distinct days;
    delays and auto-replies never do. Failures that are the sender's fault (blocklists,
    authentication, policy, content) never suppress anyone. Each report is tied to the
    message it is about. Importing the same mailbox twice changes nothing.

    Example: mailctl bounces import /var/mail/bounces --json
    """
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
        with open_store() as store, console.progress("Importing reports") as bar:
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


@app.command("parse")
def bounces_parse(
    paths: MailboxPaths,
    json_output: JsonPerMessageOption = True,
) -> None:
    """Parse bounce reports without touching the database.

    Prints one JSON object per message: source, kind (bounce, delay, complaint, autoreply,
    delivered, unknown), recipients (address, status, action, reason, permanent, suppress,
    diagnostic), tracking_id and original_message_id.

    Example: mailctl bounces parse bounce.eml --json
    """
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
