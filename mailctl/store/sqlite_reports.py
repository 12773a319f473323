"""The SQLite report queries: every SQL statement of `mailctl report` (`store.reports`).

Read-only. Implements `mailctl.store.base.ReportQueries`; imports nothing from mailctl but
the store's interface. Every query takes a `group` naming how rows are keyed (see
`_GROUP_KEYS`) and an optional campaign id; the key of each result row is the group's value
(None for ``"all"``). Group columns come from a fixed table, never from a caller's string,
so the f-strings below cannot inject SQL.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mailctl.store.base import ReportGroup

# How messages are keyed per group. A message's lane is the one of its last attempt.
_GROUP_KEYS: dict[str, str] = {
    "all": "NULL",
    "campaign": "m.campaign_id",
    "ip": "m.ip",
    "provider": "m.provider",
}

# Replies are keyed by the lane that answered them (a message may have tried several).
_REPLY_GROUP_KEYS: dict[str, str] = {
    "all": "NULL",
    "campaign": "m.campaign_id",
    "ip": "y.ip",
    "provider": "y.provider",
}

# One row per message that an imported report is about: whether any report said it failed
# permanently, failed temporarily (a delay warning is not a failure), or drew a complaint.
# Driven from bounce_recipients (small) so it never scans messages per report.
_REPORT_FLAGS = """flags AS (
    SELECT r.message_id AS id,
           max(e.kind = 'bounce' AND r.permanent = 1) AS hard,
           max(e.kind = 'bounce' AND r.permanent = 0
               AND coalesce(r.action, '') <> 'delayed') AS soft,
           max(e.kind = 'complaint') AS complaint
    FROM bounce_recipients r JOIN bounce_events e ON e.id = r.event_id
    WHERE r.message_id IS NOT NULL
    GROUP BY r.message_id
)"""

# Messages a receiver gave a final answer to (accepted or rejected): the denominator of
# bounce and complaint rates, as for the campaign circuit breaker. Template failures were
# never attempted (attempts = 0) and do not count.
_ANSWERED = "m.state IN ('sent', 'bounced', 'complained', 'failed') AND m.attempts > 0"


def _where(campaign_id: int | None, *conditions: str) -> tuple[str, list[Any]]:
    clauses = list(conditions)
    params: list[Any] = []
    if campaign_id is not None:
        clauses.append("m.campaign_id = ?")
        params.append(campaign_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class SqliteReportQueries:
    """The report aggregates of one open SQLite database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def unsubscribe_sources(self) -> list[str]:
        return [
            row[0] or ""
            for row in self.conn.execute(
                """SELECT source FROM suppression WHERE reason = 'unsubscribe'
                   UNION ALL SELECT source FROM list_unsubscribes"""
            )
        ]

    def campaigns(self, name: str | None = None) -> list[dict[str, Any]]:
        """Campaign identities, newest first (creation time, then id for ties)."""
        columns = (
            "id",
            "name",
            "status",
            "stop_reason",
            "profile",
            "traffic_class",
            "pool",
            "list_name",
            "created_at",
            "updated_at",
        )
        sql = f"SELECT {', '.join(columns)} FROM campaigns"
        params: list[Any] = []
        if name is not None:
            sql += " WHERE name = ?"
            params.append(name)
        sql += " ORDER BY created_at DESC, id DESC"
        return [dict(zip(columns, row, strict=True)) for row in self.conn.execute(sql, params)]

    def message_counts(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, dict[str, int]]]:
        """key -> state -> {messages, attempted, hard, soft, complaint}.

        `hard`, `soft` and `complaint` count messages of that state that an imported report
        flagged so (soft excludes messages also flagged hard).
        """
        key = _GROUP_KEYS[group]
        where, params = _where(campaign_id)
        result: dict[Any, dict[str, dict[str, int]]] = {}
        for row in self.conn.execute(
            f"""WITH {_REPORT_FLAGS}
                SELECT {key} AS k, m.state, count(*), sum(m.attempts > 0),
                       sum(coalesce(f.hard, 0)),
                       sum(coalesce(f.soft, 0) AND NOT coalesce(f.hard, 0)),
                       sum(coalesce(f.complaint, 0))
                FROM messages m LEFT JOIN flags f ON f.id = m.id{where}
                GROUP BY k, m.state""",
            params,
        ):
            k, state, messages, attempted, hard, soft, complaint = row
            result.setdefault(k, {})[state] = {
                "messages": messages,
                "attempted": attempted or 0,
                "hard": hard or 0,
                "soft": soft or 0,
                "complaint": complaint or 0,
            }
        return result

    def delivery_times(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, Any]]:
        """key -> {count, p50, p90, p99, max} of sent_at - queued_at (nearest rank)."""
        key = _GROUP_KEYS[group]
        where, params = _where(campaign_id, "m.sent_at IS NOT NULL")
        # Nearest rank: the ceil(p * n / 100)-th smallest, in integer arithmetic because
        # SQLite's ceil() is an optional build feature.
        rows = self.conn.execute(
            f"""SELECT k, d, rn, n FROM (
                  SELECT {key} AS k, m.sent_at - m.queued_at AS d,
                         row_number() OVER (PARTITION BY {key}
                                            ORDER BY m.sent_at - m.queued_at) AS rn,
                         count(*) OVER (PARTITION BY {key}) AS n
                  FROM messages m{where})
                WHERE rn IN ((50 * n + 99) / 100, (90 * n + 99) / 100, (99 * n + 99) / 100, n)""",
            params,
        )
        result: dict[Any, dict[str, Any]] = {}
        for k, seconds, rank, n in rows:
            entry = result.setdefault(k, {"count": n})
            for label, p in (("p50", 50), ("p90", 90), ("p99", 99)):
                if rank == (p * n + 99) // 100:
                    entry[label] = seconds
            if rank == n:
                entry["max"] = seconds
        return result

    def top_replies(
        self, group: ReportGroup, campaign_id: int | None = None, limit: int = 10
    ) -> dict[Any, list[dict[str, Any]]]:
        """key -> the most frequent (code, text) replies, most frequent first."""
        key = _REPLY_GROUP_KEYS[group]
        where, params = _where(campaign_id)
        rows = self.conn.execute(
            f"""SELECT k, code, text, n FROM (
                  SELECT {key} AS k, y.code, y.text, count(*) AS n,
                         row_number() OVER (PARTITION BY {key}
                                            ORDER BY count(*) DESC, y.code, y.text) AS rk
                  FROM replies y JOIN messages m ON m.id = y.message_id{where}
                  GROUP BY k, y.code, y.text)
                WHERE rk <= ? ORDER BY k, rk""",
            [*params, limit],
        )
        result: dict[Any, list[dict[str, Any]]] = {}
        for k, code, text, count in rows:
            result.setdefault(k, []).append({"code": code, "text": text, "count": count})
        return result

    def reply_rules(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Non-2xx replies counted per (key, rule, reason, scope, outcome), with first and
        last time. `scope` is the engine's decision; None for replies recorded before the
        schema stored it (version 5)."""
        key = _REPLY_GROUP_KEYS[group]
        where, params = _where(campaign_id)
        columns = ("key", "rule", "reason", "scope", "outcome", "count", "first_at", "last_at")
        rows = self.conn.execute(
            f"""SELECT {key} AS k, y.rule, y.reason, y.scope, y.outcome, count(*), min(y.at),
                       max(y.at)
                FROM replies y JOIN messages m ON m.id = y.message_id{where}
                GROUP BY k, y.rule, y.reason, y.scope, y.outcome""",
            params,
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def sends_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 3600
    ) -> list[dict[str, Any]]:
        """Accepted messages per time bucket (by sent_at) and provider, in time order."""
        where, params = _where(campaign_id, "m.sent_at IS NOT NULL")
        rows = self.conn.execute(
            f"""SELECT CAST(m.sent_at / ? AS INTEGER) * ? AS t, coalesce(m.provider, ''),
                       count(*)
                FROM messages m{where}
                GROUP BY t, m.provider ORDER BY t, m.provider""",
            [bucket, bucket, *params],
        )
        return [{"t": t, "provider": provider, "sent": n} for t, provider, n in rows]

    def answer_span(self, campaign_id: int | None = None) -> tuple[float | None, float | None]:
        """First and last time a receiver answered one of these messages."""
        where, params = _where(campaign_id, _ANSWERED)
        row = self.conn.execute(
            f"""SELECT min(coalesce(m.sent_at, m.last_attempt_at)),
                       max(coalesce(m.sent_at, m.last_attempt_at))
                FROM messages m{where}""",
            params,
        ).fetchone()
        return row[0], row[1]

    def rates_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 86400
    ) -> list[dict[str, Any]]:
        """Answered messages, hard bounces and complaints per bucket of the answer time.

        Bounces and complaints that arrive later by report count in the bucket the message
        was sent in: the rate of each sending period, as a receiver judges it.
        """
        where, params = _where(campaign_id, _ANSWERED)
        rows = self.conn.execute(
            f"""WITH {_REPORT_FLAGS}
                SELECT CAST(coalesce(m.sent_at, m.last_attempt_at) / ? AS INTEGER) * ? AS t,
                       count(*),
                       sum(m.state = 'bounced' OR coalesce(f.hard, 0)),
                       sum(m.state = 'complained' OR coalesce(f.complaint, 0))
                FROM messages m LEFT JOIN flags f ON f.id = m.id{where}
                GROUP BY t ORDER BY t""",
            [bucket, bucket, *params],
        )
        return [
            {"t": t, "answered": n, "bounced_hard": hard or 0, "complaints": complaints or 0}
            for t, n, hard, complaints in rows
        ]

    def _table_has(self, table: str, columns: tuple[str, ...]) -> bool:
        """Whether the schema has this table with these columns (older databases may not)."""
        present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
        return set(columns) <= present

    def lane_events(self, campaign_id: int | None = None) -> list[dict[str, Any]]:
        """Lane pauses (suspended, slowed, disabled, backoff) per lane, kind and rule: how
        many, the last one's time, end and reason."""
        columns = ("ip", "provider", "kind", "rule", "count", "last_at", "last_until", "reason")
        if not self._table_has(
            "lane_events", ("at", "ip", "provider", "kind", "until", "reason", "rule")
        ):
            return []
        where, params = "", []
        if campaign_id is not None and self._table_has("lane_events", ("campaign_id",)):
            where, params = " WHERE campaign_id = ?", [campaign_id]
        # SQLite takes the bare columns (until, reason) from the row holding max(at).
        rows = self.conn.execute(
            f"""SELECT ip, provider, kind, rule, count(*), max(at), until, reason
                FROM lane_events{where}
                GROUP BY ip, provider, kind, rule ORDER BY ip, provider, kind, rule""",
            params,
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def lane_rows(self) -> list[dict[str, Any]]:
        """Lanes not at normal speed (the `lanes` table, when the schema has it)."""
        wanted = ("ip", "provider", "mode", "until", "reason", "rule")
        if not self._table_has("lanes", wanted):
            return []
        rows = self.conn.execute(
            f"""SELECT {", ".join(wanted)} FROM lanes
                WHERE coalesce(mode, 'normal') <> 'normal' ORDER BY ip, provider"""
        )
        return [dict(zip(wanted, row, strict=True)) for row in rows]

    def report_counts(self) -> dict[str, int]:
        """Imported bounce and complaint reports that name recipients, and how many of them
        are tied to no message mailctl sent (recorded, never suppressing by default)."""
        row = self.conn.execute(
            """SELECT count(*), coalesce(sum(matched = 0), 0) FROM (
                 SELECT max(r.message_id IS NOT NULL) AS matched
                 FROM bounce_events e JOIN bounce_recipients r ON r.event_id = e.id
                 WHERE e.kind IN ('bounce', 'delay', 'complaint')
                 GROUP BY e.id)"""
        ).fetchone()
        return {"reports": int(row[0]), "unmatched": int(row[1])}
