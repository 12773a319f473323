"""PostgreSQL: the tables about addresses — recipients and lists, suppression, bounce reports.

One part of `PostgresStore` (it inherits `_PgAddressTables`, so both share one connection
and one transaction). The PostgreSQL twin of `sqlite_addresses`: same behaviour, this
dialect. Imports only the store's interface and psycopg.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from mailctl.store.base import BounceRecipientRecord, StagedCounts

_SUPPRESSION_COLUMNS = (
    "address", "reason", "source", "status", "diagnostic", "first_seen", "last_seen", "count",
    "expires_at",
)  # fmt: skip


class _PgAddressTables:
    """Recipients, lists, suppression and bounce reports of `PostgresStore`."""

    def _x(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        raise NotImplementedError  # PostgresStore: executes on the one connection

    def _many(self, sql: str, rows: Iterable[Any]) -> None:
        raise NotImplementedError

    def _in_transaction(self) -> bool:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # PostgresStore: BEGIN … COMMIT, joined when nested

    # ------------------------------------------------------------------ recipients import

    def begin_import(self) -> None:
        """A staging table for one streamed import; merged into recipients at the end.
        Each batch arrives by COPY into `import_batch` (no index, no per-row statement) and
        is folded into `import_staging` with one INSERT: a list of 100,000 rows is a few
        dozen round trips, not 100,000 statements. Every `send --all` repeats its
        campaigns' imports, so several senders starting together each pay this."""
        self._x("DROP TABLE IF EXISTS pg_temp.import_staging")
        self._x("DROP TABLE IF EXISTS pg_temp.import_batch")
        self._x(
            """CREATE TEMP TABLE import_staging (
                email_key text PRIMARY KEY, email text NOT NULL, domain text NOT NULL,
                fields jsonb NOT NULL)"""
        )
        self._x(
            """CREATE TEMP TABLE import_batch (
                seq integer NOT NULL, email text NOT NULL, email_key text NOT NULL,
                domain text NOT NULL, fields jsonb NOT NULL)"""
        )
        self._x("BEGIN")

    def _copy_rows(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError  # PostgresStore: COPY … FROM STDIN on the one connection

    def stage_recipients(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """(email, email_key, domain, fields_json); a later row for the same key wins its
        fields, the first keeps its spelling (within a batch by its order, across batches
        by ON CONFLICT)."""
        if not rows:
            return
        self._x("TRUNCATE import_batch")
        self._copy_rows(
            "COPY import_batch (seq, email, email_key, domain, fields) FROM STDIN",
            ((i, *row) for i, row in enumerate(rows)),
        )
        self._x(
            """INSERT INTO import_staging (email, email_key, domain, fields)
               SELECT f.email, f.email_key, f.domain, l.fields
               FROM (SELECT DISTINCT ON (email_key) email_key, email, domain
                     FROM import_batch ORDER BY email_key, seq) f
               JOIN (SELECT DISTINCT ON (email_key) email_key, fields
                     FROM import_batch ORDER BY email_key, seq DESC) l USING (email_key)
               ON CONFLICT (email_key) DO UPDATE SET fields = excluded.fields"""
        )

    def staged_count(self) -> int:
        return int(self._x("SELECT count(*) FROM import_staging").fetchone()[0])

    def finish_import(
        self, list_name: str | None, *, skip_existing: bool, source: str | None = None
    ) -> StagedCounts:
        """Merge the staging table into recipients (and the list) in the open transaction."""
        now = time.time()
        try:
            imported, changed = self._x(
                """SELECT count(*) FILTER (WHERE r.id IS NULL),
                          count(*) FILTER (WHERE r.id IS NOT NULL
                                             AND r.fields || s.fields <> r.fields)
                   FROM import_staging s LEFT JOIN recipients r ON r.email_key = s.email_key"""
            ).fetchone()
            suppressed = self._x(
                """SELECT count(*) FROM import_staging s
                   WHERE EXISTS (SELECT 1 FROM suppression x
                                 WHERE x.address IN (s.email_key, '*@' || s.domain)
                                   AND (x.expires_at IS NULL OR x.expires_at > %s))""",
                (now,),
            ).fetchone()[0]
            total = self.staged_count()
            self._x(
                """INSERT INTO recipients
                     (email, email_key, domain, fields, created_at, updated_at)
                   SELECT s.email, s.email_key, s.domain, s.fields, %s, %s
                   FROM import_staging s ORDER BY s.email_key
                   ON CONFLICT DO NOTHING""",
                (now, now),
            )
            updated = 0
            if not skip_existing and changed:
                self._x(
                    """UPDATE recipients AS r SET fields = r.fields || s.fields, updated_at = %s
                       FROM import_staging AS s
                       WHERE s.email_key = r.email_key AND r.fields || s.fields <> r.fields""",
                    (now,),
                )
                updated = changed
            if list_name:
                list_id = self._list_id(list_name, now)
                self._x(
                    """INSERT INTO list_members (list_id, recipient_id)
                       SELECT %s, r.id FROM import_staging s JOIN recipients r USING (email_key)
                       ON CONFLICT DO NOTHING""",
                    (list_id,),
                )
            if updated:
                self._x("UPDATE lists SET source = NULL WHERE source IS NOT NULL")
            if list_name:
                recorded = None if skip_existing else source
                self._x("UPDATE lists SET source = %s WHERE id = %s", (recorded, list_id))
            self._x("COMMIT")
        except BaseException:
            if self._in_transaction():
                self._x("ROLLBACK")
            raise
        finally:
            self._x("DROP TABLE IF EXISTS pg_temp.import_staging")
            self._x("DROP TABLE IF EXISTS pg_temp.import_batch")
        return StagedCounts(
            imported=imported,
            updated=updated,
            unchanged=total - imported - updated,
            suppressed=suppressed,
        )

    def abort_import(self) -> None:
        if self._in_transaction():
            self._x("ROLLBACK")
        self._x("DROP TABLE IF EXISTS pg_temp.import_staging")
        self._x("DROP TABLE IF EXISTS pg_temp.import_batch")

    def _list_id(self, name: str, now: float) -> int:
        self._x(
            "INSERT INTO lists (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (name, now),
        )
        return int(self._x("SELECT id FROM lists WHERE name = %s", (name,)).fetchone()[0])

    # ------------------------------------------------------------------ recipients queries

    def list_exists(self, name: str) -> bool:
        return self._x("SELECT 1 FROM lists WHERE name = %s", (name,)).fetchone() is not None

    def list_source(self, name: str) -> str | None:
        row = self._x("SELECT source FROM lists WHERE name = %s", (name,)).fetchone()
        return None if row is None else row[0]

    def iter_recipients(
        self, list_name: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        sql = "SELECT r.id, r.email, r.domain, r.fields::text FROM recipients r"
        params: list[Any] = []
        if list_name:
            sql += (
                " JOIN list_members m ON m.recipient_id = r.id"
                " JOIN lists l ON l.id = m.list_id WHERE l.name = %s"
            )
            params.append(list_name)
        else:  # rows merged into another by the case-insensitive key keep only history
            sql += " WHERE r.merged_into IS NULL"
        sql += " ORDER BY r.id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        for rid, email, domain, fields in self._x(sql, params).fetchall():
            yield {"id": rid, "email": email, "domain": domain, "fields": json.loads(fields)}

    def count_recipients(self, list_name: str | None = None) -> int:
        if list_name:
            row = self._x(
                """SELECT count(*) FROM list_members m JOIN lists l ON l.id = m.list_id
                   WHERE l.name = %s""",
                (list_name,),
            ).fetchone()
        else:
            row = self._x("SELECT count(*) FROM recipients WHERE merged_into IS NULL").fetchone()
        return int(row[0])

    def list_counts(self) -> list[tuple[str, int]]:
        return [
            (name, count)
            for name, count in self._x(
                """SELECT l.name, count(m.recipient_id) FROM lists l
                   LEFT JOIN list_members m ON m.list_id = l.id GROUP BY l.id ORDER BY l.name"""
            ).fetchall()
        ]

    def recipient_missing_field(self, list_name: str, field_name: str) -> str | None:
        """The first list member whose fields lack `field_name`, or None."""
        row = self._x(
            """SELECT r.email FROM lists l JOIN list_members m ON m.list_id = l.id
               JOIN recipients r ON r.id = m.recipient_id
               WHERE l.name = %s AND NOT jsonb_exists(r.fields, %s)
               ORDER BY r.id LIMIT 1""",
            (list_name, field_name),
        ).fetchone()
        return None if row is None else str(row[0])

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
        self._x(
            """INSERT INTO suppression AS x
                 (address, reason, source, status, diagnostic, first_seen, last_seen, count,
                  expires_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s)
               ON CONFLICT (address) DO UPDATE SET
                 reason = CASE WHEN x.expires_at IS NULL AND excluded.expires_at IS NOT NULL
                               THEN x.reason ELSE excluded.reason END,
                 source = excluded.source, status = excluded.status,
                 diagnostic = excluded.diagnostic, last_seen = excluded.last_seen,
                 count = x.count + 1,
                 expires_at = CASE WHEN x.expires_at IS NULL OR excluded.expires_at IS NULL
                                   THEN NULL
                                   ELSE greatest(x.expires_at, excluded.expires_at) END""",
            (address, reason, source, status, diagnostic, now, now, expires_at),
        )
        return not existed

    def unsuppress(self, address: str) -> bool:
        cur = self._x("DELETE FROM suppression WHERE address = %s", (address,))
        return bool(cur.rowcount > 0)

    def unsubscribe(self, address: str, *, list_name: str | None, source: str, now: float) -> bool:
        """An unsubscribe (see `Store.unsubscribe`; ``address`` is a canonical key); one
        statement, so concurrent requests for one address (from any host) record it once.
        A temporary suppression becomes a permanent one: an unsubscribe never lapses."""
        if list_name is None:
            cur = self._x(
                """INSERT INTO suppression AS x (address, reason, source, first_seen, last_seen)
                   VALUES (%s, 'unsubscribe', %s, %s, %s)
                   ON CONFLICT (address) DO UPDATE SET
                     reason = 'unsubscribe', source = excluded.source,
                     last_seen = excluded.last_seen, expires_at = NULL
                   WHERE x.expires_at IS NOT NULL""",
                (address, source, now, now),
            )
            return bool(cur.rowcount > 0)
        with self.transaction():
            cur = self._x(
                """INSERT INTO list_unsubscribes (list_name, address, source, at)
                   VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                (list_name, address, source, now),
            )
            # Mail of this list's campaigns not yet sent is not sent: the send loop's last
            # check reads the global suppression only.
            self._x(
                """UPDATE messages SET state = 'suppressed', reason = 'unsubscribe'
                   WHERE state IN ('queued', 'deferred')
                     AND recipient_id IN (SELECT id FROM recipients WHERE email_key = %s)
                     AND campaign_id IN (SELECT id FROM campaigns WHERE list_name = %s)""",
                (address, list_name),
            )
        return bool(cur.rowcount > 0)

    def unsubscribed(self, address: str, list_name: str | None) -> bool:
        if self.suppression_for(address) is not None:
            return True
        if list_name is None:
            return False
        row = self._x(
            "SELECT 1 FROM list_unsubscribes WHERE list_name = %s AND address = %s",
            (list_name, address),
        ).fetchone()
        return row is not None

    def list_unsubscribes(self, list_name: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT list_name, address, reason, source, at FROM list_unsubscribes"
        params: tuple[Any, ...] = ()
        if list_name is not None:
            sql += " WHERE list_name = %s"
            params = (list_name,)
        columns = ("list_name", "address", "reason", "source", "at")
        sql += ' ORDER BY list_name COLLATE "C", address COLLATE "C"'
        return [dict(zip(columns, row, strict=True)) for row in self._x(sql, params).fetchall()]

    # ------------------------------------------------------------------ remote mailboxes

    def remote_mark(self, mailbox: str) -> tuple[int | None, int] | None:
        row = self._x(
            "SELECT uidvalidity, last_uid FROM remote_mailboxes WHERE mailbox = %s", (mailbox,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def set_remote_mark(
        self, mailbox: str, uidvalidity: int | None, last_uid: int, now: float
    ) -> None:
        self._x(
            """INSERT INTO remote_mailboxes (mailbox, uidvalidity, last_uid, updated_at)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                 last_uid = excluded.last_uid, updated_at = excluded.updated_at""",
            (mailbox, uidvalidity, last_uid, now),
        )

    def remote_seen(self, mailbox: str, uids: Iterable[str]) -> set[str]:
        wanted = list(uids)
        if not wanted:
            return set()
        return {
            row[0]
            for row in self._x(
                "SELECT uid FROM remote_seen WHERE mailbox = %s AND uid = ANY(%s)",
                (mailbox, wanted),
            ).fetchall()
        }

    def add_remote_seen(self, mailbox: str, uids: Iterable[str], now: float) -> None:
        self._many(
            """INSERT INTO remote_seen (mailbox, uid, at) VALUES (%s, %s, %s)
               ON CONFLICT DO NOTHING""",
            [(mailbox, uid, now) for uid in uids],
        )

    def suppression_for(
        self, address: str, *, now: float | None = None, exact: bool = False
    ) -> dict[str, Any] | None:
        """The active suppression entry matching an address key (exact, or its *@domain)."""
        now = time.time() if now is None else now
        candidates = [address]
        if not exact and "@" in address and not address.startswith("*@"):
            candidates.append("*@" + address.rsplit("@", 1)[1].lower())
        row = self._x(
            f"""SELECT {", ".join(_SUPPRESSION_COLUMNS)}
                FROM suppression WHERE address = ANY(%s)
                  AND (expires_at IS NULL OR expires_at > %s)
                ORDER BY address = %s DESC LIMIT 1""",
            (candidates, now, address),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(_SUPPRESSION_COLUMNS, row, strict=True))

    def suppressed_set(self, addresses: Iterable[str], now: float | None = None) -> set[str]:
        """Which of these address keys are suppressed now (exactly or by their domain)."""
        now = time.time() if now is None else now
        wanted = list(addresses)
        if not wanted:
            return set()
        keys = set(wanted) | {"*@" + a.rsplit("@", 1)[1].lower() for a in wanted if "@" in a}
        hits = {
            row[0]
            for row in self._x(
                """SELECT address FROM suppression WHERE address = ANY(%s)
                   AND (expires_at IS NULL OR expires_at > %s)""",
                (list(keys), now),
            ).fetchall()
        }
        return {a for a in wanted if a in hits or ("*@" + a.rsplit("@", 1)[-1].lower()) in hits}

    def iter_suppression(
        self, reason: str | None = None, *, include_expired: bool = False
    ) -> Iterator[dict[str, Any]]:
        sql = f"SELECT {', '.join(_SUPPRESSION_COLUMNS)} FROM suppression WHERE true"
        params: list[Any] = []
        if reason:
            sql += " AND reason = %s"
            params.append(reason)
        if not include_expired:
            sql += " AND (expires_at IS NULL OR expires_at > %s)"
            params.append(time.time())
        sql += ' ORDER BY address COLLATE "C"'
        for row in self._x(sql, params).fetchall():
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
            and self._x(
                "SELECT 1 FROM bounce_events WHERE digest = ANY(%s)", (list(aliases),)
            ).fetchone()
        ):
            return None
        row = self._x(
            """INSERT INTO bounce_events (digest, source, kind, imported_at, reported_at,
                 tracking_id, original_message_id, feedback_type, message_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (digest) DO NOTHING RETURNING id""",
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
        ).fetchone()
        return None if row is None else int(row[0])

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
        self._x(
            """INSERT INTO bounce_recipients (event_id, address, day, status, action, reason,
                 permanent, suppress, diagnostic, message_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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
        """Distinct days with a temporary failure for this address within [since, until]."""
        row = self._x(
            """SELECT count(DISTINCT day) FROM bounce_recipients
               WHERE address = %s AND day >= %s AND day <= %s AND permanent = 0
                 AND (action IS NULL OR action <> 'delayed')""",
            (address, since_day, until_day),
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ messages reported on

    _MATCH_COLUMNS = ("id", "campaign_id", "email", "state", "ip", "provider", "sent_at")

    def message_by_tracking_id(self, tracking_id: str) -> dict[str, Any] | None:
        row = self._x(
            f"SELECT {', '.join(self._MATCH_COLUMNS)} FROM messages WHERE tracking_id = %s",
            (tracking_id,),
        ).fetchone()
        return None if row is None else dict(zip(self._MATCH_COLUMNS, row, strict=True))

    def latest_message_to(self, address_key: str, since: float) -> dict[str, Any] | None:
        """The most recent message sent to an address key (correlation without a tracking
        id), whichever of the person's spellings it went to."""
        row = self._x(
            f"""SELECT {", ".join("m." + c for c in self._MATCH_COLUMNS)} FROM messages m
                WHERE m.recipient_id IN (
                    SELECT id FROM recipients WHERE email_key = %(key)s
                    UNION SELECT id FROM recipients WHERE merged_into IN
                        (SELECT id FROM recipients WHERE email_key = %(key)s))
                  AND m.sent_at >= %(since)s
                ORDER BY m.sent_at DESC LIMIT 1""",
            {"key": address_key, "since": since},
        ).fetchone()
        return None if row is None else dict(zip(self._MATCH_COLUMNS, row, strict=True))

    def mark_reported(
        self, message_id: int, state: str, reply: str | None, reason: str | None
    ) -> bool:
        """A sent message that bounced or drew a complaint later; True if it changed."""
        allowed = ["sent", "bounced", "failed"] if state == "complained" else ["sent"]
        cur = self._x(
            """UPDATE messages SET state = %s, last_reply = coalesce(%s, last_reply),
                  reason = coalesce(%s, reason)
                WHERE id = %s AND state = ANY(%s)""",
            (state, reply, reason, message_id, allowed),
        )
        return bool(cur.rowcount > 0)
