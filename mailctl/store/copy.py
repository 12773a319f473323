"""`mailctl db copy`: move a whole database from one backend to another (SQLite into
PostgreSQL, as a user outgrows one machine), keeping history, suppression, warm-up state,
lanes and reports: every table, row for row, ids included.

Both ends are brought to the same schema version first (the backends number migrations
alike), and the destination must hold no data. Imports only the store's backends and
mailctl.errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import sqlite_utils

from mailctl.errors import StoreError
from mailctl.store.base import Store

# Parents before children (foreign keys), every table of the schema.
TABLES = (
    "recipients", "lists", "list_members", "suppression", "campaigns", "messages", "replies",
    "runs", "bounce_events", "bounce_recipients", "ip_days", "lanes", "lane_events",
    "mx_cache", "warmup_events", "list_unsubscribes", "remote_mailboxes", "remote_seen",
    "notices", "send_grants",
)  # fmt: skip
_BATCH = 5000
# SQLite tables without a rowid to order by (their primary key orders them).
_WITHOUT_ROWID = (
    "list_members", "ip_days", "list_unsubscribes", "remote_seen", "send_grants",
)  # fmt: skip


def copy_database(
    source: Store, destination: Store, on_table: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of `source` into the empty `destination`; rows copied per table."""
    src_version = getattr(source, "schema_version", None)
    dst_version = getattr(destination, "schema_version", None)
    if src_version != dst_version:
        raise StoreError(
            f"{source.location} is at schema version {src_version} and "
            f"{destination.location} at {dst_version}; run `mailctl db migrate` on both"
        )
    reader, writer = _reader(source), _writer(destination)
    unknown = reader.tables() - set(TABLES)
    if unknown:  # a table this list forgot would be left behind without a word
        raise StoreError(
            f"{source.location} has tables db copy does not know: {', '.join(sorted(unknown))}"
        )
    if any(writer.count(table) for table in TABLES):
        raise StoreError(f"{destination.location} already holds data; copy into an empty one")
    copied: dict[str, int] = {}
    with destination.transaction():
        for table in TABLES:
            columns = reader.columns(table)
            copied[table] = writer.load(table, columns, reader.rows(table, columns))
            if on_table is not None:
                on_table(table, copied[table])
        writer.finish([t for t in TABLES if "id" in reader.columns(t)])
    return copied


class _SqliteReader:
    def __init__(self, store: Any) -> None:
        self.conn = store.conn
        self.db = sqlite_utils.Database(self.conn)

    def tables(self) -> set[str]:
        """Every table of the schema (SQLite's own bookkeeping tables excluded)."""
        return {name for name in self.db.table_names() if not name.startswith("sqlite_")}

    def columns(self, table: str) -> list[str]:
        return list(self.db.table(table).columns_dict)

    def rows(self, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        order = "1" if table in _WITHOUT_ROWID else "rowid"
        cursor = self.conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        while batch := cursor.fetchmany(_BATCH):
            yield from batch


class _PostgresWriter:
    def __init__(self, store: Any) -> None:
        self.store = store

    def count(self, table: str) -> int:
        return int(self.store._x(f"SELECT count(*) FROM {table}").fetchone()[0])

    def load(self, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> int:
        count = 0
        with self.store.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        return count

    def finish(self, tables_with_ids: list[str]) -> None:
        """Identity columns continue after the copied ids."""
        for table in tables_with_ids:
            row = self.store._x("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
            if row and row[0]:
                self.store._x(
                    f"SELECT setval(%s, coalesce((SELECT max(id) FROM {table}), 0) + 1, false)",
                    (row[0],),
                )


def _reader(store: Store) -> _SqliteReader:
    from mailctl.store.sqlite import SqliteStore

    if not isinstance(store, SqliteStore):
        raise StoreError(f"{store.location}: db copy reads from a SQLite database")
    return _SqliteReader(store)


def _writer(store: Store) -> _PostgresWriter:
    from mailctl.store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):
        raise StoreError(f"{store.location}: db copy writes into a PostgreSQL database")
    return _PostgresWriter(store)
