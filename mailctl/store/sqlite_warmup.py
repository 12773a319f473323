"""SQLite: warm-up grants — the share of each warm-up IP's daily cap handed to send runs.

One part of `SqliteStore` (it inherits `_WarmupGrants`, sharing its one connection). A run
takes a block of today's sends before it sends them and gives back what it did not use, so
runs that overlap on one IP never exceed its cap together (SQLite's write lock makes each
grant atomic). Imports only the standard library.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager


class _WarmupGrants:
    """`take_send_quota` / `return_send_quota` of `SqliteStore`."""

    conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteStore: BEGIN IMMEDIATE … COMMIT

    def _totals(self, ip: str, day: str, provider: str) -> tuple[int, int]:
        # What a lane has used: granted, or what ip_days counts as sent where that is more
        # (mail sent before grants were kept).
        ip_total, lane_total = self.conn.execute(
            """SELECT coalesce(sum(max(g.granted, coalesce(d.sent, 0))), 0),
                      coalesce(sum(CASE WHEN g.provider = ?3
                                        THEN max(g.granted, coalesce(d.sent, 0)) END), 0)
               FROM send_grants g LEFT JOIN ip_days d
                 ON d.ip = g.ip AND d.day = g.day AND d.provider = g.provider
               WHERE g.ip = ?1 AND g.day = ?2""",
            (ip, day, provider),
        ).fetchone()
        return int(ip_total), int(lane_total)

    def take_send_quota(
        self, ip: str, day: str, provider: str, want: int, ip_cap: int, lane_cap: int | None
    ) -> tuple[int, int, int]:
        c = self.conn
        with self.transaction():
            # Every lane the IP sent on today takes part in the IP's total.
            c.execute(
                """INSERT OR IGNORE INTO send_grants (ip, day, provider, granted)
                   SELECT ip, day, provider, sent FROM ip_days WHERE ip = ? AND day = ?""",
                (ip, day),
            )
            c.execute(
                "INSERT OR IGNORE INTO send_grants (ip, day, provider) VALUES (?, ?, ?)",
                (ip, day, provider),
            )
            ip_total, lane_total = self._totals(ip, day, provider)
            room = ip_cap - ip_total
            if lane_cap is not None:
                room = min(room, lane_cap - lane_total)
            granted = max(0, min(want, room))
            if granted:
                c.execute(
                    """UPDATE send_grants SET granted = max(granted, coalesce(
                         (SELECT sent FROM ip_days d WHERE d.ip = send_grants.ip
                            AND d.day = send_grants.day
                            AND d.provider = send_grants.provider), 0)) + ?
                       WHERE ip = ? AND day = ? AND provider = ?""",
                    (granted, ip, day, provider),
                )
        return granted, ip_total + granted, lane_total + granted

    def return_send_quota(self, ip: str, day: str, provider: str, unused: int) -> None:
        if unused <= 0:
            return
        with self.transaction():
            self.conn.execute(
                """UPDATE send_grants SET granted = max(granted - ?, 0)
                   WHERE ip = ? AND day = ? AND provider = ?""",
                (unused, ip, day, provider),
            )
