"""Choosing the backend: `open_store(url_or_path)` and what `--db` / MAILCTL_DB may name.

A plain path or ``sqlite:///path`` opens SQLite (the embedded default: ./mailctl.db);
``postgresql://user@host/dbname`` (or ``postgres://``) opens PostgreSQL. Bad URLs raise
`StoreUrlError`. Imports the store's backends lazily (psycopg is needed only for
PostgreSQL) and mailctl.errors; nothing above the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mailctl.errors import StoreUrlError
from mailctl.store.urls import redact

if TYPE_CHECKING:
    from mailctl.store.base import Store

DEFAULT_DB = "mailctl.db"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def resolve_db(explicit: str | Path | None) -> str:
    """--db, else MAILCTL_DB, else ./mailctl.db (as given: a path or a URL)."""
    if explicit:
        return str(explicit)
    return os.environ.get("MAILCTL_DB") or DEFAULT_DB


def backend_of(target: str) -> str:
    """'sqlite' or 'postgresql' for a --db value; raises StoreUrlError for other URLs."""
    if "://" not in target:
        return "sqlite"
    scheme = target.split("://", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    raise StoreUrlError(
        f"--db {redact(target)}: unknown database URL scheme {scheme!r}; "
        "use a file path, sqlite:///path or postgresql://user@host/dbname"
    )


def sqlite_path(target: str) -> Path:
    """The file a SQLite --db value names (``sqlite:///rel`` or ``sqlite:////abs``)."""
    if target.lower().startswith("sqlite://"):
        rest = target[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise StoreUrlError(f"--db {target}: a SQLite URL is sqlite:///path/to/file.db")
        return Path(rest[1:])
    return Path(target)


def open_store(target: str | Path | None = None, *, migrate: bool = True) -> Store:
    """Open the database a --db value (or MAILCTL_DB, or ./mailctl.db) names."""
    chosen = resolve_db(target)
    if backend_of(chosen) == "postgresql":
        from mailctl.store.postgres import PostgresStore

        return PostgresStore.open(chosen, migrate=migrate)
    from mailctl.store.sqlite import SqliteStore

    return SqliteStore.open(sqlite_path(chosen), migrate=migrate)
