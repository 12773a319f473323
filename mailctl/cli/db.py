"""`mailctl db`: the database itself — bring it up to date, copy it into PostgreSQL.

Part of the CLI: parses, calls `mailctl.store` (factory, copy), formats. Must not be imported
by anything outside mailctl/cli.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from mailctl.cli import console
from mailctl.cli.context import state
from mailctl.cli.options import CONTEXT
from mailctl.errors import UsageError
from mailctl.message.tracking import key_file_for as tracking_key_file
from mailctl.store.copy import copy_database
from mailctl.store.factory import backend_of, open_store, sqlite_path
from mailctl.unsubscribe.tokens import key_file_for as unsubscribe_key_file

app = typer.Typer(
    help="The database itself: migrate it, copy it to PostgreSQL.", context_settings=CONTEXT
)


@app.command("migrate")
def db_migrate() -> None:
    """Bring the database (--db / MAILCTL_DB) to this mailctl's schema version.

    Example: mailctl --db postgresql://mailctl@db1/mail db migrate
    """
    with open_store(state.db, migrate=False) as store:
        before = store.schema_version
        store.migrate()
        after = store.schema_version
        where = store.location
    if after == before:
        console.info(f"{where}: schema version {after}, up to date")
    else:
        console.info(f"{where}: schema version {before} -> {after}")


@app.command("copy")
def db_copy(
    source: Annotated[str, typer.Argument(metavar="SRC", help="SQLite file (or sqlite:///path).")],
    destination: Annotated[
        str, typer.Argument(metavar="DST", help="postgresql://user@host/dbname, empty.")
    ],
) -> None:
    """Copy a whole SQLite database into an empty PostgreSQL one: campaigns and their
    history, suppression, warm-up state, lanes, and the tracking and unsubscribe keys kept
    beside the file (hosts then share them through the database). The source is only read
    (and brought to the current schema version first).

    Example: mailctl db copy mailctl.db postgresql://mailctl@db1/mail
    """
    if backend_of(source) == "sqlite" and not sqlite_path(source).exists():
        raise UsageError(f"{sqlite_path(source)}: no such database file")
    with open_store(source) as src, open_store(destination) as dst:
        copied = copy_database(src, dst)
        where = dst.location
        # The keys beside the file go into the database, so reports of mail sent before the
        # move still correlate and unsubscribe links already sent keep working.
        for name, key_file in (
            ("tracking", tracking_key_file(str(sqlite_path(source)))),
            ("unsubscribe", unsubscribe_key_file(sqlite_path(source))),
        ):
            if key_file.exists():
                dst.database_key(name, partial(str.strip, key_file.read_text(encoding="ascii")))
    total = sum(copied.values())
    console.info(
        f"copied {total} rows into {where}: "
        + ", ".join(f"{table} {n}" for table, n in copied.items() if n)
    )
