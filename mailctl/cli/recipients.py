"""`mailctl recipients`: import and inspect recipients.

Part of the CLI: parses, calls `mailctl.recipients` and the store, formats. Must not be
imported by anything outside mailctl/cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailctl.cli import console, displays
from mailctl.cli.context import open_store
from mailctl.cli.options import (
    CONTEXT,
    JsonLinesOption,
    JsonOption,
    JsonSummaryOption,
    ListOption,
    QuietOption,
)
from mailctl.errors import MailctlError, UsageError
from mailctl.recipients.csv_import import Reject, RejectsWriter, import_csv

app = typer.Typer(help="Import and inspect recipients.", context_settings=CONTEXT)


@app.command("import")
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
    json_output: JsonSummaryOption = False,
    quiet: QuietOption = False,
) -> None:
    """Import recipients from a CSV file, validated and deduplicated.

    Every column besides the address becomes a template field. Invalid rows are rejected
    with their line number and never stop the import; re-importing a file changes nothing.

    Example: mailctl recipients import customers.csv --list customers --rejects bad.csv
    """
    console.set_quiet(quiet or json_output)
    rejects_writer = RejectsWriter(rejects, inputs=(file,)) if rejects else None
    shown = 0

    def on_reject(reject: Reject, header: list[str]) -> None:
        nonlocal shown
        if rejects_writer:
            rejects_writer(reject, header)
        if shown < 10:
            console.info(f"{file}:{reject.line}: rejected: {reject.reason}")
        shown += 1

    size = file.stat().st_size if file.exists() else 0
    with open_store() as store, displays.progress(f"Importing {file.name}", size) as bar:
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


@app.command("list")
def recipients_list(
    list_name: ListOption = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Show at most this many [default: 50 in the table, all with --json]."),
    ] = None,
    json_output: JsonLinesOption = False,
) -> None:
    """Show recipients and their fields.

    Example: mailctl recipients list --list customers --limit 10
    """
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, not {limit}")
    with open_store() as store:
        if list_name and not store.list_exists(list_name):
            raise MailctlError(f"no list named '{list_name}'")
        if json_output:
            rows = store.iter_recipients(list_name, limit)
            for row in rows:
                console.emit_json_line({"email": row["email"], "fields": row["fields"]})
            return
        limit = 50 if limit is None else limit
        rows = store.iter_recipients(list_name, limit)
        table = Table("email", "fields")
        for row in rows:
            fields = ", ".join(f"{k}={v}" for k, v in row["fields"].items())
            table.add_row(row["email"], fields)
        console.out.print(table)
        total = store.count_recipients(list_name)
        if total > limit:
            console.info(f"showing {limit} of {total}; use --limit or --json")


@app.command("count")
def recipients_count(
    list_name: ListOption = None,
    json_output: JsonOption = False,
) -> None:
    """Count recipients, in total and per list.

    Example: mailctl recipients count --json
    """
    with open_store() as store:
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
