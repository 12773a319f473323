"""PostgreSQL: per-IP state — lanes, the MX route cache, warm-up records (ip_days, events).

One part of `PostgresStore` (it inherits `_PgLaneTables`, sharing its one connection and
transaction). Rows are per sending IP, so each host owns its own; two senders that touch the
same rows take their locks in one order (sorted) so they never deadlock. Imports only the
store's interface and psycopg.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql

from mailctl.store.base import IP_DAY_COUNTERS


class _PgLaneTables:
    """Lanes, routes and warm-up records of `PostgresStore`."""

    conn: psycopg.Connection[Any]

    def _x(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        raise NotImplementedError  # PostgresStore: executes on the one connection

    def _many(self, sql: str, rows: Iterable[Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ warm-up records

    def bump_ip_day(self, ip: str, day: str, provider: str, **counts: int) -> None:
        columns = [c for c in counts if c in IP_DAY_COUNTERS]
        if not columns:
            return
        names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
        updates = pgsql.SQL(", ").join(
            pgsql.SQL("{0} = ip_days.{0} + excluded.{0}").format(pgsql.Identifier(c))
            for c in columns
        )
        query = pgsql.SQL(
            "INSERT INTO ip_days (ip, day, provider, {names}) VALUES (%s, %s, %s, {marks}) "
            "ON CONFLICT (ip, day, provider) DO UPDATE SET {updates}"
        ).format(
            names=names,
            marks=pgsql.SQL(", ").join(pgsql.Placeholder() for _ in columns),
            updates=updates,
        )
        self._x(query.as_string(self.conn), (ip, day, provider, *(counts[c] for c in columns)))

    def ip_days(self, ip: str | None = None) -> list[dict[str, Any]]:
        keys = ("ip", "day", "provider", *IP_DAY_COUNTERS)
        sql = f"SELECT {', '.join(keys)} FROM ip_days"
        params: list[Any] = []
        if ip:
            sql += " WHERE ip = %s"
            params.append(ip)
        sql += ' ORDER BY ip COLLATE "C", day COLLATE "C", provider COLLATE "C"'
        return [dict(zip(keys, row, strict=True)) for row in self._x(sql, params).fetchall()]

    def add_warmup_event(
        self, ip: str, day: str, kind: str, preset: str | None, now: float
    ) -> None:
        self._x(
            """INSERT INTO warmup_events (ip, day, kind, preset, created_at)
               VALUES (%s, %s, %s, %s, %s)""",
            (ip, day, kind, preset, now),
        )

    def warmup_events(self, ip: str) -> list[tuple[str, str, str | None]]:
        return [
            (day, kind, preset)
            for day, kind, preset in self._x(
                "SELECT day, kind, preset FROM warmup_events WHERE ip = %s ORDER BY day, id",
                (ip,),
            ).fetchall()
        ]

    # ------------------------------------------------------------------ lanes and routes

    _LANE_COLUMNS = (
        "ip", "provider", "mode", "until", "reason", "rule", "alert", "slow_limits",
        "slow_until", "earlier_factor", "ramp_factor", "ramp_connections", "last_change_at",
        "backoff_level", "last_resume_at", "tokens", "tokens_at", "hits", "sent", "deferred",
        "throttled", "updated_at",
        # learned from the receiver (migration 10)
        "learned_rate", "learned_peak", "learned_connections", "learned_reason", "learned_at",
        "learned_observed", "learned_step_at", "learned_conn_at", "probe_level",
        "connect_until", "probing",
    )  # fmt: skip

    def lane_rows(self) -> list[dict[str, Any]]:
        cols = self._LANE_COLUMNS
        return [
            dict(zip(cols, row, strict=True))
            for row in self._x(
                f'SELECT {", ".join(cols)} FROM lanes ORDER BY ip COLLATE "C", provider COLLATE "C"'
            ).fetchall()
        ]

    def upsert_lanes(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = self._LANE_COLUMNS
        self._many(
            f"""INSERT INTO lanes ({", ".join(cols)})
                VALUES ({", ".join(f"%({c})s" for c in cols)})
                ON CONFLICT (ip, provider) DO UPDATE SET
                {", ".join(f"{c} = excluded.{c}" for c in cols[2:])}""",
            sorted(rows, key=lambda r: (r["ip"], r["provider"])),
        )

    def release_lane_deferrals(self, ip: str, provider: str, now: float) -> int:
        """Messages mailctl itself deferred for a lane (paused, pacing) fall due now."""
        cur = self._x(
            """UPDATE messages SET next_attempt_at = %s
               WHERE state = 'deferred' AND reason = 'mailctl' AND provider = %s
                 AND (ip = %s OR ip IS NULL) AND next_attempt_at > %s""",
            (now, provider, ip, now),
        )
        return int(cur.rowcount)

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
        self._x(
            """INSERT INTO lane_events (at, ip, provider, kind, until, reason, rule, campaign_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (at, ip, provider, kind, until, reason, rule, campaign_id),
        )

    def cached_route(self, domain: str, now: float) -> dict[str, Any] | None:
        cols = ("domain", "provider", "mx_hosts", "port", "status", "detail", "expires_at")
        row = self._x(
            f"SELECT {', '.join(cols)} FROM mx_cache WHERE domain = %s AND expires_at > %s",
            (domain, now),
        ).fetchone()
        return None if row is None else dict(zip(cols, row, strict=True))

    def cache_route(self, row: dict[str, Any]) -> None:
        self._x(
            """INSERT INTO mx_cache (domain, provider, mx_hosts, port, status, detail, expires_at)
               VALUES (%(domain)s, %(provider)s, %(mx_hosts)s, %(port)s, %(status)s,
                       %(detail)s, %(expires_at)s)
               ON CONFLICT (domain) DO UPDATE SET provider = excluded.provider,
                 mx_hosts = excluded.mx_hosts, port = excluded.port, status = excluded.status,
                 detail = excluded.detail, expires_at = excluded.expires_at""",
            row,
        )
