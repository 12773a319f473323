"""The SQLite store: schema, migrations, and every SQL statement mailctl runs.

State lives behind this module so that another backend can replace SQLite later.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from mailctl.errors import StoreError

DEFAULT_DB = "mailctl.db"

# Each migration is a list of statements; the schema version is the number applied
# (PRAGMA user_version). Never edit a released migration: add a new one.
MIGRATIONS: list[list[str]] = [
    # 1: recipients, lists, suppression
    [
        """CREATE TABLE recipients (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            domain TEXT NOT NULL,
            fields TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX recipients_domain ON recipients(domain)",
        """CREATE TABLE lists (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE list_members (
            list_id INTEGER NOT NULL REFERENCES lists(id),
            recipient_id INTEGER NOT NULL REFERENCES recipients(id),
            PRIMARY KEY (list_id, recipient_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE suppression (
            address TEXT PRIMARY KEY,       -- normalised address, or *@domain
            reason TEXT NOT NULL,           -- hard_bounce, complaint, unsubscribe, manual, soft_bounce_limit
            source TEXT,
            status TEXT,
            diagnostic TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            expires_at REAL
        )""",
    ],
]


def resolve_db_path(explicit: str | Path | None) -> Path:
    """--db, else MAILCTL_DB, else ./mailctl.db."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILCTL_DB")
    return Path(env) if env else Path(DEFAULT_DB)


@dataclass(frozen=True)
class StagedCounts:
    imported: int
    updated: int
    unchanged: int
    suppressed: int


class Store:
    """One open database. Create with `Store.open(path)`."""

    def __init__(self, db: sqlite_utils.Database, path: Path) -> None:
        self.db = db
        self.path = path
        self.conn: sqlite3.Connection = db.conn

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path | None = None, *, migrate: bool = True) -> Store:
        db_path = resolve_db_path(path)
        try:
            if not db_path.exists():
                if db_path.parent and not db_path.parent.exists():
                    raise StoreError(f"{db_path}: directory {db_path.parent} does not exist")
                # Recipient data is personal data: the file is private from the start.
                fd = os.open(db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{db_path}: cannot open database: {exc}") from None
        store = cls(db, db_path)
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this mailctl knows "
                f"({len(MIGRATIONS)}); upgrade mailctl"
            )
        for version in range(current, len(MIGRATIONS)):
            try:
                with self.transaction():
                    for statement in MIGRATIONS[version]:
                        self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {version + 1}")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: migration {version + 1} failed: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; rolls back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ recipients import

    def begin_import(self) -> None:
        """A staging table for one streamed import; merged into recipients at the end."""
        self.conn.execute("DROP TABLE IF EXISTS temp.import_staging")
        self.conn.execute("DROP VIEW IF EXISTS temp.active_suppression")
        self.conn.execute(
            f"""CREATE TEMP VIEW active_suppression AS SELECT address FROM suppression
                WHERE expires_at IS NULL OR expires_at > {time.time():.3f}"""
        )
        self.conn.execute(
            """CREATE TEMP TABLE import_staging (
                email TEXT PRIMARY KEY,
                domain TEXT NOT NULL,
                fields TEXT NOT NULL
            ) WITHOUT ROWID"""
        )
        self.conn.execute("BEGIN")

    def stage_recipients(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(email, domain, fields_json); a later row for the same email wins."""
        self.conn.executemany(
            """INSERT INTO temp.import_staging (email, domain, fields) VALUES (?, ?, ?)
               ON CONFLICT(email) DO UPDATE SET fields = excluded.fields""",
            rows,
        )

    def staged_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM temp.import_staging").fetchone()[0])

    def finish_import(self, list_name: str | None, *, skip_existing: bool) -> StagedCounts:
        """Merge the staging table into recipients (and the list) in the open transaction."""
        now = time.time()
        c = self.conn
        try:
            imported, changed = c.execute(
                """SELECT
                     sum(r.id IS NULL),
                     sum(r.id IS NOT NULL AND json_patch(r.fields, s.fields) <> r.fields)
                   FROM temp.import_staging s LEFT JOIN recipients r ON r.email = s.email"""
            ).fetchone()
            imported, changed = imported or 0, changed or 0
            suppressed = c.execute(
                """SELECT count(*) FROM temp.import_staging s
                   WHERE s.email IN (SELECT address FROM active_suppression)
                      OR '*@' || s.domain IN (SELECT address FROM active_suppression)"""
            ).fetchone()[0]
            total = self.staged_count()
            # Staged fields are compact JSON already, in the form SQLite's json_patch emits.
            c.execute(
                """INSERT OR IGNORE INTO recipients (email, domain, fields, created_at, updated_at)
                   SELECT s.email, s.domain, s.fields, ?, ? FROM temp.import_staging s""",
                (now, now),
            )
            updated = 0
            if not skip_existing and changed:
                c.execute(
                    """UPDATE recipients AS r
                       SET fields = json_patch(r.fields, s.fields), updated_at = ?
                       FROM temp.import_staging AS s
                       WHERE s.email = r.email AND json_patch(r.fields, s.fields) <> r.fields""",
                    (now,),
                )
                updated = changed
            if list_name:
                list_id = self._list_id(list_name, now)
                c.execute(
                    """INSERT OR IGNORE INTO list_members (list_id, recipient_id)
                       SELECT ?, r.id FROM temp.import_staging s JOIN recipients r USING (email)""",
                    (list_id,),
                )
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        finally:
            c.execute("DROP TABLE IF EXISTS temp.import_staging")
        return StagedCounts(
            imported=imported,
            updated=updated,
            unchanged=total - imported - updated,
            suppressed=suppressed,
        )

    def abort_import(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.execute("DROP TABLE IF EXISTS temp.import_staging")

    def _list_id(self, name: str, now: float) -> int:
        self.conn.execute(
            "INSERT OR IGNORE INTO lists (name, created_at) VALUES (?, ?)", (name, now)
        )
        return int(self.conn.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()[0])

    # ------------------------------------------------------------------ recipients queries

    def list_exists(self, name: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM lists WHERE name = ?", (name,)).fetchone() is not None
        )

    def iter_recipients(
        self, list_name: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        sql = "SELECT r.id, r.email, r.domain, r.fields FROM recipients r"
        params: list[Any] = []
        if list_name:
            sql += (
                " JOIN list_members m ON m.recipient_id = r.id"
                " JOIN lists l ON l.id = m.list_id WHERE l.name = ?"
            )
            params.append(list_name)
        sql += " ORDER BY r.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for rid, email, domain, fields in self.conn.execute(sql, params):
            yield {"id": rid, "email": email, "domain": domain, "fields": json.loads(fields)}

    def count_recipients(self, list_name: str | None = None) -> int:
        if list_name:
            row = self.conn.execute(
                """SELECT count(*) FROM list_members m JOIN lists l ON l.id = m.list_id
                   WHERE l.name = ?""",
                (list_name,),
            ).fetchone()
        else:
            row = self.conn.execute("SELECT count(*) FROM recipients").fetchone()
        return int(row[0])

    def list_counts(self) -> list[tuple[str, int]]:
        return [
            (name, count)
            for name, count in self.conn.execute(
                """SELECT l.name, count(m.recipient_id) FROM lists l
                   LEFT JOIN list_members m ON m.list_id = l.id GROUP BY l.id ORDER BY l.name"""
            )
        ]

    # ------------------------------------------------------------------ suppression

    def suppress(
        self,
        address: str,
        reason: str,
        *,
        source: str | None = None,
        status: str | None = None,
        diagnostic: str | None = None,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Add or refresh a suppression; True when the address was not suppressed before."""
        now = time.time() if now is None else now
        existed = self.suppression_for(address, now=now, exact=True) is not None
        self.conn.execute(
            """INSERT INTO suppression
                 (address, reason, source, status, diagnostic, first_seen, last_seen, count,
                  expires_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)
               ON CONFLICT(address) DO UPDATE SET
                 -- a permanent suppression is never weakened by a later temporary one
                 reason = CASE WHEN suppression.expires_at IS NULL AND excluded.expires_at
                               IS NOT NULL THEN suppression.reason ELSE excluded.reason END,
                 source = excluded.source, status = excluded.status,
                 diagnostic = excluded.diagnostic, last_seen = excluded.last_seen,
                 count = suppression.count + 1,
                 expires_at = CASE WHEN suppression.expires_at IS NULL
                                     OR excluded.expires_at IS NULL THEN NULL
                                   ELSE max(suppression.expires_at, excluded.expires_at) END""",
            (address, reason, source, status, diagnostic, now, now, expires_at),
        )
        return not existed

    def unsuppress(self, address: str) -> bool:
        cur = self.conn.execute("DELETE FROM suppression WHERE address = ?", (address,))
        return cur.rowcount > 0

    def suppression_for(
        self, address: str, *, now: float | None = None, exact: bool = False
    ) -> dict[str, Any] | None:
        """The active suppression entry matching an address (exact, or its *@domain)."""
        now = time.time() if now is None else now
        candidates = [address]
        if not exact and "@" in address and not address.startswith("*@"):
            candidates.append("*@" + address.rsplit("@", 1)[1].lower())
        row = self.conn.execute(
            f"""SELECT address, reason, source, status, diagnostic, first_seen, last_seen, count,
                       expires_at
                FROM suppression WHERE address IN ({",".join("?" * len(candidates))})
                  AND (expires_at IS NULL OR expires_at > ?)
                ORDER BY address = ? DESC LIMIT 1""",
            (*candidates, now, address),
        ).fetchone()
        if row is None:
            return None
        keys = (
            "address",
            "reason",
            "source",
            "status",
            "diagnostic",
            "first_seen",
            "last_seen",
            "count",
            "expires_at",
        )
        return dict(zip(keys, row, strict=True))

    def suppressed_set(self, addresses: Iterable[str], now: float | None = None) -> set[str]:
        """Which of these addresses are suppressed now (exactly or by their domain)."""
        now = time.time() if now is None else now
        wanted = list(addresses)
        found: set[str] = set()
        for start in range(0, len(wanted), 400):
            chunk = wanted[start : start + 400]
            keys = set(chunk) | {"*@" + a.rsplit("@", 1)[1].lower() for a in chunk if "@" in a}
            hits = {
                row[0]
                for row in self.conn.execute(
                    f"""SELECT address FROM suppression
                        WHERE address IN ({",".join("?" * len(keys))})
                          AND (expires_at IS NULL OR expires_at > ?)""",
                    (*keys, now),
                )
            }
            found.update(
                a for a in chunk if a in hits or ("*@" + a.rsplit("@", 1)[-1].lower()) in hits
            )
        return found

    def iter_suppression(
        self, reason: str | None = None, *, include_expired: bool = False
    ) -> Iterator[dict[str, Any]]:
        sql = (
            "SELECT address, reason, source, status, diagnostic, first_seen, last_seen, count,"
            " expires_at FROM suppression WHERE 1=1"
        )
        params: list[Any] = []
        if reason:
            sql += " AND reason = ?"
            params.append(reason)
        if not include_expired:
            sql += " AND (expires_at IS NULL OR expires_at > ?)"
            params.append(time.time())
        sql += " ORDER BY address"
        keys = (
            "address",
            "reason",
            "source",
            "status",
            "diagnostic",
            "first_seen",
            "last_seen",
            "count",
            "expires_at",
        )
        for row in self.conn.execute(sql, params):
            yield dict(zip(keys, row, strict=True))


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


ProgressCallback = Callable[[int], None]
