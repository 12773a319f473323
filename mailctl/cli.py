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

import click
import typer
from rich.table import Table

from mailctl import __version__, console
from mailctl.errors import MailctlError

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
app.add_typer(recipients_app, name="recipients", no_args_is_help=True)
app.add_typer(suppress_app, name="suppress", no_args_is_help=True)


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
        typer.Option("--db", help="SQLite database file [default: $MAILCTL_DB or ./mailctl.db]"),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            "--profiles",
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
    from mailctl.store import Store

    return Store.open(state.db)


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
    from mailctl.recipients import RejectsWriter, import_csv

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


# --------------------------------------------------------------------------- entry point


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    state.debug = "--debug" in args
    console.set_quiet(False)
    try:
        command.main(args=args, prog_name="mailctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        console.error("aborted")
        return 130
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
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
