"""SQLite: the tables about addresses — recipients and lists, suppression, bounce reports.

One part of `SqliteStore` (it inherits `_AddressTables`, so both share one connection and
one transaction). Imports only the store's interface and the standard library.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from mailctl.store.base import BounceRecipientRecord, StagedCounts

_SUPPRESSION_COLUMNS = (
    "address", "reason", "source", "status", "diagnostic", "first_seen", "last_seen", "count",
    "expires_at",
)  # fmt: skip


class _AddressTables:
    """Recipients, lists, suppression and bounce reports of `SqliteStore`."""

    conn: sqlite3.Connection

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
                email_key TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                domain TEXT NOT NULL,
                fields TEXT NOT NULL
            ) WITHOUT ROWID"""
        )
        self.conn.execute("BEGIN")

    def stage_recipients(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """(email, email_key, domain, fields_json); a later row for the same key wins its
        fields, the first keeps its spelling."""
        self.conn.executemany(
            """INSERT INTO temp.import_staging (email, email_key, domain, fields)
               VALUES (?, ?, ?, ?)
               ON CONFLICT(email_key) DO UPDATE SET fields = excluded.fields""",
            rows,
        )

    def staged_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM temp.import_staging").fetchone()[0])

    def finish_import(
        self, list_name: str | None, *, skip_existing: bool, source: str | None = None
    ) -> StagedCounts:
        """Merge the staging table into recipients (and the list) in one write transaction.

        The staging rows are committed first (they are this connection's own temp table) and
        the merge takes the write lock before it reads anything: a transaction that read the
        database and then writes cannot wait for another writer (SQLite fails it at once with
        "database is locked"), so a bounce import or a send committing meanwhile would
        fail this one."""
        now = time.time()
        c = self.conn
        try:
            if c.in_transaction:
                c.execute("COMMIT")
            c.execute("BEGIN IMMEDIATE")
            imported, changed = c.execute(
                """SELECT
                     sum(r.id IS NULL),
                     sum(r.id IS NOT NULL AND json_patch(r.fields, s.fields) <> r.fields)
                   FROM temp.import_staging s LEFT JOIN recipients r ON r.email_key = s.email_key"""
            ).fetchone()
            imported, changed = imported or 0, changed or 0
            suppressed = c.execute(
                """SELECT count(*) FROM temp.import_staging s
                   WHERE s.email_key IN (SELECT address FROM active_suppression)
                      OR '*@' || s.domain IN (SELECT address FROM active_suppression)"""
            ).fetchone()[0]
            total = self.staged_count()
            # Staged fields are compact JSON already, in the form SQLite's json_patch emits.
            c.execute(
                """INSERT OR IGNORE INTO recipients
                     (email, email_key, domain, fields, created_at, updated_at)
                   SELECT s.email, s.email_key, s.domain, s.fields, ?, ?
                   FROM temp.import_staging s""",
                (now, now),
            )
            updated = 0
            if not skip_existing and changed:
                c.execute(
                    """UPDATE recipients AS r
                       SET fields = json_patch(r.fields, s.fields), updated_at = ?
                       FROM temp.import_staging AS s
                       WHERE s.email_key = r.email_key
                         AND json_patch(r.fields, s.fields) <> r.fields""",
                    (now,),
                )
                updated = changed
            if list_name:
                list_id = self._list_id(list_name, now)
                c.execute(
                    """INSERT OR IGNORE INTO list_members (list_id, recipient_id)
                       SELECT ?, r.id
                       FROM temp.import_staging s JOIN recipients r USING (email_key)""",
                    (list_id,),
                )
            if updated:
                c.execute("UPDATE lists SET source = NULL WHERE source IS NOT NULL")
            if list_name:
                recorded = None if skip_existing else source
                c.execute("UPDATE lists SET source = ? WHERE id = ?", (recorded, list_id))
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

    def list_source(self, name: str) -> str | None:
        row = self.conn.execute("SELECT source FROM lists WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

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
        else:  # rows merged into another by the case-insensitive key keep only history
            sql += " WHERE r.merged_into IS NULL"
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
            row = self.conn.execute(
                "SELECT count(*) FROM recipients WHERE merged_into IS NULL"
            ).fetchone()
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
        """Add or refresh a suppression; True when the address was not suppressed before.

        ``address`` is a canonical key (`mailctl.recipients.address`), as in every
        suppression method: the caller keys, the store compares exactly."""
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

    def unsubscribe(self, address: str, *, list_name: str | None, source: str, now: float) -> bool:
        """An unsubscribe (see `Store.unsubscribe`; ``address`` is a canonical key, as in every
        suppression method); one statement, so concurrent requests
        for the same address record it once. A temporary suppression (soft bounces) becomes
        a permanent one: an unsubscribe never lapses by itself."""
        if list_name is None:
            cur = self.conn.execute(
                """INSERT INTO suppression (address, reason, source, first_seen, last_seen)
                   VALUES (?, 'unsubscribe', ?, ?, ?)
                   ON CONFLICT(address) DO UPDATE SET
                     reason = 'unsubscribe', source = excluded.source,
                     last_seen = excluded.last_seen, expires_at = NULL
                   WHERE suppression.expires_at IS NOT NULL""",
                (address, source, now, now),
            )
        else:
            cur = self.conn.execute(
                """INSERT INTO list_unsubscribes (list_name, address, source, at)
                   VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (list_name, address, source, now),
            )
            # Mail of this list's campaigns not yet sent is not sent: the send loop's last
            # check reads the global suppression only.
            self.conn.execute(
                """UPDATE messages SET state = 'suppressed', reason = 'unsubscribe'
                   WHERE state IN ('queued', 'deferred')
                     AND recipient_id IN (SELECT id FROM recipients WHERE email_key = ?)
                     AND campaign_id IN (SELECT id FROM campaigns WHERE list_name = ?)""",
                (address, list_name),
            )
        return cur.rowcount > 0

    def unsubscribed(self, address: str, list_name: str | None) -> bool:
        if self.suppression_for(address) is not None:
            return True
        if list_name is None:
            return False
        return (
            self.conn.execute(
                "SELECT 1 FROM list_unsubscribes WHERE list_name = ? AND address = ?",
                (list_name, address),
            ).fetchone()
            is not None
        )

    def list_unsubscribes(self, list_name: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT list_name, address, reason, source, at FROM list_unsubscribes"
        params: tuple[Any, ...] = ()
        if list_name is not None:
            sql += " WHERE list_name = ?"
            params = (list_name,)
        columns = ("list_name", "address", "reason", "source", "at")
        return [
            dict(zip(columns, row, strict=True))
            for row in self.conn.execute(sql + " ORDER BY list_name, address", params)
        ]

    # ------------------------------------------------------------------ remote mailboxes

    def remote_mark(self, mailbox: str) -> tuple[int | None, int] | None:
        row = self.conn.execute(
            "SELECT uidvalidity, last_uid FROM remote_mailboxes WHERE mailbox = ?", (mailbox,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def set_remote_mark(
        self, mailbox: str, uidvalidity: int | None, last_uid: int, now: float
    ) -> None:
        self.conn.execute(
            """INSERT INTO remote_mailboxes (mailbox, uidvalidity, last_uid, updated_at)
               VALUES (?, ?, ?, ?)
               ON CONFLICT(mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                 last_uid = excluded.last_uid, updated_at = excluded.updated_at""",
            (mailbox, uidvalidity, last_uid, now),
        )

    def remote_seen(self, mailbox: str, uids: Iterable[str]) -> set[str]:
        wanted = list(uids)
        found: set[str] = set()
        for start in range(0, len(wanted), 400):
            chunk = wanted[start : start + 400]
            found.update(
                row[0]
                for row in self.conn.execute(
                    f"""SELECT uid FROM remote_seen
                        WHERE mailbox = ? AND uid IN ({",".join("?" * len(chunk))})""",
                    (mailbox, *chunk),
                )
            )
        return found

    def add_remote_seen(self, mailbox: str, uids: Iterable[str], now: float) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO remote_seen (mailbox, uid, at) VALUES (?, ?, ?)",
            [(mailbox, uid, now) for uid in uids],
        )

    def unsuppress(self, address: str) -> bool:
        cur = self.conn.execute("DELETE FROM suppression WHERE address = ?", (address,))
        return cur.rowcount > 0

    def suppression_for(
        self, address: str, *, now: float | None = None, exact: bool = False
    ) -> dict[str, Any] | None:
        """The active suppression entry matching an address key (exact, or its *@domain)."""
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
        """Which of these address keys are suppressed now (exactly or by their domain)."""
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

    # ------------------------------------------------------------------ bounce reports

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
        aliases: Sequence[str] = (),
    ) -> int | None:
        """Store a report once; None when this report was imported before, under its digest
        or one of its `aliases` (the digests earlier versions stored for it)."""
        if (
            aliases
            and self.conn.execute(
                f"SELECT 1 FROM bounce_events WHERE digest IN ({','.join('?' * len(aliases))})",
                tuple(aliases),
            ).fetchone()
        ):
            return None
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
        self,
        event_id: int,
        day: str,
        recipient: BounceRecipientRecord,
        message_id: int | None,
        address_key: str | None = None,
    ) -> None:
        """One recipient of a report, filed under its address key (soft-bounce scoring
        compares keys)."""
        self.conn.execute(
            """INSERT INTO bounce_recipients (event_id, address, day, status, action, reason,
                 permanent, suppress, diagnostic, message_id)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                event_id,
                address_key or recipient.address,
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

    # ------------------------------------------------------------------ messages reported on

    _MATCH_COLUMNS = ("id", "campaign_id", "email", "state", "ip", "provider", "sent_at")

    def message_by_tracking_id(self, tracking_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {', '.join(self._MATCH_COLUMNS)} FROM messages WHERE tracking_id = ?",
            (tracking_id,),
        ).fetchone()
        return None if row is None else dict(zip(self._MATCH_COLUMNS, row, strict=True))

    def latest_message_to(self, address_key: str, since: float) -> dict[str, Any] | None:
        """The most recent message sent to an address key (correlation without a tracking
        id), whichever of the person's spellings it went to."""
        row = self.conn.execute(
            f"""SELECT {", ".join("m." + c for c in self._MATCH_COLUMNS)} FROM messages m
                WHERE m.recipient_id IN (
                    SELECT id FROM recipients WHERE email_key = ?1
                    UNION SELECT id FROM recipients WHERE merged_into IN
                        (SELECT id FROM recipients WHERE email_key = ?1))
                  AND m.sent_at >= ?2
                ORDER BY m.sent_at DESC LIMIT 1""",
            (address_key, since),
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
