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

from mailctl.errors import LockedError, StoreError
from mailctl.model import MessageState
from mailctl.store.report_queries import ReportQueries

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
            -- hard_bounce, complaint, unsubscribe, manual, soft_bounce_limit
            reason TEXT NOT NULL,
            source TEXT,
            status TEXT,
            diagnostic TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            expires_at REAL
        )""",
    ],
    # 2: campaigns, messages and their replies, send runs
    [
        """CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            path TEXT,
            profile TEXT NOT NULL,
            traffic_class TEXT NOT NULL,
            pool TEXT NOT NULL,
            list_name TEXT NOT NULL,
            content TEXT NOT NULL,          -- JSON of what recipients see (see Campaign.content)
            content_hash TEXT NOT NULL,
            content_version INTEGER NOT NULL DEFAULT 1,
            status TEXT NOT NULL DEFAULT 'active',  -- active, paused, done, stopped, cancelled
            stop_reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
            recipient_id INTEGER NOT NULL REFERENCES recipients(id),
            email TEXT NOT NULL,
            domain TEXT NOT NULL,
            -- queued, sending, sent, deferred, bounced, complained, failed, expired,
            -- suppressed, cancelled
            state TEXT NOT NULL,
            tracking_id TEXT NOT NULL UNIQUE,
            attempts INTEGER NOT NULL DEFAULT 0,
            queued_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            last_attempt_at REAL,
            sent_at REAL,
            ip TEXT,
            provider TEXT,
            last_code INTEGER,
            last_reply TEXT,
            reason TEXT,
            run_id INTEGER,
            possible_duplicate INTEGER NOT NULL DEFAULT 0,
            content_version INTEGER NOT NULL DEFAULT 1,
            UNIQUE (campaign_id, recipient_id)
        )""",
        "CREATE INDEX messages_due ON messages(state, next_attempt_at)",
        "CREATE INDEX messages_campaign_state ON messages(campaign_id, state)",
        "CREATE INDEX messages_email ON messages(email)",
        """CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            message_id INTEGER REFERENCES messages(id),
            at REAL NOT NULL,
            ip TEXT,
            provider TEXT,
            code INTEGER,
            text TEXT,
            outcome TEXT NOT NULL,          -- deferred, bounced, failed, expired
            reason TEXT,
            rule TEXT
        )""",
        "CREATE INDEX replies_at ON replies(at)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            finished_at REAL,
            stop_reason TEXT,
            recovered INTEGER NOT NULL DEFAULT 0
        )""",
    ],
    # 3: bounce and complaint reports, per-IP daily signals
    [
        """CREATE TABLE bounce_events (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,     -- sha256 of the raw report: imported once
            source TEXT,
            -- bounce, delay, complaint, autoreply, delivered, unknown
            kind TEXT NOT NULL,
            imported_at REAL NOT NULL,
            reported_at REAL,
            tracking_id TEXT,
            original_message_id TEXT,
            feedback_type TEXT,
            message_id INTEGER REFERENCES messages(id)
        )""",
        """CREATE TABLE bounce_recipients (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES bounce_events(id),
            address TEXT NOT NULL,
            day TEXT NOT NULL,               -- the report's day, for soft-bounce scoring
            status TEXT,
            action TEXT,
            reason TEXT,
            permanent INTEGER NOT NULL,
            suppress INTEGER NOT NULL,
            diagnostic TEXT,
            message_id INTEGER REFERENCES messages(id)
        )""",
        "CREATE INDEX bounce_recipients_address ON bounce_recipients(address, day)",
        """CREATE TABLE ip_days (
            ip TEXT NOT NULL,
            day TEXT NOT NULL,               -- UTC date
            provider TEXT NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0,
            deferred INTEGER NOT NULL DEFAULT 0,
            bounced INTEGER NOT NULL DEFAULT 0,
            complained INTEGER NOT NULL DEFAULT 0,
            throttles INTEGER NOT NULL DEFAULT 0,
            blocks INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (ip, day, provider)
        ) WITHOUT ROWID""",
        "CREATE INDEX messages_sent_at ON messages(sent_at)",
    ],
    # 4: lanes that outlive a run, the MX cache, manual warm-up events
    [
        """CREATE TABLE lanes (
            ip TEXT NOT NULL,
            provider TEXT NOT NULL,
            mode TEXT NOT NULL DEFAULT 'normal'
                CHECK (mode IN ('normal', 'slowed', 'suspended', 'disabled')),
            until REAL, reason TEXT, rule TEXT, alert INTEGER NOT NULL DEFAULT 0,
            slow_limits TEXT, slow_until REAL, earlier_factor REAL NOT NULL DEFAULT 1.0,
            ramp_factor REAL, ramp_connections INTEGER, last_change_at REAL,
            backoff_level INTEGER NOT NULL DEFAULT 0, last_resume_at REAL,
            tokens TEXT, tokens_at REAL, hits TEXT NOT NULL DEFAULT '{}',
            sent INTEGER NOT NULL DEFAULT 0, deferred INTEGER NOT NULL DEFAULT 0,
            throttled INTEGER NOT NULL DEFAULT 0, updated_at REAL,
            PRIMARY KEY (ip, provider)
        )""",
        """CREATE TABLE lane_events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            ip TEXT NOT NULL,
            provider TEXT NOT NULL,
            kind TEXT NOT NULL,              -- suspended, slowed, disabled, backoff, resumed ...
            until REAL,
            reason TEXT,
            rule TEXT,
            campaign_id INTEGER
        )""",
        """CREATE TABLE mx_cache (
            domain TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            mx_hosts TEXT NOT NULL,          -- JSON [[pref, host], ...]
            port INTEGER NOT NULL DEFAULT 25,
            status TEXT NOT NULL,
            detail TEXT,
            expires_at REAL NOT NULL
        )""",
        """CREATE TABLE warmup_events (
            id INTEGER PRIMARY KEY,
            ip TEXT NOT NULL,
            day TEXT NOT NULL,
            kind TEXT NOT NULL,              -- start, hold, resume, reset
            preset TEXT,
            created_at REAL NOT NULL
        )""",
        "ALTER TABLE messages ADD COLUMN first_attempt_at REAL",
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


class Store(ReportQueries):
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
            if str(db_path) == ":memory:":
                pass  # a scratch database (dry runs): nothing touches the disk
            elif not db_path.exists():
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
            f"""SELECT {", ".join(_SUPPRESSION_COLUMNS)}
                FROM suppression WHERE address IN ({",".join("?" * len(candidates))})
                  AND (expires_at IS NULL OR expires_at > ?)
                ORDER BY address = ? DESC LIMIT 1""",
            (*candidates, now, address),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(_SUPPRESSION_COLUMNS, row, strict=True))

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
        sql = f"SELECT {', '.join(_SUPPRESSION_COLUMNS)} FROM suppression WHERE 1=1"
        params: list[Any] = []
        if reason:
            sql += " AND reason = ?"
            params.append(reason)
        if not include_expired:
            sql += " AND (expires_at IS NULL OR expires_at > ?)"
            params.append(time.time())
        sql += " ORDER BY address"
        for row in self.conn.execute(sql, params):
            yield dict(zip(_SUPPRESSION_COLUMNS, row, strict=True))

    # ------------------------------------------------------------------ campaigns

    _CAMPAIGN_COLUMNS = (
        "id",
        "name",
        "path",
        "profile",
        "traffic_class",
        "pool",
        "list_name",
        "content",
        "content_hash",
        "content_version",
        "status",
        "stop_reason",
        "created_at",
        "updated_at",
    )

    def get_campaign(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {', '.join(self._CAMPAIGN_COLUMNS)} FROM campaigns WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        campaign = dict(zip(self._CAMPAIGN_COLUMNS, row, strict=True))
        campaign["content"] = json.loads(campaign["content"])
        return campaign

    def list_campaigns(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(self._CAMPAIGN_COLUMNS)} FROM campaigns"
        params: list[Any] = []
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params += list(statuses)
        sql += " ORDER BY created_at DESC, id DESC"
        result = []
        for row in self.conn.execute(sql, params):
            campaign = dict(zip(self._CAMPAIGN_COLUMNS, row, strict=True))
            campaign["content"] = json.loads(campaign["content"])
            result.append(campaign)
        return result

    def create_campaign(
        self,
        *,
        name: str,
        path: str,
        profile: str,
        traffic_class: str,
        pool: str,
        list_name: str,
        content: dict[str, Any],
        content_hash: str,
        now: float,
    ) -> int:
        cur = self.conn.execute(
            """INSERT INTO campaigns (name, path, profile, traffic_class, pool, list_name, content,
                                      content_hash, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                name,
                path,
                profile,
                traffic_class,
                pool,
                list_name,
                json.dumps(content),
                content_hash,
                now,
                now,
            ),
        )
        return int(cur.lastrowid or 0)

    def update_campaign(
        self,
        campaign_id: int,
        *,
        content: dict[str, Any],
        content_hash: str,
        path: str,
        profile: str,
        traffic_class: str,
        pool: str,
        now: float,
    ) -> int:
        """Apply changed content to the campaign and its unsent messages; returns how many."""
        with self.transaction() as c:
            c.execute(
                """UPDATE campaigns SET content = ?, content_hash = ?, path = ?, profile = ?,
                     traffic_class = ?, pool = ?, content_version = content_version + 1,
                     updated_at = ?
                   WHERE id = ?""",
                (
                    json.dumps(content),
                    content_hash,
                    path,
                    profile,
                    traffic_class,
                    pool,
                    now,
                    campaign_id,
                ),
            )
            cur = c.execute(
                """UPDATE messages SET content_version =
                     (SELECT content_version FROM campaigns WHERE id = ?)
                   WHERE campaign_id = ? AND state IN ('queued', 'deferred')""",
                (campaign_id, campaign_id),
            )
            return cur.rowcount

    def set_campaign_status(
        self, campaign_id: int, status: str, reason: str | None = None, now: float | None = None
    ) -> None:
        self.conn.execute(
            "UPDATE campaigns SET status = ?, stop_reason = ?, updated_at = ? WHERE id = ?",
            (status, reason, time.time() if now is None else now, campaign_id),
        )

    def cancel_unsent(self, campaign_id: int) -> int:
        cur = self.conn.execute(
            """UPDATE messages SET state = 'cancelled'
               WHERE campaign_id = ? AND state IN ('queued', 'deferred')""",
            (campaign_id,),
        )
        return cur.rowcount

    def message_counts(self, campaign_id: int) -> dict[str, int]:
        counts = dict.fromkeys(MESSAGE_STATES, 0)
        for state, count in self.conn.execute(
            "SELECT state, count(*) FROM messages WHERE campaign_id = ? GROUP BY state",
            (campaign_id,),
        ):
            counts[state] = count
        counts["possible_duplicates"] = self.conn.execute(
            "SELECT count(*) FROM messages WHERE campaign_id = ? AND possible_duplicate = 1",
            (campaign_id,),
        ).fetchone()[0]
        return counts

    # ------------------------------------------------------------------ messages

    def queue_messages(
        self, campaign_id: int, list_name: str, now: float, make_tracking_id: Callable[[], str]
    ) -> tuple[int, int]:
        """One message per list member not yet queued for this campaign.

        Returns (queued, suppressed): suppressed recipients get a row in state `suppressed`
        so they are counted, and are never sent.
        """
        c = self.conn
        with self.transaction():
            c.execute("DROP TABLE IF EXISTS temp.to_queue")
            c.execute(
                """CREATE TEMP TABLE to_queue AS
                   SELECT r.id AS recipient_id, r.email, r.domain,
                          (EXISTS (SELECT 1 FROM suppression x
                                   WHERE x.address IN (r.email, '*@' || r.domain)
                                     AND (x.expires_at IS NULL OR x.expires_at > ?)))
                            AS suppressed
                   FROM lists l
                   JOIN list_members m ON m.list_id = l.id
                   JOIN recipients r ON r.id = m.recipient_id
                   WHERE l.name = ?
                     AND NOT EXISTS (SELECT 1 FROM messages g
                                     WHERE g.campaign_id = ? AND g.recipient_id = r.id)
                   ORDER BY r.id""",
                (now, list_name, campaign_id),
            )
            version = c.execute(
                "SELECT content_version FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()[0]
            queued = suppressed = 0
            cursor = c.execute("SELECT recipient_id, email, domain, suppressed FROM temp.to_queue")
            while rows := cursor.fetchmany(5000):
                batch = []
                for recipient_id, email, domain, is_suppressed in rows:
                    state = "suppressed" if is_suppressed else "queued"
                    suppressed += bool(is_suppressed)
                    queued += not is_suppressed
                    batch.append(
                        (
                            campaign_id,
                            recipient_id,
                            email,
                            domain,
                            state,
                            make_tracking_id(),
                            now,
                            now,
                            version,
                        )
                    )
                c.executemany(
                    """INSERT INTO messages (campaign_id, recipient_id, email, domain, state,
                         tracking_id, queued_at, next_attempt_at, content_version)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    batch,
                )
            c.execute("DROP TABLE temp.to_queue")
        return queued, suppressed

    _CLAIM_COLUMNS = (
        "id",
        "campaign_id",
        "recipient_id",
        "email",
        "domain",
        "tracking_id",
        "attempts",
        "queued_at",
        "possible_duplicate",
        "first_attempt_at",
        "next_attempt_at",
        "ip",
        "last_code",
        "last_reply",
    )

    def claim_due(
        self, campaign_ids: Sequence[int], now: float, run_id: int, limit: int
    ) -> list[dict[str, Any]]:
        """Move up to `limit` due messages to `sending` for this run, with their fields."""
        if not campaign_ids:
            return []
        marks = ",".join("?" * len(campaign_ids))
        with self.transaction() as c:
            rows = c.execute(
                f"""UPDATE messages SET state = 'sending', run_id = ?
                    WHERE id IN (
                      SELECT id FROM messages
                      WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?
                        AND campaign_id IN ({marks})
                      ORDER BY next_attempt_at, id LIMIT ?)
                    RETURNING {", ".join(self._CLAIM_COLUMNS)}""",
                (run_id, now, *campaign_ids, limit),
            ).fetchall()
            claimed = [dict(zip(self._CLAIM_COLUMNS, row, strict=True)) for row in rows]
            if claimed:
                ids = [m["recipient_id"] for m in claimed]
                fields = dict(
                    c.execute(
                        "SELECT id, fields FROM recipients WHERE id IN "
                        f"({','.join('?' * len(ids))})",
                        ids,
                    ).fetchall()
                )
                for message in claimed:
                    # Raw JSON: whoever renders decodes it (often another process).
                    message["fields_json"] = fields[message["recipient_id"]]
        claimed.sort(key=lambda m: (m["next_attempt_at"], m["id"]))  # due first, as claimed
        return claimed

    def release(self, message_ids: Sequence[int]) -> None:
        """Claimed but never attempted: back to the queue, untouched."""
        if not message_ids:
            return
        with self.transaction() as c:
            c.executemany(
                "UPDATE messages SET state = 'queued' WHERE id = ? AND state = 'sending'",
                [(i,) for i in message_ids],
            )

    def record_outcomes(self, outcomes: Sequence[Any]) -> None:
        """Commit a batch of delivery outcomes (delivery.outcome.Outcome) in one transaction."""
        if not outcomes:
            return
        with self.transaction() as c:
            c.executemany(
                """UPDATE messages SET state = ?, attempts = attempts + ?,
                     last_attempt_at = CASE WHEN ? THEN ? ELSE last_attempt_at END,
                     first_attempt_at = CASE WHEN ? THEN coalesce(first_attempt_at, ?)
                                        ELSE first_attempt_at END,
                     next_attempt_at = ?, sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END,
                     ip = ?, provider = ?, last_code = ?, last_reply = ?, reason = ?
                   WHERE id = ?""",
                [
                    (
                        o.state,
                        1 if o.attempted else 0,
                        int(o.attempted),
                        o.at,
                        int(o.attempted),
                        o.at,
                        o.next_attempt_at,
                        o.state,
                        o.at,
                        o.ip,
                        o.provider,
                        o.code,
                        o.reply,
                        o.reason,
                        o.message_id,
                    )
                    for o in outcomes
                ],
            )
            c.executemany(
                """INSERT INTO replies (message_id, at, ip, provider, code, text, outcome, reason,
                                        rule)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        o.message_id,
                        o.at,
                        o.ip,
                        o.provider,
                        o.code,
                        o.reply,
                        o.state,
                        o.reason,
                        o.rule,
                    )
                    for o in outcomes
                    if o.state != "sent" and o.attempted
                ],
            )
            # The warm-up's source of truth: what each IP did toward each provider per day.
            signals: dict[tuple[str, str, str], dict[str, int]] = {}
            for o in outcomes:
                if not o.attempted or o.ip is None or o.provider is None:
                    continue
                day = o.day or time.strftime("%Y-%m-%d", time.gmtime(o.at))
                counts = signals.setdefault((o.ip, day, o.provider), {})
                if o.state == "sent":
                    counts["sent"] = counts.get("sent", 0) + 1
                elif o.state == "deferred":
                    counts["deferred"] = counts.get("deferred", 0) + 1
                elif o.state == "bounced":
                    counts["bounced"] = counts.get("bounced", 0) + 1
                if o.scope == "lane" and o.code is not None:
                    kind = "blocks" if o.reason == "blocked" else "throttles"
                    counts[kind] = counts.get(kind, 0) + 1
            for (ip, day, provider), counts in signals.items():
                self.bump_ip_day(ip, day, provider, **counts)
            for o in outcomes:
                if o.suppress:
                    self.suppress(
                        o.email,
                        "hard_bounce",
                        source=f"smtp:{o.ip or ''}",
                        status=o.status,
                        diagnostic=o.reply,
                        now=o.at,
                    )

    def recover_interrupted(self) -> int:
        """Messages left in `sending` by a run that died: back to the queue, flagged.

        Called only while holding the send lock, so their run is certainly gone. Any of
        them may have been delivered before the crash: they are possible duplicates.
        """
        with self.transaction() as c:
            cur = c.execute(
                """UPDATE messages SET state = 'queued', possible_duplicate = 1
                   WHERE state = 'sending'"""
            )
            return cur.rowcount

    def next_due_at(self, campaign_ids: Sequence[int]) -> float | None:
        if not campaign_ids:
            return None
        row = self.conn.execute(
            f"""SELECT min(next_attempt_at) FROM messages
                WHERE state IN ('queued', 'deferred')
                  AND campaign_id IN ({",".join("?" * len(campaign_ids))})""",
            list(campaign_ids),
        ).fetchone()
        return row[0]

    def remaining(self, campaign_id: int) -> int:
        return int(
            self.conn.execute(
                """SELECT count(*) FROM messages WHERE campaign_id = ?
                   AND state IN ('queued', 'deferred', 'sending')""",
                (campaign_id,),
            ).fetchone()[0]
        )

    def recipient_missing_field(self, list_name: str, field_name: str) -> str | None:
        """The first list member whose fields lack `field_name`, or None."""
        path = '$."' + field_name.replace('"', '""') + '"'
        row = self.conn.execute(
            """SELECT r.email FROM lists l JOIN list_members m ON m.list_id = l.id
               JOIN recipients r ON r.id = m.recipient_id
               WHERE l.name = ? AND json_type(r.fields, ?) IS NULL
               ORDER BY r.id LIMIT 1""",
            (list_name, path),
        ).fetchone()
        return None if row is None else str(row[0])

    @contextmanager
    def send_lock(self) -> Iterator[None]:
        """One send run per database. The OS drops the lock when the holder dies."""
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise LockedError(
                    f"another mailctl run holds {self.path} (pid {holder or 'unknown'}); "
                    "try again when it finishes"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ runs

    def start_run(self, pid: int, host: str, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs (pid, host, started_at, heartbeat_at) VALUES (?, ?, ?, ?)",
            (pid, host, now, now),
        )
        return int(cur.lastrowid or 0)

    def heartbeat(self, run_id: int, now: float) -> None:
        self.conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))

    def finish_run(self, run_id: int, now: float, stop_reason: str, recovered: int) -> None:
        self.conn.execute(
            """UPDATE runs SET finished_at = ?, heartbeat_at = ?, stop_reason = ?, recovered = ?
               WHERE id = ?""",
            (now, now, stop_reason, recovered, run_id),
        )

    def top_replies(self, campaign_id: int, limit: int = 10) -> list[tuple[str, int]]:
        return [
            (text, count)
            for text, count in self.conn.execute(
                """SELECT y.text, count(*) AS n
                   FROM replies y JOIN messages m ON m.id = y.message_id
                   WHERE m.campaign_id = ? GROUP BY y.text ORDER BY n DESC LIMIT ?""",
                (campaign_id, limit),
            )
        ]

    # ------------------------------------------------------------------ bounces and signals

    def add_bounce_event(
        self,
        *,
        digest: str,
        source: str,
        kind: str,
        now: float,
        reported_at: float | None,
        tracking_id: str | None,
        original_message_id: str | None,
        feedback_type: str | None,
        message_id: int | None,
    ) -> int | None:
        """Store a report once; None when this exact report was imported before."""
        cur = self.conn.execute(
            """INSERT OR IGNORE INTO bounce_events (digest, source, kind, imported_at,
                 reported_at, tracking_id, original_message_id, feedback_type, message_id)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                digest,
                source,
                kind,
                now,
                reported_at,
                tracking_id,
                original_message_id,
                feedback_type,
                message_id,
            ),
        )
        return int(cur.lastrowid or 0) if cur.rowcount else None

    def add_bounce_recipient(
        self, event_id: int, day: str, recipient: Any, message_id: int | None
    ) -> None:
        self.conn.execute(
            """INSERT INTO bounce_recipients (event_id, address, day, status, action, reason,
                 permanent, suppress, diagnostic, message_id)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                event_id,
                recipient.address,
                day,
                recipient.status,
                recipient.action,
                recipient.reason,
                int(recipient.permanent),
                int(recipient.suppress),
                recipient.diagnostic,
                message_id,
            ),
        )

    def soft_bounce_days(self, address: str, since_day: str, until_day: str) -> int:
        """Distinct days with a temporary failure for this address within [since, until]
        (an old mailbox imported late must not count its future against the past)."""
        row = self.conn.execute(
            """SELECT count(DISTINCT day) FROM bounce_recipients
               WHERE address = ? AND day >= ? AND day <= ? AND permanent = 0
                 AND (action IS NULL OR action <> 'delayed')""",
            (address, since_day, until_day),
        ).fetchone()
        return int(row[0])

    _MATCH_COLUMNS = ("id", "campaign_id", "email", "state", "ip", "provider", "sent_at")

    def message_by_tracking_id(self, tracking_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {', '.join(self._MATCH_COLUMNS)} FROM messages WHERE tracking_id = ?",
            (tracking_id,),
        ).fetchone()
        return None if row is None else dict(zip(self._MATCH_COLUMNS, row, strict=True))

    def latest_message_to(self, address: str, since: float) -> dict[str, Any] | None:
        """The most recent message sent to an address (correlation without a tracking id)."""
        row = self.conn.execute(
            f"""SELECT {", ".join(self._MATCH_COLUMNS)} FROM messages
                WHERE email = ? COLLATE NOCASE AND sent_at >= ?
                ORDER BY sent_at DESC LIMIT 1""",
            (address, since),
        ).fetchone()
        return None if row is None else dict(zip(self._MATCH_COLUMNS, row, strict=True))

    def mark_reported(
        self, message_id: int, state: str, reply: str | None, reason: str | None
    ) -> bool:
        """A sent message that bounced or drew a complaint later; True if it changed."""
        allowed = ("sent", "bounced", "failed") if state == "complained" else ("sent",)
        cur = self.conn.execute(
            f"""UPDATE messages SET state = ?, last_reply = coalesce(?, last_reply),
                  reason = coalesce(?, reason)
                WHERE id = ? AND state IN ({",".join("?" * len(allowed))})""",
            (state, reply, reason, message_id, *allowed),
        )
        return cur.rowcount > 0

    def bump_ip_day(self, ip: str, day: str, provider: str, **counts: int) -> None:
        columns = [c for c in counts if c in _IP_DAY_COUNTERS]
        if not columns:
            return
        self.conn.execute(
            f"""INSERT INTO ip_days (ip, day, provider, {", ".join(columns)})
                VALUES (?, ?, ?, {", ".join("?" * len(columns))})
                ON CONFLICT(ip, day, provider) DO UPDATE SET
                {", ".join(f"{c} = {c} + excluded.{c}" for c in columns)}""",
            (ip, day, provider, *(counts[c] for c in columns)),
        )

    def ip_days(self, ip: str | None = None) -> list[dict[str, Any]]:
        keys = ("ip", "day", "provider", *_IP_DAY_COUNTERS)
        sql = f"SELECT {', '.join(keys)} FROM ip_days"
        params: list[Any] = []
        if ip:
            sql += " WHERE ip = ?"
            params.append(ip)
        sql += " ORDER BY ip, day, provider"
        return [dict(zip(keys, row, strict=True)) for row in self.conn.execute(sql, params)]

    # ------------------------------------------------------------------ lanes and routes

    _LANE_COLUMNS = (
        "ip",
        "provider",
        "mode",
        "until",
        "reason",
        "rule",
        "alert",
        "slow_limits",
        "slow_until",
        "earlier_factor",
        "ramp_factor",
        "ramp_connections",
        "last_change_at",
        "backoff_level",
        "last_resume_at",
        "tokens",
        "tokens_at",
        "hits",
        "sent",
        "deferred",
        "throttled",
        "updated_at",
    )

    def lane_rows(self) -> list[dict[str, Any]]:
        cols = self._LANE_COLUMNS
        return [
            dict(zip(cols, row, strict=True))
            for row in self.conn.execute(
                f"SELECT {', '.join(cols)} FROM lanes ORDER BY ip, provider"
            )
        ]

    def upsert_lanes(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = self._LANE_COLUMNS
        self.conn.executemany(
            f"INSERT OR REPLACE INTO lanes ({', '.join(cols)}) "
            f"VALUES ({', '.join(':' + c for c in cols)})",
            rows,
        )

    def release_lane_deferrals(self, ip: str, provider: str, now: float) -> int:
        """Messages mailctl itself deferred for a lane (paused, pacing) fall due now."""
        cur = self.conn.execute(
            """UPDATE messages SET next_attempt_at = ?
               WHERE state = 'deferred' AND reason = 'mailctl' AND provider = ?
                 AND (ip = ? OR ip IS NULL) AND next_attempt_at > ?""",
            (now, provider, ip, now),
        )
        return cur.rowcount

    def add_lane_event(
        self,
        *,
        at: float,
        ip: str,
        provider: str,
        kind: str,
        until: float | None,
        reason: str | None,
        rule: str | None,
        campaign_id: int | None,
    ) -> None:
        self.conn.execute(
            """INSERT INTO lane_events (at, ip, provider, kind, until, reason, rule, campaign_id)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (at, ip, provider, kind, until, reason, rule, campaign_id),
        )

    def cached_route(self, domain: str, now: float) -> dict[str, Any] | None:
        cols = ("domain", "provider", "mx_hosts", "port", "status", "detail", "expires_at")
        row = self.conn.execute(
            f"SELECT {', '.join(cols)} FROM mx_cache WHERE domain = ? AND expires_at > ?",
            (domain, now),
        ).fetchone()
        return None if row is None else dict(zip(cols, row, strict=True))

    def cache_route(self, row: dict[str, Any]) -> None:
        self.conn.execute(
            """INSERT OR REPLACE INTO mx_cache
                 (domain, provider, mx_hosts, port, status, detail, expires_at)
               VALUES (:domain, :provider, :mx_hosts, :port, :status, :detail, :expires_at)""",
            row,
        )

    # ------------------------------------------------------------------ warm-up events

    def add_warmup_event(
        self, ip: str, day: str, kind: str, preset: str | None, now: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO warmup_events (ip, day, kind, preset, created_at) VALUES (?, ?, ?, ?, ?)",
            (ip, day, kind, preset, now),
        )

    def warmup_events(self, ip: str) -> list[tuple[str, str, str | None]]:
        return [
            (day, kind, preset)
            for day, kind, preset in self.conn.execute(
                "SELECT day, kind, preset FROM warmup_events WHERE ip = ? ORDER BY day, id", (ip,)
            )
        ]


_SUPPRESSION_COLUMNS = (
    "address", "reason", "source", "status", "diagnostic", "first_seen", "last_seen", "count",
    "expires_at",
)  # fmt: skip
_IP_DAY_COUNTERS = ("sent", "deferred", "bounced", "complained", "throttles", "blocks")

MESSAGE_STATES = tuple(state.value for state in MessageState)
