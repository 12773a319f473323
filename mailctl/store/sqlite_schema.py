"""The SQLite schema: every table, as the ordered migrations that build it.

The schema version is the number of migrations applied (``PRAGMA user_version``). Nothing
here runs SQL itself: `SqliteStore.migrate` applies what is missing. Imports nothing from
mailctl.
"""

from __future__ import annotations

# Each migration is a list of statements; the schema version is the number applied
# (PRAGMA user_version). Never edit a released migration: add a new one.
MIGRATIONS: list[list[str]] = [
    # 1: recipients, lists, suppression
    [
        """CREATE TABLE recipients (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            domain TEXT NOT NULL,
            fields TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX recipients_domain ON recipients(domain)",
        """CREATE TABLE lists (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE list_members (
            list_id INTEGER NOT NULL REFERENCES lists(id),
            recipient_id INTEGER NOT NULL REFERENCES recipients(id),
            PRIMARY KEY (list_id, recipient_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE suppression (
            address TEXT PRIMARY KEY,       -- normalised address, or *@domain
            -- hard_bounce, complaint, unsubscribe, manual, soft_bounce_limit
            reason TEXT NOT NULL,
            source TEXT,
            status TEXT,
            diagnostic TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            expires_at REAL
        )""",
    ],
    # 2: campaigns, messages and their replies, send runs
    [
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
            content_version INTEGER NOT NULL DEFAULT 1,
            UNIQUE (campaign_id, recipient_id)
        )""",
        "CREATE INDEX messages_due ON messages(state, next_attempt_at)",
        "CREATE INDEX messages_campaign_state ON messages(campaign_id, state)",
        "CREATE INDEX messages_email ON messages(email)",
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
        )""",
        "CREATE INDEX replies_at ON replies(at)",
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
    ],
    # 3: bounce and complaint reports, per-IP daily signals
    [
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
        "CREATE INDEX bounce_recipients_address ON bounce_recipients(address, day)",
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
        "CREATE INDEX messages_sent_at ON messages(sent_at)",
    ],
    # 4: lanes that outlive a run, the MX cache, manual warm-up events
    [
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
            throttled INTEGER NOT NULL DEFAULT 0, updated_at REAL,
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
        "ALTER TABLE messages ADD COLUMN first_attempt_at REAL",
    ],
    # 5: the scope the engine decided for each reply (recipient, lane, campaign, transient).
    # Rows recorded before it keep NULL; the report derives their scope from rule and reason.
    [
        "ALTER TABLE replies ADD COLUMN scope TEXT",
    ],
    # 6: addresses compared on one canonical key (lower-cased local part and IDNA domain).
    # Stored addresses were normalised on the way in: ASCII, domain already lower-cased and
    # IDNA-encoded, so SQL's ASCII lower() computes exactly `recipients.address.address_key`.
    # Recipients that differ only in case merge into the oldest row; a merged row keeps only
    # the messages that cannot move (see below) and leaves every list.
    [
        "ALTER TABLE recipients ADD COLUMN email_key TEXT",
        "ALTER TABLE recipients ADD COLUMN merged_into INTEGER REFERENCES recipients(id)",
        "UPDATE recipients SET email_key = lower(email)",
        "CREATE INDEX recipients_email_key_tmp ON recipients(email_key)",
        "DROP TABLE IF EXISTS temp.recipient_merge",
        """CREATE TEMP TABLE recipient_merge AS
           SELECT r.id AS old_id, k.keep_id AS new_id
           FROM recipients r JOIN (SELECT email_key, min(id) AS keep_id FROM recipients
                                   GROUP BY email_key HAVING count(*) > 1) k
             ON k.email_key = r.email_key
           WHERE r.id <> k.keep_id""",
        # Fields: every spelling's fields, a later row's value winning (as a re-import does).
        """UPDATE recipients SET fields = (
             SELECT json_group_object(key, value) FROM (
               SELECT j.key AS key, j.value AS value,
                      row_number() OVER (PARTITION BY j.key ORDER BY d.id DESC) AS rank
               FROM recipients d, json_each(d.fields) j
               WHERE d.email_key = recipients.email_key)
             WHERE rank = 1)
           WHERE id IN (SELECT new_id FROM temp.recipient_merge)""",
        """INSERT OR IGNORE INTO list_members (list_id, recipient_id)
           SELECT m.list_id, g.new_id FROM list_members m
           JOIN temp.recipient_merge g ON g.old_id = m.recipient_id""",
        "DELETE FROM list_members WHERE recipient_id IN (SELECT old_id FROM temp.recipient_merge)",
        # Messages: per campaign and merged person, one message stays the person's (the one
        # that reached them or came furthest); the others are kept as history, and those
        # that could still be sent are cancelled, so no campaign sends twice.
        "DROP TABLE IF EXISTS temp.message_merge",
        """CREATE TEMP TABLE message_merge AS
           SELECT id, campaign_id, recipient_id, person,
                  row_number() OVER (PARTITION BY campaign_id, person ORDER BY
                    CASE state WHEN 'sent' THEN 0 WHEN 'complained' THEN 0
                               WHEN 'bounced' THEN 1 WHEN 'sending' THEN 2
                               WHEN 'failed' THEN 3 WHEN 'deferred' THEN 4
                               WHEN 'queued' THEN 5 WHEN 'expired' THEN 6
                               WHEN 'suppressed' THEN 7 ELSE 8 END, id) AS rank
           FROM (SELECT m.id, m.campaign_id, m.recipient_id, m.state,
                        coalesce(g.new_id, m.recipient_id) AS person
                 FROM messages m LEFT JOIN temp.recipient_merge g ON g.old_id = m.recipient_id
                 WHERE m.recipient_id IN (SELECT old_id FROM temp.recipient_merge
                                          UNION SELECT new_id FROM temp.recipient_merge))""",
        """UPDATE messages SET state = 'cancelled', reason = 'merged duplicate',
             last_reply = 'merged: another message of this campaign is this person''s'
           WHERE id IN (SELECT id FROM temp.message_merge WHERE rank > 1)
             AND state IN ('queued', 'deferred', 'sending', 'failed')""",
        # The kept message moves to the surviving row; a message the surviving row held in
        # that campaign takes the kept one's old place (UNIQUE (campaign, recipient)).
        "PRAGMA defer_foreign_keys = ON",
        """UPDATE messages SET recipient_id = -recipient_id
           WHERE id IN (SELECT id FROM temp.message_merge WHERE rank = 1
                        AND recipient_id <> person)""",
        """UPDATE messages SET recipient_id = (
             SELECT w.recipient_id FROM temp.message_merge w
             WHERE w.campaign_id = messages.campaign_id AND w.person = messages.recipient_id
               AND w.rank = 1)
           WHERE id IN (SELECT l.id FROM temp.message_merge l JOIN temp.message_merge w
                          ON w.campaign_id = l.campaign_id AND w.person = l.person
                         AND w.rank = 1 AND w.recipient_id <> w.person
                        WHERE l.rank > 1 AND l.recipient_id = l.person)""",
        """UPDATE messages SET recipient_id = (
             SELECT person FROM temp.message_merge w WHERE w.id = messages.id)
           WHERE id IN (SELECT id FROM temp.message_merge WHERE rank = 1
                        AND recipient_id <> person)""",
        """UPDATE recipients SET email_key = NULL, merged_into = (
             SELECT new_id FROM temp.recipient_merge WHERE old_id = recipients.id)
           WHERE id IN (SELECT old_id FROM temp.recipient_merge)""",
        """DELETE FROM recipients WHERE merged_into IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM messages WHERE recipient_id = recipients.id)""",
        "DROP INDEX recipients_email_key_tmp",
        "CREATE UNIQUE INDEX recipients_email_key ON recipients(email_key)",
        "CREATE INDEX recipients_merged_into ON recipients(merged_into)",
        "DROP TABLE temp.message_merge",
        "DROP TABLE temp.recipient_merge",
        # Suppression re-keyed: spellings of one address merge into one entry that keeps the
        # strongest suppression (permanent over temporary, the latest expiry), the earliest
        # first sighting, the latest one and every count.
        """CREATE TABLE suppression_keyed (
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
        """INSERT INTO suppression_keyed (address, reason, source, status, diagnostic,
             first_seen, last_seen, count, expires_at)
           SELECT key, reason, source, status, diagnostic, first, last, total, expiry FROM (
             SELECT lower(address) AS key, reason, source, status, diagnostic,
                    min(first_seen) OVER w AS first, max(last_seen) OVER w AS last,
                    sum(count) OVER w AS total,
                    CASE WHEN max(expires_at IS NULL) OVER w THEN NULL
                         ELSE max(expires_at) OVER w END AS expiry,
                    row_number() OVER (PARTITION BY lower(address)
                                       ORDER BY expires_at IS NULL DESC, last_seen DESC)
                      AS rank
             FROM suppression WINDOW w AS (PARTITION BY lower(address)))
           WHERE rank = 1""",
        "DROP TABLE suppression",
        "ALTER TABLE suppression_keyed RENAME TO suppression",
        "UPDATE bounce_recipients SET address = lower(address)",
    ],
    # 7: why each deferred message waits: a kind that groups ("warm-up: 127.0.0.3's window
    # slots") and the full reason with its times, for `mailctl queue` and the reports.
    [
        "ALTER TABLE messages ADD COLUMN wait_kind TEXT",
        "ALTER TABLE messages ADD COLUMN wait_reason TEXT",
        "CREATE INDEX messages_campaign_wait ON messages(campaign_id, state, wait_kind)",
        # Deferred before reasons were kept: what the last reply says.
        """UPDATE messages SET
             wait_kind = CASE WHEN reason = 'mailctl' THEN coalesce(last_reply, 'mailctl')
                              WHEN last_code IS NOT NULL THEN 'retry after ' || last_code
                              ELSE 'retry after a network error' END,
             wait_reason = last_reply
           WHERE state = 'deferred'""",
    ],
    # 8: unsubscribes from one list (an unsubscribe scoped to "all" is a suppression row),
    # and how far each remote mailbox (IMAP high-water mark, POP3 UIDLs) has been imported.
    [
        """CREATE TABLE IF NOT EXISTS list_unsubscribes (
            list_name TEXT NOT NULL,
            address TEXT NOT NULL,          -- canonical address key (recipients.address)
            reason TEXT NOT NULL DEFAULT 'unsubscribe',
            source TEXT,
            at REAL NOT NULL,
            PRIMARY KEY (list_name, address)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS remote_mailboxes (
            mailbox TEXT PRIMARY KEY,       -- scheme://user@host:port/folder
            uidvalidity INTEGER,
            last_uid INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS remote_seen (
            mailbox TEXT NOT NULL,
            uid TEXT NOT NULL,              -- a POP3 UIDL
            at REAL NOT NULL,
            PRIMARY KEY (mailbox, uid)
        ) WITHOUT ROWID""",
    ],
    # 9: warnings already given once (a CSV version's rejected rows): a cron run every few
    # minutes must not repeat them into every mail it sends the operator.
    [
        "CREATE TABLE notices (key TEXT PRIMARY KEY, first_at REAL NOT NULL)",
    ],
    # 10: what each lane learned from its receiver (reputation/aimd.py): the rate and the
    # connections it accepted, why (reply, when, what was observed before), the probe level.
    [
        "ALTER TABLE lanes ADD COLUMN learned_rate REAL",
        "ALTER TABLE lanes ADD COLUMN learned_peak REAL",
        "ALTER TABLE lanes ADD COLUMN learned_connections INTEGER",
        "ALTER TABLE lanes ADD COLUMN learned_reason TEXT",
        "ALTER TABLE lanes ADD COLUMN learned_at REAL",
        "ALTER TABLE lanes ADD COLUMN learned_observed TEXT",
        "ALTER TABLE lanes ADD COLUMN learned_step_at REAL",
        "ALTER TABLE lanes ADD COLUMN learned_conn_at REAL",
        "ALTER TABLE lanes ADD COLUMN probe_level INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE lanes ADD COLUMN connect_until REAL",
        "ALTER TABLE lanes ADD COLUMN probing INTEGER NOT NULL DEFAULT 0",
    ],
    # 11: sends granted to send runs, so runs that overlap (several hosts, or one host under
    # two names) never exceed a cap together: each warm-up IP's daily cap per provider, and
    # provider-wide hourly limits (ip '*', an hour as day). A run takes a block before
    # sending and gives back what it did not use.
    [
        """CREATE TABLE send_grants (
            ip TEXT NOT NULL,
            day TEXT NOT NULL,               -- the IP's local day as in ip_days, or a UTC hour
            provider TEXT NOT NULL,
            granted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (ip, day, provider)
        ) WITHOUT ROWID""",
    ],
    # 12: what each lane's receiver accepted in the last minute (per second), so a run that
    # starts right after another counts what the receiver still counts (reputation/aimd.py).
    [
        "ALTER TABLE lanes ADD COLUMN recent_accepts TEXT",
    ],
    # 13: which file version each list last took in (a digest of the CSV's bytes and how it
    # was read): a cron `send` whose campaign file is unchanged does not re-read its CSV.
    # NULL means unknown (never imported, or another import changed shared recipient fields).
    [
        "ALTER TABLE lists ADD COLUMN source TEXT",
    ],
]
