"""SQLite: the queue as operators see it — messages that wait, why, and steering them.

One part of `SqliteStore` (it inherits `_QueueTables`, sharing one connection). Imports only
the store's interface and the standard library.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mailctl.store.base import QueueFilter, QueueGroup

# What a waiting message waits for, as one groupable label (deferrals recorded before
# reasons were stored have none).
_KIND = """CASE WHEN m.state = 'deferred'
                THEN coalesce(m.wait_kind, 'deferred (reason not recorded)')
                ELSE 'queued' END"""
_WAITING = "m.state IN ('queued', 'deferred')"
_LIST_COLUMNS = (
    "id", "campaign", "email", "domain", "ip", "provider", "state", "attempts", "queued_at",
    "next_attempt_at", "kind", "reason",
)  # fmt: skip


def _where(where: QueueFilter) -> tuple[str, list[Any]]:
    clauses = [_WAITING]
    params: list[Any] = []
    if where.campaign_id is not None:
        clauses.append("m.campaign_id = ?")
        params.append(where.campaign_id)
    if where.domain is not None:
        clauses.append("m.domain = ?")
        params.append(where.domain)
    if where.provider is not None:
        clauses.append("m.provider = ?")
        params.append(where.provider)
    if where.address_key is not None:
        clauses.append(
            """m.recipient_id IN (SELECT id FROM recipients WHERE email_key = ?
                 UNION SELECT id FROM recipients WHERE merged_into IN
                   (SELECT id FROM recipients WHERE email_key = ?))"""
        )
        params += [where.address_key, where.address_key]
    if where.reason is not None:
        clauses.append(
            f"(instr(lower({_KIND}), ?) > 0 OR instr(lower(coalesce(m.wait_reason, '')), ?) > 0)"
        )
        params += [where.reason.lower(), where.reason.lower()]
    return " AND ".join(clauses), params


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
