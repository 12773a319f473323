"""A new SQLite database gets its schema in one step (mailctl/store/sqlite_fresh.py): the
same tables, columns and indexes the migrations build, at the same version, and an older
database still takes the migrations it lacks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailctl.store import sqlite_fresh
from mailctl.store.sqlite import SqliteStore
from mailctl.store.sqlite_schema import MIGRATIONS


def schema(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            *conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"),
            *((t, *c) for t in sorted(tables) for c in conn.execute(f"PRAGMA table_info({t})")),
            *((t, *i) for t in sorted(tables) for i in conn.execute(f"PRAGMA index_list({t})")),
            ("version", conn.execute("PRAGMA user_version").fetchone()[0]),
        ]
    finally:
        conn.close()


def test_the_fresh_schema_is_the_one_the_migrations_build() -> None:
    assert sqlite_fresh.VERSION == len(MIGRATIONS), (
        "a migration was added: run `python -m mailctl.store.sqlite_fresh`"
    )
    assert list(sqlite_fresh.STATEMENTS) == sqlite_fresh.built_by_migrations(), (
        "the migrations changed: run `python -m mailctl.store.sqlite_fresh`"
    )


def test_a_new_database_equals_one_migrated_step_by_step(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "fresh.db").close()
    stepped = SqliteStore.open(tmp_path / "stepped.db", migrate=False)
    for version, migration in enumerate(MIGRATIONS, start=1):  # the path of an upgrade
        with stepped.transaction():
            for statement in migration:
                stepped.conn.execute(statement)
            stepped.conn.execute(f"PRAGMA user_version = {version}")
    stepped.close()
    assert schema(tmp_path / "fresh.db") == schema(tmp_path / "stepped.db")


def test_an_older_database_takes_the_migrations_it_lacks(tmp_path: Path) -> None:
    old = SqliteStore.open(tmp_path / "old.db", migrate=False)
    with old.transaction():
        for statement in MIGRATIONS[0]:
            old.conn.execute(statement)
        old.conn.execute("PRAGMA user_version = 1")
    old.migrate()
    assert old.schema_version == len(MIGRATIONS)
    old.close()
    SqliteStore.open(tmp_path / "fresh.db").close()
    assert schema(tmp_path / "old.db") == schema(tmp_path / "fresh.db")
