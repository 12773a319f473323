"""PostgreSQL: the queue as operators see it (messages that wait, why, steering them), and
the small per-campaign records of the send path (failed messages queued again, notices
given once, the address keys a campaign already holds).

One part of `PostgresStore` (it inherits `_PgQueueTables`, sharing its one connection and
transaction). The PostgreSQL twin of `sqlite_queue` plus the matching `SqliteStore` methods:
same behaviour, this dialect. Imports only the store's interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mailctl.store.base import QueueFilter, QueueGroup
from mailctl.store.postgres_schema import KEYS_TABLE
from mailctl.store.queue_filter import KIND as _KIND
from mailctl.store.queue_filter import LIST_COLUMNS as _LIST_COLUMNS
from mailctl.store.queue_filter import waiting_where


def _where(where: QueueFilter) -> tuple[str, list[Any]]:
    return waiting_where(where, ph="%s", find="strpos")


class _PgQueueTables:
    """Waiting messages of `PostgresStore`: summaries, lists, retry-now and drop; failed
    messages queued again; notices; a campaign's address keys."""

    def _x(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        raise NotImplementedError  # PostgresStore: executes on the one connection

    def queue_summary(self, by: QueueGroup, where: QueueFilter) -> list[dict[str, Any]]:
        """Waiting messages per campaign, lane (IP -> provider) or domain, and kind: how
        many, the oldest, the next due, and the full reason of the next due one."""
        sql_where, params = _where(where)
        place = (
            "m.domain"
            if by == "domain"
            else "coalesce(m.ip, '-') || ' -> ' || coalesce(m.provider, '-')"
        )
        rows = self._x(
            f"""SELECT name, place, kind, n, oldest, next_at, example FROM (
                  SELECT c.name AS name, {place} AS place, {_KIND} AS kind, count(*) AS n,
                         min(m.queued_at) AS oldest, min(m.next_attempt_at) AS next_at,
                         (array_agg(m.wait_reason ORDER BY m.next_attempt_at)
                            FILTER (WHERE m.state = 'deferred'
                                      AND m.wait_kind IS NOT NULL))[1] AS example
                  FROM messages m JOIN campaigns c ON c.id = m.campaign_id
                  WHERE {sql_where}
                  GROUP BY 1, 2, 3) q
                ORDER BY name COLLATE "C", n DESC, place COLLATE "C", kind COLLATE "C" """,
            params,
        ).fetchall()
        keys = ("campaign", by, "kind", "count", "oldest", "next_attempt_at", "example")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def queue_list(self, where: QueueFilter, limit: int | None = None) -> list[dict[str, Any]]:
        """Waiting messages, the next due first."""
        sql_where, params = _where(where)
        sql = f"""SELECT m.id, c.name, m.email, m.domain, m.ip, m.provider, m.state,
                         m.attempts, m.queued_at, m.next_attempt_at, {_KIND}, m.wait_reason
                  FROM messages m JOIN campaigns c ON c.id = m.campaign_id
                  WHERE {sql_where} ORDER BY m.next_attempt_at, m.id"""
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [dict(zip(_LIST_COLUMNS, row, strict=True)) for row in self._x(sql, params)]

    def retry_deferred(self, where: QueueFilter, now: float) -> int:
        """Deferred messages that match fall due now (the lanes still decide when they go)."""
        sql_where, params = _where(where)
        cur = self._x(
            f"""UPDATE messages AS m SET next_attempt_at = %s
                WHERE m.state = 'deferred' AND m.next_attempt_at > %s AND {sql_where}""",
            (now, now, *params),
        )
        return int(cur.rowcount)

    def drop_waiting(self, where: QueueFilter, now: float, note: str) -> int:
        """Waiting messages that match are cancelled, with ``note`` saying it was by hand.
        Messages a sender holds at this moment (in `sending`) are not waiting: untouched."""
        sql_where, params = _where(where)
        cur = self._x(
            f"""UPDATE messages AS m SET state = 'cancelled', reason = 'dropped',
                  last_reply = %s, last_attempt_at = coalesce(m.last_attempt_at, %s),
                  wait_kind = NULL, wait_reason = NULL
                WHERE {sql_where}""",
            (note, now, *params),
        )
        return int(cur.rowcount)

    def top_wait_kinds(
        self, campaign_id: int | None = None, limit: int = 5
    ) -> list[tuple[str, int]]:
        """Why deferred messages wait now, most common first."""
        sql = f"""SELECT {_KIND} AS kind, count(*) AS n FROM messages m
                  WHERE m.state = 'deferred'"""
        params: list[Any] = []
        if campaign_id is not None:
            sql += " AND m.campaign_id = %s"
            params.append(campaign_id)
        sql = f'SELECT kind, n FROM ({sql} GROUP BY 1) q ORDER BY n DESC, kind COLLATE "C"'
        sql += " LIMIT %s"
        params.append(limit)
        return [(kind, int(n)) for kind, n in self._x(sql, params).fetchall()]

    # ------------------------------------------------------------------ per-campaign records

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
        cur = self._x(
            """UPDATE messages SET state = 'queued', next_attempt_at = %s,
                 first_attempt_at = NULL
               WHERE campaign_id = %s
                 AND ((state = 'failed' AND reason = ANY(%s))
                   OR (state = 'expired' AND reason = ANY(%s)))""",
            (now, campaign_id, list(failed_reasons), list(expired_reasons)),
        )
        return int(cur.rowcount)

    def first_notice(self, key: str, now: float) -> bool:
        """Record notice `key`; True only the first time (on any host)."""
        cur = self._x(
            "INSERT INTO notices (key, first_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (key, now),
        )
        return bool(cur.rowcount == 1)

    def database_key(self, name: str, generate: Callable[[], str]) -> str:
        """Keys shared by every host (tracking ids, unsubscribe links) live in the database:
        `mailctl_keys`, kept beside the schema like `mailctl_schema`, outside the numbered
        migrations (a file database keeps them in files, so the schemas stay alike)."""
        self._x(KEYS_TABLE)
        self._x(
            "INSERT INTO mailctl_keys (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (name, generate()),
        )
        return str(self._x("SELECT value FROM mailctl_keys WHERE name = %s", (name,)).fetchone()[0])

    def campaign_recipient_keys(self, campaign_name: str) -> set[str]:
        rows = self._x(
            """SELECT coalesce(r.email_key, lower(r.email)) FROM messages g
               JOIN campaigns c ON c.id = g.campaign_id
               JOIN recipients r ON r.id = g.recipient_id
               WHERE c.name = %s""",
            (campaign_name,),
        ).fetchall()
        return {key for (key,) in rows}
