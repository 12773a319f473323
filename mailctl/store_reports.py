"""Read-only aggregate queries for reports; part of the store (Store inherits them)."""

from __future__ import annotations

import sqlite3


class ReportQueries:
    """Mixed into Store: every SQL statement of `mailctl report` lives here."""

    conn: sqlite3.Connection
