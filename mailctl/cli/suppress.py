"""`mailctl suppress`: the suppression list every send honours.

Part of the CLI: parses, calls `mailctl.bounces.suppression` and the store, formats. Must not
be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailctl.bounces.suppression import (
    REASONS,
    export_suppression_csv,
    import_suppression_csv,
    parse_suppression_target,
)
from mailctl.cli import console
from mailctl.cli.context import open_store
from mailctl.cli.options import CONTEXT, JsonLinesOption, JsonOption, ReasonFilterOption
from mailctl.errors import InvalidAddress, MailctlError, UsageError

app = typer.Typer(help="The suppression list every send honours.", context_settings=CONTEXT)


def _target(value: str) -> str:
    try:
        return parse_suppression_target(value)
    except InvalidAddress as exc:
        raise UsageError(str(exc)) from None


def _reason(value: str) -> str:
    if value not in REASONS:
        raise UsageError(f"reason must be one of {', '.join(REASONS)}")
    return value


@app.command("list")
def suppress_list(
    reason: ReasonFilterOption = None,
    json_output: JsonLinesOption = False,
) -> None:
    """List suppressed addresses and domains.

    Example: mailctl suppress list --reason complaint
    """
    with open_store() as store:
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


@app.command("add")
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
    with open_store() as store:
        added = store.suppress(target, _reason(reason), source="cli")
    console.info(f"{target}: {'suppressed' if added else 'already suppressed (updated)'}")


@app.command("remove")
def suppress_remove(
    address: Annotated[str, typer.Argument(help="An address, or *@domain.")],
) -> None:
    """Remove an address or domain from the suppression list.

    Example: mailctl suppress remove ada@example.com
    """
    target = _target(address)
    with open_store() as store:
        if not store.unsuppress(target):
            raise MailctlError(f"{target} is not on the suppression list")
    console.info(f"{target}: removed")


@app.command("check")
def suppress_check(
    address: Annotated[str, typer.Argument(help="The address to look up.")],
    json_output: JsonOption = False,
) -> None:
    """Say whether an address is suppressed, and why (exit 0 either way).

    Example: mailctl suppress check ada@example.com
    """
    target = _target(address)
    with open_store() as store:
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


@app.command("import")
def suppress_import(
    file: Annotated[Path, typer.Argument(help="CSV with an address (or email) column.")],
    reason: Annotated[
        str, typer.Option(help="Reason for rows without a reason column.")
    ] = "manual",
) -> None:
    """Import suppressions from a CSV file (e.g. an ESP's export).

    Example: mailctl suppress import unsubscribes.csv --reason unsubscribe
    """
    with open_store() as store:
        added, invalid = import_suppression_csv(
            store, file, reason=_reason(reason), now=time.time()
        )
    console.info(f"{added} added, {invalid} invalid rows skipped")


@app.command("export")
def suppress_export(
    file: Annotated[Path, typer.Argument(help="CSV file to write.")],
    reason: ReasonFilterOption = None,
) -> None:
    """Export the suppression list to CSV.

    Example: mailctl suppress export suppressed.csv
    """
    with open_store() as store:
        count = export_suppression_csv(store, file, _reason(reason) if reason else None)
    console.info(f"{count} rows written to {file}")
