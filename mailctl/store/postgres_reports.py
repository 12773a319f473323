"""The PostgreSQL report queries: every SQL statement of `mailctl report` on PostgreSQL.

Read-only. The twin of `sqlite_reports` (same results, this dialect); implements
`mailctl.store.base.ReportQueries`. Imports nothing from mailctl but the store's interface.
Group columns come from a fixed table, never from a caller's string, so the f-strings below
cannot inject SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mailctl.store.base import ReportGroup

_GROUP_KEYS: dict[str, str] = {
    "all": "NULL::text",
    "campaign": "m.campaign_id",
    "ip": "m.ip",
    "provider": "m.provider",
}
_REPLY_GROUP_KEYS: dict[str, str] = {
    "all": "NULL::text",
    "campaign": "m.campaign_id",
    "ip": "y.ip",
    "provider": "y.provider",
}

_REPORT_FLAGS = """flags AS (
    SELECT r.message_id AS id,
           bool_or(e.kind = 'bounce' AND r.permanent = 1)::int AS hard,
           bool_or(e.kind = 'bounce' AND r.permanent = 0
                   AND coalesce(r.action, '') <> 'delayed')::int AS soft,
           bool_or(e.kind = 'complaint')::int AS complaint
    FROM bounce_recipients r JOIN bounce_events e ON e.id = r.event_id
    WHERE r.message_id IS NOT NULL
    GROUP BY r.message_id
)"""

_ANSWERED = "m.state IN ('sent', 'bounced', 'complained', 'failed') AND m.attempts > 0"

Execute = Callable[[str, Sequence[Any]], Any]


def _where(campaign_id: int | None, *conditions: str) -> tuple[str, list[Any]]:
    clauses = list(conditions)
    params: list[Any] = []
    if campaign_id is not None:
        clauses.append("m.campaign_id = %s")
        params.append(campaign_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _n(value: Any) -> Any:
    """Whole numbers as int (PostgreSQL's sum() of integers is numeric)."""
    return int(value) if value is not None else None


class PgReportQueries:
    """The report aggregates of one PostgreSQL database."""

    def __init__(self, execute: Execute) -> None:
        self._x = execute

    def campaigns(self, name: str | None = None) -> list[dict[str, Any]]:
        columns = (
            "id", "name", "status", "stop_reason", "profile", "traffic_class", "pool",
            "list_name", "created_at", "updated_at",
        )  # fmt: skip
        sql = f"SELECT {', '.join(columns)} FROM campaigns"
        params: list[Any] = []
        if name is not None:
            sql += " WHERE name = %s"
            params.append(name)
        sql += " ORDER BY created_at DESC, id DESC"
        return [dict(zip(columns, row, strict=True)) for row in self._x(sql, params).fetchall()]

    def message_counts(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, dict[str, int]]]:
        key = _GROUP_KEYS[group]
        where, params = _where(campaign_id)
        result: dict[Any, dict[str, dict[str, int]]] = {}
        for row in self._x(
            f"""WITH {_REPORT_FLAGS}
                SELECT {key} AS k, m.state, count(*), count(*) FILTER (WHERE m.attempts > 0),
                       sum(coalesce(f.hard, 0)),
                       count(*) FILTER (WHERE coalesce(f.soft, 0) = 1
                                          AND coalesce(f.hard, 0) = 0),
                       sum(coalesce(f.complaint, 0))
                FROM messages m LEFT JOIN flags f ON f.id = m.id{where}
                GROUP BY 1, m.state""",
            params,
        ).fetchall():
            k, state, messages, attempted, hard, soft, complaint = row
            result.setdefault(k, {})[state] = {
                "messages": messages,
                "attempted": _n(attempted) or 0,
                "hard": _n(hard) or 0,
                "soft": _n(soft) or 0,
                "complaint": _n(complaint) or 0,
            }
        return result

    def delivery_times(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, Any]]:
        key = _GROUP_KEYS[group]
        where, params = _where(campaign_id, "m.sent_at IS NOT NULL")
        rows = self._x(
            f"""SELECT k, d, rn, n FROM (
                  SELECT {key} AS k, m.sent_at - m.queued_at AS d,
                         row_number() OVER (PARTITION BY {key}
                                            ORDER BY m.sent_at - m.queued_at) AS rn,
                         count(*) OVER (PARTITION BY {key}) AS n
                  FROM messages m{where}) t
                WHERE rn IN ((50 * n + 99) / 100, (90 * n + 99) / 100, (99 * n + 99) / 100, n)""",
            params,
        ).fetchall()
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
        key = _REPLY_GROUP_KEYS[group]
        where, params = _where(campaign_id)
        rows = self._x(
            f"""SELECT k, code, text, n FROM (
                  SELECT {key} AS k, y.code, y.text, count(*) AS n,
                         row_number() OVER (PARTITION BY {key}
                                            ORDER BY count(*) DESC, y.code,
                                                     y.text COLLATE "C") AS rk
                  FROM replies y JOIN messages m ON m.id = y.message_id{where}
                  GROUP BY 1, y.code, y.text) t
                WHERE rk <= %s ORDER BY k, rk""",
            [*params, limit],
        ).fetchall()
        result: dict[Any, list[dict[str, Any]]] = {}
        for k, code, text, count in rows:
            result.setdefault(k, []).append({"code": code, "text": text, "count": count})
        return result

    def reply_rules(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> list[dict[str, Any]]:
        key = _REPLY_GROUP_KEYS[group]
        where, params = _where(campaign_id)
        columns = ("key", "rule", "reason", "scope", "outcome", "count", "first_at", "last_at")
        rows = self._x(
            f"""SELECT {key} AS k, y.rule, y.reason, y.scope, y.outcome, count(*), min(y.at),
                       max(y.at)
                FROM replies y JOIN messages m ON m.id = y.message_id{where}
                GROUP BY 1, y.rule, y.reason, y.scope, y.outcome""",
            params,
        ).fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def sends_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 3600
    ) -> list[dict[str, Any]]:
        where, params = _where(campaign_id, "m.sent_at IS NOT NULL")
        rows = self._x(
            f"""SELECT (trunc(m.sent_at / %s) * %s)::bigint AS t, coalesce(m.provider, ''),
                       count(*)
                FROM messages m{where}
                GROUP BY 1, 2 ORDER BY 1, 2""",
            [bucket, bucket, *params],
        ).fetchall()
        return [{"t": t, "provider": provider, "sent": n} for t, provider, n in rows]

    def answer_span(self, campaign_id: int | None = None) -> tuple[float | None, float | None]:
        where, params = _where(campaign_id, _ANSWERED)
        row = self._x(
            f"""SELECT min(coalesce(m.sent_at, m.last_attempt_at)),
                       max(coalesce(m.sent_at, m.last_attempt_at))
                FROM messages m{where}""",
            params,
        ).fetchone()
        return row[0], row[1]

    def rates_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 86400
    ) -> list[dict[str, Any]]:
        where, params = _where(campaign_id, _ANSWERED)
        rows = self._x(
            f"""WITH {_REPORT_FLAGS}
                SELECT (trunc(coalesce(m.sent_at, m.last_attempt_at) / %s) * %s)::bigint AS t,
                       count(*),
                       count(*) FILTER (WHERE m.state = 'bounced' OR coalesce(f.hard, 0) = 1),
                       count(*) FILTER (WHERE m.state = 'complained'
                                          OR coalesce(f.complaint, 0) = 1)
                FROM messages m LEFT JOIN flags f ON f.id = m.id{where}
                GROUP BY 1 ORDER BY 1""",
            [bucket, bucket, *params],
        ).fetchall()
        return [
            {"t": t, "answered": n, "bounced_hard": hard or 0, "complaints": complaints or 0}
            for t, n, hard, complaints in rows
        ]

    def lane_events(self, campaign_id: int | None = None) -> list[dict[str, Any]]:
        columns = ("ip", "provider", "kind", "rule", "count", "last_at", "last_until", "reason")
        where, params = "", []
        if campaign_id is not None:
            where, params = " WHERE campaign_id = %s", [campaign_id]
        # The last event's until and reason, as SQLite's bare columns beside max(at) give.
        rows = self._x(
            f"""SELECT ip, provider, kind, rule, n, at, until, reason FROM (
                  SELECT *, row_number() OVER w_last AS rn, count(*) OVER w_all AS n
                  FROM lane_events{where}
                  WINDOW w_all AS (PARTITION BY ip, provider, kind, rule),
                         w_last AS (PARTITION BY ip, provider, kind, rule
                                    ORDER BY at DESC, id DESC)) e
                WHERE rn = 1
                ORDER BY ip COLLATE "C", provider COLLATE "C", kind COLLATE "C",
                         rule COLLATE "C" NULLS FIRST""",
            params,
        ).fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def lane_rows(self) -> list[dict[str, Any]]:
        wanted = ("ip", "provider", "mode", "until", "reason", "rule")
        rows = self._x(
            f"""SELECT {", ".join(wanted)} FROM lanes
                WHERE coalesce(mode, 'normal') <> 'normal'
                ORDER BY ip COLLATE "C", provider COLLATE "C" """,
            [],
        ).fetchall()
        return [dict(zip(wanted, row, strict=True)) for row in rows]

    def unsubscribe_sources(self) -> list[str]:
        return [
            row[0] or ""
            for row in self._x(
                """SELECT source FROM suppression WHERE reason = 'unsubscribe'
                   UNION ALL SELECT source FROM list_unsubscribes""",
                (),
            ).fetchall()
        ]

    def report_counts(self) -> dict[str, int]:
        """Imported bounce and complaint reports that name recipients, and how many of them
        are tied to no message mailctl sent (recorded, never suppressing by default)."""
        row = self._x(
            """SELECT count(*), count(*) FILTER (WHERE NOT matched) FROM (
                 SELECT bool_or(r.message_id IS NOT NULL) AS matched
                 FROM bounce_events e JOIN bounce_recipients r ON r.event_id = e.id
                 WHERE e.kind IN ('bounce', 'delay', 'complaint')
                 GROUP BY e.id) t""",
            (),
        ).fetchone()
        return {"reports": int(row[0]), "unmatched": int(row[1])}
