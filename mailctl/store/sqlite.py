"""The SQLite backend: `SqliteStore`, one open database file.

Every SQL statement mailctl runs against SQLite lives in this module and its siblings:
`sqlite_schema` (tables and migrations), `sqlite_addresses` (recipients, suppression,
bounce reports) and `sqlite_reports` (the report aggregates). Implements the
`mailctl.store.base.Store` protocol; imports only the store's interface and mailctl.errors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailctl.errors import LockedError, StoreError
from mailctl.store import sqlite_fresh as fresh
from mailctl.store.base import (
    IP_DAY_COUNTERS,
    MESSAGE_STATES,
    DeliveryRecord,
    IpDayCounts,
    Store,
    SuppressionEntry,
)
from mailctl.store.sqlite_addresses import _AddressTables
from mailctl.store.sqlite_queue import _QueueTables
from mailctl.store.sqlite_reports import SqliteReportQueries
from mailctl.store.sqlite_schema import MIGRATIONS
from mailctl.store.sqlite_warmup import _WarmupGrants

DEFAULT_DB = "mailctl.db"


def resolve_db_path(explicit: str | Path | None) -> Path:
    """--db, else MAILCTL_DB, else ./mailctl.db."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILCTL_DB")
    return Path(env) if env else Path(DEFAULT_DB)


