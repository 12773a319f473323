"""The PostgreSQL backend: `PostgresStore`, one database server shared by many senders.

Every SQL statement mailctl runs against PostgreSQL lives in this module and its siblings:
`postgres_schema` (tables and migrations, numbered as SQLite's), `postgres_addresses`
(recipients, suppression, bounce reports), `postgres_lanes` (lanes, routes, warm-up
records) and `postgres_reports` (report aggregates).

Many senders, one queue: `claim_due` takes due messages with ``FOR UPDATE SKIP LOCKED`` so
no message is claimed twice, and stamps them with the run. A run holds a lease on what it
claimed: its `runs.heartbeat_at`, kept fresh by a background thread on a pooled connection
(psycopg-pool) and judged on the server's clock. Only messages whose run finished or whose
lease expired are requeued (and flagged as possible duplicates); any sender does that as it
claims, so a host killed mid-run has its messages delivered by the others. The send lock is
per host (an advisory lock), so hosts send side by side. A connection lost mid-run (server
restart) is re-opened and the whole transaction retried, within `RECONNECT_SECONDS`.

Implements `mailctl.store.base.Store`; imports only the store's interface, mailctl.errors
and psycopg.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from mailctl.errors import LockedError, StoreConnectionError, StoreError, StoreUrlError
from mailctl.store.base import (
    MESSAGE_STATES,
    DeliveryRecord,
    IpDayCounts,
    Store,
    SuppressionEntry,
)
from mailctl.store.postgres_addresses import _PgAddressTables
from mailctl.store.postgres_lanes import _PgLaneTables
from mailctl.store.postgres_queue import _PgQueueTables
from mailctl.store.postgres_reports import PgReportQueries
from mailctl.store.postgres_schema import MIGRATIONS, VERSION_TABLE
from mailctl.store.urls import redact

T = TypeVar("T")

# A claimed message belongs to its run while the run's heartbeat is younger than the lease.
DEFAULT_LEASE_SECONDS = 60.0
RECONNECT_SECONDS = 60.0
_LOCK_NAMESPACE = 0x6D61  # advisory-lock namespace of mailctl's send locks ("ma")
_MIGRATE_LOCK = 0x6D61_0001
_SERVER_NOW = "extract(epoch from clock_timestamp())"


def lease_seconds() -> float:
    """The lease (MAILCTL_LEASE_SECONDS, default 60 s): how long a silent run keeps its
    claimed messages before another sender may requeue them."""
    raw = os.environ.get("MAILCTL_LEASE_SECONDS")
    try:
        return float(raw) if raw else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise StoreUrlError(f"MAILCTL_LEASE_SECONDS={raw!r}: not a number of seconds") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("connection failed: ") or type(exc).__name__


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or one clear StoreConnectionError / StoreUrlError."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as exc:  # a malformed conninfo
        raise StoreUrlError(
            f"--db {redact(url)}: not a valid PostgreSQL URL: {_one_line(exc)}"
        ) from None
    except psycopg.OperationalError as exc:
        raise StoreConnectionError(f"{redact(url)}: cannot connect: {_one_line(exc)}") from None


class PostgresStore(_PgLaneTables, _PgAddressTables, _PgQueueTables):
    """One PostgreSQL database. Create with `PostgresStore.open(url)`."""

    def __init__(self, url: str, conn: psycopg.Connection[Any]) -> None:
        self.url = url
        self.conn = conn
        self.reports = PgReportQueries(self._x)
        self.lease = lease_seconds()
        self._lock_key: int | None = None
        self._lock_host: str | None = None  # the host whose send lock this store holds
        self._heartbeat: _Heartbeat | None = None
        self._next_lease_check = 0.0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> PostgresStore:
        store = cls(url, connect(url))
        if migrate:
            store.migrate()
        else:
            store._check_version()
        return store

    @property
    def location(self) -> str:
        return redact(self.url)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.conn.close()

    def side_connection(self) -> PostgresStore:
        """This database on a new connection, recovering for the same host's send lock
        (`Store.side_connection`). It holds no lock of its own."""
        side = PostgresStore(self.url, connect(self.url))
        side._lock_host = self._lock_host
        return side

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _x(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """Execute on the one connection. A statement outside a transaction is its own
        transaction: if the server went away it is run again on a new connection. Inside a
        transaction a lost server is StoreConnectionError (`_retrying` reruns the whole)."""
        idle = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            return self.conn.execute(sql, params or None)  # type: ignore[call-overload]
        except psycopg.OperationalError as exc:
            if not (idle and self._connection_lost()):
                raise StoreConnectionError(
                    f"{self.location}: lost the database connection: {_one_line(exc)}"
                ) from exc
        self._reconnect()
        try:
            return self.conn.execute(sql, params or None)  # type: ignore[call-overload]
        except psycopg.OperationalError as exc:
            raise StoreConnectionError(
                f"{self.location}: lost the database connection: {_one_line(exc)}"
            ) from exc

    def _connection_lost(self) -> bool:
        if self.conn.closed:
            return True
        try:
            self.conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return True
        return False

    def _many(self, sql: str, rows: Iterable[Any]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)
        except psycopg.OperationalError as exc:
            raise StoreConnectionError(
                f"{self.location}: lost the database connection: {_one_line(exc)}"
            ) from exc

    def _copy_rows(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """COPY rows in on the one connection (inside the caller's transaction)."""
        try:
            with self.conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[arg-type]
                for row in rows:
                    copy.write_row(row)
        except psycopg.OperationalError as exc:
            raise StoreConnectionError(
                f"{self.location}: lost the database connection: {_one_line(exc)}"
            ) from exc

    def _in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @property
    def schema_version(self) -> int:
        self._x(VERSION_TABLE)
        row = self._x("SELECT max(version) FROM mailctl_schema").fetchone()
        return int(row[0] or 0)

    def _check_version(self) -> int:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.location}: schema version {current} is newer than this mailctl knows "
                f"({len(MIGRATIONS)}); upgrade mailctl"
            )
        return current

    def migrate(self) -> None:
        """Apply the missing migrations (one sender at a time)."""
        with self.transaction():
            self._x("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            current = self._check_version()
            for version in range(current, len(MIGRATIONS)):
                try:
                    for statement in MIGRATIONS[version]:
                        self._x(statement)
                except psycopg.DatabaseError as exc:
                    raise StoreError(
                        f"{self.location}: migration {version + 1} failed: {_one_line(exc)}"
                    ) from None
                self._x("DELETE FROM mailctl_schema")
                self._x("INSERT INTO mailctl_schema (version) VALUES (%s)", (version + 1,))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN … COMMIT; rolls back on any exception. Inside another one it joins it."""
        if self._in_transaction():
            yield
            return
        self._x("BEGIN")
        try:
            yield
        except BaseException:
            if not self.conn.closed and self._in_transaction():
                self.conn.execute("ROLLBACK")
            raise
        else:
            self._x("COMMIT")

    @contextmanager
    def batched_transaction(self) -> Iterator[Callable[[], None]]:
        """BEGIN … COMMIT, committed early by each call of the yielded function; on an
        exception what was applied is committed too (each step leaves it consistent)."""

        def commit() -> None:
            self._x("COMMIT")
            self._x("BEGIN")

        self._x("BEGIN")
        try:
            yield commit
        finally:
            if not self.conn.closed and self._in_transaction():
                self._x("COMMIT")

    def _reconnect(self) -> None:
        """Re-open the connection after the server went away (restart, failover)."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                self.conn.close()
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                if self._lock_key is not None:
                    self._x(
                        "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, self._lock_key)
                    )
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StoreConnectionError(
                        f"{self.location}: the database stayed unreachable for "
                        f"{RECONNECT_SECONDS:.0f} s ({_one_line(exc)}); the next run resumes"
                    ) from None
                time.sleep(0.5)

    def _retrying(self, work: Callable[[], T]) -> T:
        """Run one whole transaction; if the connection drops, reconnect and run it again
        (a transaction cut off by the server was rolled back, so running it again is safe)."""
        try:
            return work()
        except StoreConnectionError:
            if not self._connection_lost():
                raise
            self._reconnect()
            return work()

    # ------------------------------------------------------------------ campaigns

    _CAMPAIGN_COLUMNS = (
        "id", "name", "path", "profile", "traffic_class", "pool", "list_name", "content",
        "content_hash", "content_version", "status", "stop_reason", "created_at", "updated_at",
    )  # fmt: skip

    def _campaign(self, row: Sequence[Any]) -> dict[str, Any]:
        campaign = dict(zip(self._CAMPAIGN_COLUMNS, row, strict=True))
        campaign["content"] = json.loads(campaign["content"])
        return campaign

    def get_campaign(self, name: str) -> dict[str, Any] | None:
        row = self._x(
            f"SELECT {', '.join(self._CAMPAIGN_COLUMNS)} FROM campaigns WHERE name = %s", (name,)
        ).fetchone()
        return None if row is None else self._campaign(row)

    def list_campaigns(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(self._CAMPAIGN_COLUMNS)} FROM campaigns"
        params: list[Any] = []
        if statuses:
            sql += " WHERE status = ANY(%s)"
            params.append(list(statuses))
        sql += " ORDER BY created_at DESC, id DESC"
        return [self._campaign(row) for row in self._x(sql, params).fetchall()]

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
        row = self._x(
            """INSERT INTO campaigns (name, path, profile, traffic_class, pool, list_name,
                 content, content_hash, created_at, updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (name, path, profile, traffic_class, pool, list_name, json.dumps(content),
             content_hash, now, now),
        ).fetchone()  # fmt: skip
        return int(row[0])

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
        with self.transaction():
            self._x(
                """UPDATE campaigns SET content = %s, content_hash = %s, path = %s,
                     profile = %s, traffic_class = %s, pool = %s,
                     content_version = content_version + 1, updated_at = %s
                   WHERE id = %s""",
                (json.dumps(content), content_hash, path, profile, traffic_class, pool, now,
                 campaign_id),
            )  # fmt: skip
            cur = self._x(
                """UPDATE messages SET content_version =
                     (SELECT content_version FROM campaigns WHERE id = %s)
                   WHERE campaign_id = %s AND state IN ('queued', 'deferred')""",
                (campaign_id, campaign_id),
            )
            return int(cur.rowcount)

    def set_campaign_status(
        self, campaign_id: int, status: str, reason: str | None = None, now: float | None = None
    ) -> None:
        self._x(
            "UPDATE campaigns SET status = %s, stop_reason = %s, updated_at = %s WHERE id = %s",
            (status, reason, time.time() if now is None else now, campaign_id),
        )

    def cancel_unsent(self, campaign_id: int) -> int:
        cur = self._x(
            """UPDATE messages SET state = 'cancelled'
               WHERE campaign_id = %s AND state IN ('queued', 'deferred')""",
            (campaign_id,),
        )
        return int(cur.rowcount)

    def message_counts(self, campaign_id: int) -> dict[str, int]:
        counts = dict.fromkeys(MESSAGE_STATES, 0)
        for state, count in self._x(
            "SELECT state, count(*) FROM messages WHERE campaign_id = %s GROUP BY state",
            (campaign_id,),
        ).fetchall():
            counts[state] = count
        counts["possible_duplicates"] = self._x(
            "SELECT count(*) FROM messages WHERE campaign_id = %s AND possible_duplicate = 1",
            (campaign_id,),
        ).fetchone()[0]
        return counts

    def top_replies(self, campaign_id: int, limit: int = 10) -> list[tuple[str, int]]:
        return [
            (text, count)
            for text, count in self._x(
                """SELECT y.text, count(*) AS n
                   FROM replies y JOIN messages m ON m.id = y.message_id
                   WHERE m.campaign_id = %s GROUP BY y.text ORDER BY n DESC LIMIT %s""",
                (campaign_id, limit),
            ).fetchall()
        ]

    # ------------------------------------------------------------------ messages

    def queue_messages(
        self, campaign_id: int, list_name: str, now: float, make_tracking_id: Callable[[], str]
    ) -> tuple[int, int]:
        """One message per list member not yet queued for this campaign; returns
        (queued, suppressed). Suppressed recipients get a row in state `suppressed`."""
        with self.transaction():
            # One queuer per campaign at a time: two hosts loading it add each member once.
            self._x("SELECT id FROM campaigns WHERE id = %s FOR UPDATE", (campaign_id,))
            rows = self._x(
                """SELECT r.id, r.email, r.domain,
                          (EXISTS (SELECT 1 FROM suppression x
                                   WHERE x.address IN (r.email_key, '*@' || r.domain)
                                     AND (x.expires_at IS NULL OR x.expires_at > %s))
                           OR EXISTS (SELECT 1 FROM list_unsubscribes u
                                      WHERE u.list_name = l.name AND u.address = r.email_key))
                   FROM lists l
                   JOIN list_members m ON m.list_id = l.id
                   JOIN recipients r ON r.id = m.recipient_id
                   WHERE l.name = %s
                     AND NOT EXISTS (SELECT 1 FROM messages g
                                     WHERE g.campaign_id = %s AND g.recipient_id = r.id)
                   ORDER BY r.id""",
                (now, list_name, campaign_id),
            ).fetchall()
            version = self._x(
                "SELECT content_version FROM campaigns WHERE id = %s", (campaign_id,)
            ).fetchone()[0]
            suppressed = sum(1 for row in rows if row[3])
            cols = (
                "campaign_id", "recipient_id", "email", "domain", "state", "tracking_id",
                "queued_at", "next_attempt_at", "content_version",
            )  # fmt: skip
            with self.conn.cursor().copy(f"COPY messages ({', '.join(cols)}) FROM STDIN") as copy:
                for recipient_id, email, domain, is_suppressed in rows:
                    state = "suppressed" if is_suppressed else "queued"
                    copy.write_row(
                        (campaign_id, recipient_id, email, domain, state, make_tracking_id(),
                         now, now, version)
                    )  # fmt: skip
        return len(rows) - suppressed, suppressed

    _CLAIM_COLUMNS = (
        "id", "campaign_id", "recipient_id", "email", "domain", "tracking_id", "attempts",
        "queued_at", "possible_duplicate", "first_attempt_at", "next_attempt_at", "ip",
        "last_code", "last_reply",
    )  # fmt: skip

    def claim_due(
        self, campaign_ids: Sequence[int], now: float, run_id: int, limit: int
    ) -> list[dict[str, Any]]:
        """Move up to `limit` due messages to `sending` for this run, with their fields.

        Rows another sender is claiming at this instant are skipped, not waited for; every
        lease/4 seconds the claim first requeues what runs with expired leases left."""
        if not campaign_ids:
            return []
        if time.monotonic() >= self._next_lease_check:
            self._retrying(lambda: self._recover_expired(exclude_run=run_id))
            self._next_lease_check = time.monotonic() + self.lease / 4

        def claim() -> list[dict[str, Any]]:
            rows = self._x(
                f"""WITH due AS (
                      SELECT id FROM messages
                      WHERE state IN ('queued', 'deferred') AND next_attempt_at <= %s
                        AND campaign_id = ANY(%s)
                      ORDER BY next_attempt_at, id LIMIT %s
                      FOR UPDATE SKIP LOCKED)
                    UPDATE messages m SET state = 'sending', run_id = %s
                    FROM due, recipients r
                    WHERE m.id = due.id AND r.id = m.recipient_id
                    RETURNING {", ".join("m." + c for c in self._CLAIM_COLUMNS)},
                              r.fields::text""",
                (now, list(campaign_ids), limit, run_id),
            ).fetchall()
            claimed = []
            for row in rows:
                message = dict(zip(self._CLAIM_COLUMNS, row[:-1], strict=True))
                message["fields_json"] = row[-1]  # raw JSON: whoever renders decodes it
                claimed.append(message)
            return claimed

        claimed = self._retrying(claim)
        claimed.sort(key=lambda m: (m["next_attempt_at"], m["id"]))  # due first, as claimed
        return claimed

    def release(self, message_ids: Sequence[int]) -> None:
        """Claimed but never attempted: back to the queue, untouched."""
        if not message_ids:
            return
        ids = list(message_ids)
        self._retrying(
            lambda: self._x(
                "UPDATE messages SET state = 'queued' WHERE id = ANY(%s) AND state = 'sending'",
                (ids,),
            )
        )

    def record_outcomes(
        self,
        outcomes: Sequence[DeliveryRecord],
        ip_days: Sequence[IpDayCounts] = (),
        suppressions: Sequence[SuppressionEntry] = (),
    ) -> None:
        """Commit a batch of delivery outcomes in one transaction, with the warm-up counts
        and the suppressions the domain decided they carry. If the server goes away the
        batch is sent again on a new connection (it was rolled back whole)."""
        if not outcomes and not ip_days and not suppressions:
            return
        self._retrying(lambda: self._record(outcomes, ip_days, suppressions))

    def _record(
        self,
        outcomes: Sequence[DeliveryRecord],
        ip_days: Sequence[IpDayCounts],
        suppressions: Sequence[SuppressionEntry],
    ) -> None:
        with self.transaction():
            if outcomes:
                # One statement for the batch: a VALUES list joined on id.
                deferred = [o.state == "deferred" for o in outcomes]
                values = [
                    (o.message_id, o.state, o.attempted, o.at, o.next_attempt_at, o.ip,
                     o.provider, o.code, o.reply, o.reason,
                     o.wait_kind if waits else None, o.wait_reason if waits else None,
                     int(o.possible_duplicate))
                    for o, waits in zip(outcomes, deferred, strict=True)
                ]  # fmt: skip
                self._x(
                    """UPDATE messages m SET state = v.state,
                         attempts = m.attempts + CASE WHEN v.attempted THEN 1 ELSE 0 END,
                         last_attempt_at = CASE WHEN v.attempted THEN v.at
                                           ELSE m.last_attempt_at END,
                         first_attempt_at = CASE WHEN v.attempted
                                            THEN coalesce(m.first_attempt_at, v.at)
                                            ELSE m.first_attempt_at END,
                         next_attempt_at = v.next_at,
                         sent_at = CASE WHEN v.state = 'sent' THEN v.at ELSE m.sent_at END,
                         ip = v.ip, provider = v.provider, last_code = v.code,
                         last_reply = v.reply, reason = v.reason,
                         wait_kind = v.wait_kind, wait_reason = v.wait_reason,
                         possible_duplicate = greatest(m.possible_duplicate, v.dup)
                       FROM unnest(%s::bigint[], %s::text[], %s::bool[], %s::float8[],
                                   %s::float8[], %s::text[], %s::text[], %s::int[], %s::text[],
                                   %s::text[], %s::text[], %s::text[], %s::int[])
                         AS v(id, state, attempted, at, next_at, ip, provider, code, reply,
                              reason, wait_kind, wait_reason, dup)
                       WHERE m.id = v.id""",
                    [list(column) for column in zip(*values, strict=True)],
                )
            self._many(
                """INSERT INTO replies (message_id, at, ip, provider, code, text, outcome,
                                        reason, rule, scope)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (o.message_id, o.at, o.ip, o.provider, o.code, o.reply, o.state, o.reason,
                     o.rule, o.scope)
                    for o in outcomes
                    if o.state != "sent" and o.attempted
                ],
            )  # fmt: skip
            # Sorted: two senders bumping the same counters lock them in one order.
            for signal in sorted(ip_days, key=lambda s: (s.ip, s.day, s.provider)):
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

    def mark_possible_duplicates(self, message_ids: Sequence[int]) -> None:
        """Messages cut off mid-delivery: they may have been delivered already."""
        ids = list(message_ids)
        self._retrying(
            lambda: self._x("UPDATE messages SET possible_duplicate = 1 WHERE id = ANY(%s)", (ids,))
        )

    def _recover_expired(self, exclude_run: int | None = None) -> int:
        """Requeue (flagged) messages in `sending` whose run finished or whose lease
        expired, or whose run was on this host: holding the host's send lock, any other run
        of this host is certainly gone. Messages of live runs are never touched."""
        cur = self._x(
            f"""WITH orphans AS (
                  SELECT m.id FROM messages m LEFT JOIN runs r ON r.id = m.run_id
                  WHERE m.state = 'sending' AND m.run_id IS DISTINCT FROM %s
                    AND (r.id IS NULL OR r.finished_at IS NOT NULL
                         OR r.heartbeat_at < {_SERVER_NOW} - %s OR r.host = %s)
                  FOR UPDATE OF m SKIP LOCKED)
                UPDATE messages m SET state = 'queued', possible_duplicate = 1
                FROM orphans WHERE m.id = orphans.id""",
            (exclude_run, self.lease, self._lock_host),
        )
        return int(cur.rowcount)

    def recover_interrupted(self) -> int:
        """Messages left in `sending` by runs that are gone (finished, or silent past the
        lease): back to the queue, flagged as possible duplicates."""
        return self._retrying(self._recover_expired)

    def next_due_at(self, campaign_ids: Sequence[int]) -> float | None:
        if not campaign_ids:
            return None
        row = self._x(
            """SELECT min(next_attempt_at) FROM messages
               WHERE state IN ('queued', 'deferred') AND campaign_id = ANY(%s)""",
            (list(campaign_ids),),
        ).fetchone()
        if (
            row[0] is None
            and self._x(
                """SELECT 1 FROM messages WHERE state = 'sending' AND campaign_id = ANY(%s)
               AND run_id IS NOT NULL LIMIT 1""",
                (list(campaign_ids),),
            ).fetchone()
        ):
            # Only other runs' claims are left: look again when a lease could expire.
            return time.time() + self.lease / 4
        return None if row[0] is None else float(row[0])

    def remaining(self, campaign_id: int) -> int:
        return int(
            self._x(
                """SELECT count(*) FROM messages WHERE campaign_id = %s
                   AND state IN ('queued', 'deferred', 'sending')""",
                (campaign_id,),
            ).fetchone()[0]
        )

    @contextmanager
    def send_lock(self, host: str | None = None) -> Iterator[None]:
        """One send run per host (hosts send side by side); the server drops the lock when
        the holder's connection ends, so a killed run never leaves it behind."""
        import socket
        import zlib

        name = host or socket.gethostname()
        key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        got = self._x("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, key)).fetchone()[0]
        if not got:
            raise LockedError(
                f"another mailctl run on host {name} holds {self.location}; "
                "try again when it finishes"
            )
        self._lock_key, self._lock_host = key, name
        try:
            yield
        finally:
            self._lock_key = self._lock_host = None
            if not self.conn.closed:
                try:
                    self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NAMESPACE, key))
                except psycopg.Error:
                    pass  # the connection is gone, and the lock with it

    # ------------------------------------------------------------------ runs

    def start_run(self, pid: int, host: str, now: float) -> int:
        row = self._x(
            f"""INSERT INTO runs (pid, host, started_at, heartbeat_at)
                VALUES (%s, %s, %s, {_SERVER_NOW}) RETURNING id""",
            (pid, host, now),
        ).fetchone()
        run_id = int(row[0])
        self._heartbeat = _Heartbeat(self.url, run_id, self.lease / 4)
        self._heartbeat.start()
        return run_id

    def heartbeat(self, run_id: int, now: float) -> None:
        """Renew the run's lease, on the server's clock (hosts' clocks may differ)."""
        self._retrying(
            lambda: self._x(
                f"UPDATE runs SET heartbeat_at = {_SERVER_NOW} WHERE id = %s", (run_id,)
            )
        )

    def finish_run(self, run_id: int, now: float, stop_reason: str, recovered: int) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

        def finish() -> None:
            with self.transaction():
                # Left in flight (a claim whose answer was lost, outcomes a failed commit
                # could not record): queued again, flagged as recovery does.
                self._x(
                    """UPDATE messages SET state = 'queued', possible_duplicate = 1
                       WHERE run_id = %s AND state = 'sending'""",
                    (run_id,),
                )
                self._x(
                    f"""UPDATE runs SET finished_at = %s, heartbeat_at = {_SERVER_NOW},
                          stop_reason = %s, recovered = %s WHERE id = %s""",
                    (now, stop_reason, recovered, run_id),
                )

        self._retrying(finish)


class _Heartbeat:
    """Keeps one run's lease fresh from a thread on its own pooled connection, so a run
    busy waiting on a throttled lane (no commits) still holds its claims."""

    def __init__(self, url: str, run_id: int, interval: float) -> None:
        from psycopg_pool import ConnectionPool

        self.run_id = run_id
        self.interval = max(interval, 0.2)
        self.pool = ConnectionPool(
            url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mailctl-lease", daemon=True)

    def start(self) -> None:
        self.pool.open(wait=False)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.pool.connection(timeout=self.interval) as conn:
                    conn.execute(
                        f"UPDATE runs SET heartbeat_at = {_SERVER_NOW} WHERE id = %s",
                        (self.run_id,),
                    )
            except Exception:  # noqa: BLE001, S112 - the server is away: try next beat
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.pool.close(timeout=2)


if TYPE_CHECKING:
    # mypy checks here that PostgresStore implements the whole interface.
    _implements_store: type[Store] = PostgresStore
