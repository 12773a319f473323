"""The SQLite schema at its latest version, for a new database in one step.

`MIGRATIONS` (sqlite_schema.py) build the schema version by version. A new database would
go through every one of them: ALTER TABLEs, a table rebuild, updates of rows it does not
have, about 7 ms on every first run and every test's database. `SqliteStore.migrate` gives
an empty database these statements instead: the schema as SQLite itself records it after
all the migrations (``sqlite_master``), tables and indexes in the order they were made.

Generated, not edited: ``python -m mailctl.store.sqlite_fresh`` rewrites `STATEMENTS` from
the migrations. While the two differ, `VERSION` is not the number of migrations (a new
database then takes the migrations) or tests/test_store_fresh.py fails. Imports only the
schema.
"""

# ruff: noqa: E501
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from mailctl.store.sqlite_schema import MIGRATIONS

# The schema version STATEMENTS are: a new database gets them only while this is the
# number of migrations.
VERSION = 13

STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE recipients (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            domain TEXT NOT NULL,
            fields TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        , email_key TEXT, merged_into INTEGER REFERENCES recipients(id))""",
    """CREATE INDEX recipients_domain ON recipients(domain)""",
    """CREATE TABLE lists (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        , source TEXT)""",
    """CREATE TABLE list_members (
            list_id INTEGER NOT NULL REFERENCES lists(id),
            recipient_id INTEGER NOT NULL REFERENCES recipients(id),
            PRIMARY KEY (list_id, recipient_id)
        ) WITHOUT ROWID""",
    """CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            path TEXT,
            profile TEXT NOT NULL,
            traffic_class TEXT NOT NULL,
            pool TEXT NOT NULL,
            list_name TEXT NOT NULL,
            content TEXT NOT NULL,          -- JSON of what recipients see (see Campaign.content)
            content_hash TEXT NOT NULL,
            content_version INTEGER NOT NULL DEFAULT 1,
            status TEXT NOT NULL DEFAULT 'active',  -- active, paused, done, stopped, cancelled
            stop_reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
    """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
            recipient_id INTEGER NOT NULL REFERENCES recipients(id),
            email TEXT NOT NULL,
            domain TEXT NOT NULL,
            -- queued, sending, sent, deferred, bounced, complained, failed, expired,
            -- suppressed, cancelled
            state TEXT NOT NULL,
            tracking_id TEXT NOT NULL UNIQUE,
            attempts INTEGER NOT NULL DEFAULT 0,
            queued_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            last_attempt_at REAL,
            sent_at REAL,
            ip TEXT,
            provider TEXT,
            last_code INTEGER,
            last_reply TEXT,
            reason TEXT,
            run_id INTEGER,
            possible_duplicate INTEGER NOT NULL DEFAULT 0,
            content_version INTEGER NOT NULL DEFAULT 1, first_attempt_at REAL, wait_kind TEXT, wait_reason TEXT,
            UNIQUE (campaign_id, recipient_id)
        )""",
    """CREATE INDEX messages_due ON messages(state, next_attempt_at)""",
    """CREATE INDEX messages_campaign_state ON messages(campaign_id, state)""",
    """CREATE INDEX messages_email ON messages(email)""",
    """CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            message_id INTEGER REFERENCES messages(id),
            at REAL NOT NULL,
            ip TEXT,
            provider TEXT,
            code INTEGER,
            text TEXT,
            outcome TEXT NOT NULL,          -- deferred, bounced, failed, expired
            reason TEXT,
            rule TEXT
        , scope TEXT)""",
    """CREATE INDEX replies_at ON replies(at)""",
    """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            finished_at REAL,
            stop_reason TEXT,
            recovered INTEGER NOT NULL DEFAULT 0
        )""",
    """CREATE TABLE bounce_events (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,     -- sha256 of the raw report: imported once
            source TEXT,
            -- bounce, delay, complaint, autoreply, delivered, unknown
            kind TEXT NOT NULL,
            imported_at REAL NOT NULL,
            reported_at REAL,
            tracking_id TEXT,
            original_message_id TEXT,
            feedback_type TEXT,
            message_id INTEGER REFERENCES messages(id)
        )""",
    """CREATE TABLE bounce_recipients (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES bounce_events(id),
            address TEXT NOT NULL,
            day TEXT NOT NULL,               -- the report's day, for soft-bounce scoring
            status TEXT,
            action TEXT,
            reason TEXT,
            permanent INTEGER NOT NULL,
            suppress INTEGER NOT NULL,
            diagnostic TEXT,
            message_id INTEGER REFERENCES messages(id)
        )""",
    """CREATE INDEX bounce_recipients_address ON bounce_recipients(address, day)""",
    """CREATE TABLE ip_days (
            ip TEXT NOT NULL,
            day TEXT NOT NULL,               -- UTC date
            provider TEXT NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0,
            deferred INTEGER NOT NULL DEFAULT 0,
            bounced INTEGER NOT NULL DEFAULT 0,
            complained INTEGER NOT NULL DEFAULT 0,
            throttles INTEGER NOT NULL DEFAULT 0,
            blocks INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (ip, day, provider)
        ) WITHOUT ROWID""",
    """CREATE INDEX messages_sent_at ON messages(sent_at)""",
    """CREATE TABLE lanes (
            ip TEXT NOT NULL,
            provider TEXT NOT NULL,
            mode TEXT NOT NULL DEFAULT 'normal'
                CHECK (mode IN ('normal', 'slowed', 'suspended', 'disabled')),
            until REAL, reason TEXT, rule TEXT, alert INTEGER NOT NULL DEFAULT 0,
            slow_limits TEXT, slow_until REAL, earlier_factor REAL NOT NULL DEFAULT 1.0,
            ramp_factor REAL, ramp_connections INTEGER, last_change_at REAL,
            backoff_level INTEGER NOT NULL DEFAULT 0, last_resume_at REAL,
            tokens TEXT, tokens_at REAL, hits TEXT NOT NULL DEFAULT '{}',
            sent INTEGER NOT NULL DEFAULT 0, deferred INTEGER NOT NULL DEFAULT 0,
            throttled INTEGER NOT NULL DEFAULT 0, updated_at REAL, learned_rate REAL, learned_peak REAL, learned_connections INTEGER, learned_reason TEXT, learned_at REAL, learned_observed TEXT, learned_step_at REAL, learned_conn_at REAL, probe_level INTEGER NOT NULL DEFAULT 0, connect_until REAL, probing INTEGER NOT NULL DEFAULT 0, recent_accepts TEXT,
            PRIMARY KEY (ip, provider)
        )""",
    """CREATE TABLE lane_events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            ip TEXT NOT NULL,
            provider TEXT NOT NULL,
            kind TEXT NOT NULL,              -- suspended, slowed, disabled, backoff, resumed ...
            until REAL,
            reason TEXT,
            rule TEXT,
            campaign_id INTEGER
        )""",
    """CREATE TABLE mx_cache (
            domain TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            mx_hosts TEXT NOT NULL,          -- JSON [[pref, host], ...]
            port INTEGER NOT NULL DEFAULT 25,
            status TEXT NOT NULL,
            detail TEXT,
            expires_at REAL NOT NULL
        )""",
    """CREATE TABLE warmup_events (
            id INTEGER PRIMARY KEY,
            ip TEXT NOT NULL,
            day TEXT NOT NULL,
            kind TEXT NOT NULL,              -- start, hold, resume, reset
            preset TEXT,
            created_at REAL NOT NULL
        )""",
    """CREATE UNIQUE INDEX recipients_email_key ON recipients(email_key)""",
    """CREATE INDEX recipients_merged_into ON recipients(merged_into)""",
    """CREATE TABLE "suppression" (
            address TEXT PRIMARY KEY,       -- canonical address key, or *@domain
            reason TEXT NOT NULL,
            source TEXT,
            status TEXT,
            diagnostic TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            expires_at REAL
        )""",
    """CREATE INDEX messages_campaign_wait ON messages(campaign_id, state, wait_kind)""",
    """CREATE TABLE list_unsubscribes (
            list_name TEXT NOT NULL,
            address TEXT NOT NULL,          -- canonical address key (recipients.address)
            reason TEXT NOT NULL DEFAULT 'unsubscribe',
            source TEXT,
            at REAL NOT NULL,
            PRIMARY KEY (list_name, address)
        ) WITHOUT ROWID""",
    """CREATE TABLE remote_mailboxes (
            mailbox TEXT PRIMARY KEY,       -- scheme://user@host:port/folder
            uidvalidity INTEGER,
            last_uid INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )""",
    """CREATE TABLE remote_seen (
            mailbox TEXT NOT NULL,
            uid TEXT NOT NULL,              -- a POP3 UIDL
            at REAL NOT NULL,
            PRIMARY KEY (mailbox, uid)
        ) WITHOUT ROWID""",
    """CREATE TABLE notices (key TEXT PRIMARY KEY, first_at REAL NOT NULL)""",
    """CREATE TABLE send_grants (
            ip TEXT NOT NULL,
            day TEXT NOT NULL,               -- the IP's local day as in ip_days, or a UTC hour
            provider TEXT NOT NULL,
            granted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (ip, day, provider)
        ) WITHOUT ROWID""",
)


def built_by_migrations() -> list[str]:
    """The statements that make the schema the migrations build, as SQLite records it."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in MIGRATIONS:
            for statement in migration:
                conn.execute(statement)
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY rowid"
        )
        return [row[0] for row in rows]
    finally:
        conn.close()


def _write() -> None:
    statements = built_by_migrations()
    assert not any('"""' in s or "\\" in s for s in statements), "quote these differently"
    source = Path(__file__).read_text()
    head, rest = source.split("\nVERSION = ", 1)
    tail = rest.split("\n\n\ndef built_by_migrations", 1)[1]
    body = "".join(f'    """{s}""",\n' for s in statements)
    Path(__file__).write_text(
        f"{head}\nVERSION = {len(MIGRATIONS)}\n\nSTATEMENTS: tuple[str, ...] = (\n{body})"
        f"\n\n\ndef built_by_migrations{tail}"
    )


if __name__ == "__main__":
    _write()
    sys.exit(0)