class SqliteStore(_AddressTables, _QueueTables, _WarmupGrants):
    """One open SQLite database. Create with `SqliteStore.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self.conn = conn
        self.reports = SqliteReportQueries(self.conn)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path | None = None, *, migrate: bool = True) -> SqliteStore:
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
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # once per file: it persists
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{db_path}: cannot open database: {exc}") from None
        store = cls(conn, db_path)
        if migrate:
            store.migrate()
        return store

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self.conn.close()

    def side_connection(self) -> None:
        """None: claims and commits stay on the loop (`Store.side_connection`)."""
        return None

    def __enter__(self) -> SqliteStore:
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
        if current == 0 and fresh.VERSION == len(MIGRATIONS):
            try:
                with self.transaction():
                    # Asked under the write lock: another process may have made it meanwhile.
                    created = self._empty()
                    if created:
                        for statement in fresh.STATEMENTS:
                            self.conn.execute(statement)
                        self.conn.execute(f"PRAGMA user_version = {fresh.VERSION}")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: creating the schema failed: {exc}") from None
            if created:
                return
            current = self.schema_version
        for version in range(current, len(MIGRATIONS)):
            try:
                with self.transaction():
                    for statement in MIGRATIONS[version]:
                        self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {version + 1}")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: migration {version + 1} failed: {exc}") from None

    def _empty(self) -> bool:
        """No table, no index: a new database (sqlite_fresh.py makes its schema at once)."""
        return self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT; rolls back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def batched_transaction(self) -> Iterator[Callable[[], None]]:
        """BEGIN IMMEDIATE … COMMIT, committed early by each call of the yielded function.
        On an exception what was applied is committed too: each step leaves it consistent."""

        def commit() -> None:
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN IMMEDIATE")

        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield commit
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

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
        c = self.conn
        with self.transaction():
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
                                   WHERE x.address IN (r.email_key, '*@' || r.domain)
                                     AND (x.expires_at IS NULL OR x.expires_at > ?))
                           OR EXISTS (SELECT 1 FROM list_unsubscribes u
                                      WHERE u.list_name = l.name AND u.address = r.email_key))
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
        c = self.conn
        with self.transaction():
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
        c = self.conn
        with self.transaction():
            c.executemany(
                "UPDATE messages SET state = 'queued' WHERE id = ? AND state = 'sending'",
                [(i,) for i in message_ids],
            )

    def record_outcomes(
        self,
        outcomes: Sequence[DeliveryRecord],
        ip_days: Sequence[IpDayCounts] = (),
        suppressions: Sequence[SuppressionEntry] = (),
    ) -> None:
        """Commit a batch of delivery outcomes in one transaction, with the warm-up counts
        and the suppressions the domain decided they carry."""
        if not outcomes and not ip_days and not suppressions:
            return
        c = self.conn
        with self.transaction():
            c.executemany(
                """UPDATE messages SET state = ?, attempts = attempts + ?,
                     last_attempt_at = CASE WHEN ? THEN ? ELSE last_attempt_at END,
                     first_attempt_at = CASE WHEN ? THEN coalesce(first_attempt_at, ?)
                                        ELSE first_attempt_at END,
                     next_attempt_at = ?, sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END,
                     ip = ?, provider = ?, last_code = ?, last_reply = ?, reason = ?,
                     wait_kind = ?, wait_reason = ?,
                     possible_duplicate = max(possible_duplicate, ?)
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
                        o.wait_kind if o.state == "deferred" else None,
                        o.wait_reason if o.state == "deferred" else None,
                        int(o.possible_duplicate),
                        o.message_id,
                    )
                    for o in outcomes
                ],
            )
            c.executemany(
                """INSERT INTO replies (message_id, at, ip, provider, code, text, outcome, reason,
                                        rule, scope)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
                        o.scope,
                    )
                    for o in outcomes
                    if o.state != "sent" and o.attempted
                ],
            )
            for signal in ip_days:
                self.bump_ip_day(signal.ip, signal.day, signal.provider, **signal.counts())
            for entry in suppressions:
                self.suppress(
                    entry.address,
                    entry.reason,
                    source=entry.source,
                    status=entry.status,
                    diagnostic=entry.diagnostic,
                    expires_at=entry.expires_at,
                    now=entry.at,
                )

    def requeue_failed(
        self,
        campaign_id: int,
        failed_reasons: Sequence[str],
        expired_reasons: Sequence[str],
        now: float,
    ) -> int:
        """Failed (or expired) messages of a campaign with one of these reasons: queued
        again, due now, their age counted afresh. Returns how many."""
        if not failed_reasons and not expired_reasons:
            return 0
        failed = ",".join("?" * len(failed_reasons)) or "NULL"
        expired = ",".join("?" * len(expired_reasons)) or "NULL"
        with self.transaction():
            cur = self.conn.execute(
                f"""UPDATE messages SET state = 'queued', next_attempt_at = ?,
                      first_attempt_at = NULL
                    WHERE campaign_id = ?
                      AND ((state = 'failed' AND reason IN ({failed}))
                        OR (state = 'expired' AND reason IN ({expired})))""",
                (now, campaign_id, *failed_reasons, *expired_reasons),
            )
            return cur.rowcount

    def mark_possible_duplicates(self, message_ids: Sequence[int]) -> None:
        """Messages cut off mid-delivery: they may have been delivered already."""
        self.conn.executemany(
            "UPDATE messages SET possible_duplicate = 1 WHERE id = ?",
            [(message_id,) for message_id in message_ids],
        )

    def recover_interrupted(self) -> int:
        """Messages left in `sending` by a run that died: back to the queue, flagged.

        Called only while holding the send lock, so their run is certainly gone. Any of
        them may have been delivered before the crash: they are possible duplicates.
        """
        c = self.conn
        with self.transaction():
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

    def first_notice(self, key: str, now: float) -> bool:
        with self.transaction():
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO notices (key, first_at) VALUES (?, ?)", (key, now)
            )
        return cursor.rowcount == 1

    def database_key(self, name: str, generate: Callable[[], str]) -> str | None:
        return None  # a file database keeps its keys in files next to it

    def campaign_recipient_keys(self, campaign_name: str) -> set[str]:
        rows = self.conn.execute(
            """SELECT COALESCE(r.email_key, lower(r.email)) FROM messages g
               JOIN campaigns c ON c.id = g.campaign_id
               JOIN recipients r ON r.id = g.recipient_id
               WHERE c.name = ?""",
            (campaign_name,),
        )
        return {key for (key,) in rows}

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
    def send_lock(self, host: str | None = None) -> Iterator[None]:
        """One send run per database file, whatever the host (one writer at a time). The
        OS drops the lock when the holder dies."""
        import fcntl

        from mailctl.files import open_lock

        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = open_lock(lock_path)  # no symlink, no hard link: only our own file is truncated
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

    def bump_ip_day(self, ip: str, day: str, provider: str, **counts: int) -> None:
        columns = [c for c in counts if c in IP_DAY_COUNTERS]
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
        keys = ("ip", "day", "provider", *IP_DAY_COUNTERS)
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
        # learned from the receiver (migration 6)
        "learned_rate",
        "learned_peak",
        "learned_connections",
        "learned_reason",
        "learned_at",
        "learned_observed",
        "learned_step_at",
        "learned_conn_at",
        "probe_level",
        "connect_until",
        "probing",
        "recent_accepts",  # migration 12
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


if TYPE_CHECKING:
    # mypy checks here that SqliteStore implements the whole interface.
    _implements_store: type[Store] = SqliteStore
