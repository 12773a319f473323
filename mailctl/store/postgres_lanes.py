"""PostgreSQL: per-IP state — lanes, the MX route cache, warm-up records (ip_days, events).

One part of `PostgresStore` (it inherits `_PgLaneTables`, sharing its one connection and
transaction). Rows are per sending IP, so each host owns its own; two senders that touch the
same rows take their locks in one order (sorted) so they never deadlock. Imports only the
store's interface and psycopg.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql as pgsql

from mailctl.store.base import IP_DAY_COUNTERS

_GRANT_LOCKS = 0x6D62  # advisory-lock namespace of the warm-up grants, one lock per IP and day


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

    # ------------------------------------------------------------------ warm-up grants

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # PostgresStore: BEGIN … COMMIT, joined when nested

    def take_send_quota(
        self, ip: str, day: str, provider: str, want: int, ip_cap: int, lane_cap: int | None
    ) -> tuple[int, int, int]:
        """A block of `ip`'s sends today, granted under its caps: runs on any host that send
        from one IP take turns on a lock of that IP and day, so their total never passes
        the cap (`Store.take_send_quota`)."""
        key = zlib.crc32(f"{ip}|{day}".encode()) & 0x7FFFFFFF
        with self.transaction():
            self._x("SELECT pg_advisory_xact_lock(%s, %s)", (_GRANT_LOCKS, key))
            self._x(
                """INSERT INTO send_grants (ip, day, provider, granted)
                   SELECT ip, day, provider, sent FROM ip_days WHERE ip = %s AND day = %s
                   UNION ALL SELECT %s, %s, %s, 0
                   ON CONFLICT DO NOTHING""",
                (ip, day, ip, day, provider),
            )
            ip_total, lane_total = self._x(
                """SELECT coalesce(sum(greatest(g.granted, coalesce(d.sent, 0))), 0),
                          coalesce(sum(greatest(g.granted, coalesce(d.sent, 0)))
                                   FILTER (WHERE g.provider = %(provider)s), 0)
                   FROM send_grants g LEFT JOIN ip_days d
                     ON d.ip = g.ip AND d.day = g.day AND d.provider = g.provider
                   WHERE g.ip = %(ip)s AND g.day = %(day)s""",
                {"ip": ip, "day": day, "provider": provider},
            ).fetchone()
            room = int(ip_cap) - int(ip_total)
            if lane_cap is not None:
                room = min(room, int(lane_cap) - int(lane_total))
            granted = max(0, min(want, room))
            if granted:
                self._x(
                    """UPDATE send_grants g SET granted = greatest(g.granted, coalesce(
                         (SELECT sent FROM ip_days d WHERE d.ip = g.ip AND d.day = g.day
                            AND d.provider = g.provider), 0)) + %s
                       WHERE g.ip = %s AND g.day = %s AND g.provider = %s""",
                    (granted, ip, day, provider),
                )
        return granted, int(ip_total) + granted, int(lane_total) + granted

    def return_send_quota(self, ip: str, day: str, provider: str, unused: int) -> None:
        if unused > 0:
            self._x(
                """UPDATE send_grants SET granted = greatest(granted - %s, 0)
                   WHERE ip = %s AND day = %s AND provider = %s""",
                (unused, ip, day, provider),
            )

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
        "recent_accepts",  # migration 12
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
