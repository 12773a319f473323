"""SQLite: the queue as operators see it — messages that wait, why, and steering them.

One part of `SqliteStore` (it inherits `_QueueTables`, sharing one connection). Imports only
the store's interface and the standard library.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mailctl.store.base import QueueFilter, QueueGroup
from mailctl.store.queue_filter import KIND as _KIND
from mailctl.store.queue_filter import LIST_COLUMNS as _LIST_COLUMNS
from mailctl.store.queue_filter import waiting_where


def _where(where: QueueFilter) -> tuple[str, list[Any]]:
    return waiting_where(where, ph="?", find="instr")


class _QueueTables:
    """Waiting messages of `SqliteStore`: summaries, lists, retry-now and drop."""

    conn: sqlite3.Connection

    def queue_summary(self, by: QueueGroup, where: QueueFilter) -> list[dict[str, Any]]:
        """Waiting messages per campaign, lane (IP -> provider) or domain, and kind: how
        many, the oldest, the next due, and the full reason of the next due one."""
        sql_where, params = _where(where)
        place = (
            "m.domain"
            if by == "domain"
            else "coalesce(m.ip, '-') || ' -> ' || coalesce(m.provider, '-')"
        )
        rows = self.conn.execute(
            f"""SELECT c.name, {place} AS place, {_KIND} AS kind, count(*),
                       min(m.queued_at), min(m.next_attempt_at),
                       (SELECT x.wait_reason FROM messages x
                        WHERE x.campaign_id = m.campaign_id AND x.state = 'deferred'
                          AND x.wait_kind = m.wait_kind
                        ORDER BY x.next_attempt_at LIMIT 1)
                FROM messages m JOIN campaigns c ON c.id = m.campaign_id
                WHERE {sql_where}
                GROUP BY c.name, place, kind
                ORDER BY c.name, count(*) DESC, place, kind""",
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
        return [
            dict(zip(_LIST_COLUMNS, row, strict=True)) for row in self.conn.execute(sql, params)
        ]

    def retry_deferred(self, where: QueueFilter, now: float) -> int:
        """Deferred messages that match fall due now (the lanes still decide when they go)."""
        sql_where, params = _where(where)
        cur = self.conn.execute(
            f"""UPDATE messages AS m SET next_attempt_at = ?
                WHERE m.state = 'deferred' AND m.next_attempt_at > ? AND {sql_where}""",
            (now, now, *params),
        )
        return cur.rowcount

    def drop_waiting(self, where: QueueFilter, now: float, note: str) -> int:
        """Waiting messages that match are cancelled, with ``note`` saying it was by hand."""
        sql_where, params = _where(where)
        cur = self.conn.execute(
            f"""UPDATE messages AS m SET state = 'cancelled', reason = 'dropped',
                  last_reply = ?, last_attempt_at = coalesce(last_attempt_at, ?),
                  wait_kind = NULL, wait_reason = NULL
                WHERE {sql_where}""",
            (note, now, *params),
        )
        return cur.rowcount

    def top_wait_kinds(
        self, campaign_id: int | None = None, limit: int = 5
    ) -> list[tuple[str, int]]:
        """Why deferred messages wait now, most common first."""
        sql = f"""SELECT {_KIND} AS kind, count(*) AS n FROM messages m
                  WHERE m.state = 'deferred'"""
        params: list[Any] = []
        if campaign_id is not None:
            sql += " AND m.campaign_id = ?"
            params.append(campaign_id)
        sql += " GROUP BY kind ORDER BY n DESC, kind LIMIT ?"
        params.append(limit)
        return [(kind, n) for kind, n in self.conn.execute(sql, params)]
