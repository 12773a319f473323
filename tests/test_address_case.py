"""Addresses match whatever their case: import dedup, suppression, the migration that merges.

Sends go to a real simulated provider (aiosmtpd) on loopback; nothing is mocked.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailctl.recipients.address import address_key, normalise_address
from mailctl.sim.behaviours import SimBehaviour, SimConfig
from mailctl.sim.servers import ThreadedSimServer
from mailctl.store.factory import open_store
from mailctl.store.sqlite_schema import MIGRATIONS
from tests.helpers.workspace import cli, db_of, db_states, make_workspace, send_json


def _with_list(ws: Path, *emails: str) -> None:
    lines = ["email,first_name", *(f"{email},Someone" for email in emails)]
    (ws / "list.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.usefixtures("backend")
def test_unsubscribe_in_another_case_is_never_sent_to(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(SimBehaviour())
    ws = make_workspace(tmp_path, server.port)
    _with_list(ws, "ada.lovelace19@example.org", "grace@example.net")
    assert cli(ws, "suppress", "add", "Ada.Lovelace19@Example.org", "--reason", "unsubscribe") == 0
    result = send_json(ws, capsys)
    assert (result["sent"], result["suppressed"]) == (1, 1)
    assert [d.rcpt for d in server.deliveries] == ["grace@example.net"]


@pytest.mark.usefixtures("backend")
def test_suppress_check_matches_any_case(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 1)
    assert cli(ws, "suppress", "add", "unknown-user1@gmail.com", "--reason", "hard_bounce") == 0
    capsys.readouterr()
    assert cli(ws, "suppress", "check", "UNKNOWN-USER1@gmail.com") == 0
    out = capsys.readouterr().out
    assert out == "unknown-user1@gmail.com is suppressed: hard_bounce, source cli\n"
    assert cli(ws, "suppress", "add", "*@Blocked.EXAMPLE") == 0
    capsys.readouterr()
    assert cli(ws, "suppress", "check", "Someone@BLOCKED.example", "--json") == 0
    check = json.loads(capsys.readouterr().out)
    assert check["suppressed"] and check["entry"]["address"] == "*@blocked.example"


@pytest.mark.usefixtures("backend")
def test_import_merges_spellings_of_one_address(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 1)
    _with_list(ws, "SOFIA.NOVAK72@GMAIL.COM", "sofia.novak72@gmail.com")
    assert cli(ws, "recipients", "import", str(ws / "list.csv"), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["imported"], summary["duplicates"]) == (1, 1)
    with open_store(db_of(ws)) as store:
        emails = [r["email"] for r in store.iter_recipients()]
    assert emails == ["SOFIA.NOVAK72@gmail.com"]  # as written (the domain is normalised)


def test_address_key_is_lowercase_of_every_normalised_address() -> None:
    for raw in ("Ada@Example.ORG", "ADA@bücher.example", '"Q U"@x.example', "a.b+C@EXAMPLE.com"):
        address, _ = normalise_address(raw)
        assert address_key(address) == address.lower() == address_key(raw)
    assert address_key("Ada@BÜCHER.example") == "ada@xn--bcher-kva.example"


# --------------------------------------------------------------------------- property


_LOCALS = st.from_regex(r"[a-z][a-z0-9]{0,6}(\.[a-z0-9]{1,5})?", fullmatch=True)
_DOMAINS = st.sampled_from(["example.org", "bücher.example", "mail.example.net"])


def _spelling(text: str, uppers: list[bool]) -> str:
    return "".join(c.upper() if uppers[i % len(uppers)] else c.lower() for i, c in enumerate(text))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    local=_LOCALS,
    domain=_DOMAINS,
    listed_case=st.lists(st.booleans(), min_size=1, max_size=8),
    suppressed_case=st.lists(st.booleans(), min_size=1, max_size=8),
    whole_domain=st.booleans(),
    after_queueing=st.booleans(),
)
def test_no_case_variant_of_a_suppressed_address_is_ever_sent_to(
    local: str,
    domain: str,
    listed_case: list[bool],
    suppressed_case: list[bool],
    whole_domain: bool,
    after_queueing: bool,
) -> None:
    address = f"{local}@{domain}"
    listed = _spelling(address, listed_case)
    target = _spelling(address, suppressed_case)
    if whole_domain:
        target = "*@" + target.rsplit("@", 1)[1]
    server = ThreadedSimServer(SimConfig(SimBehaviour()))
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ws = make_workspace(Path(tmp), server.port)
            _with_list(ws, "0first@other.example", listed)
            if after_queueing:
                # Queued first (one message goes: 0first…, as imports merge in key order),
                # suppressed before the next run claims the other: the check just before
                # delivery must catch its spelling.
                assert cli(ws, "send", str(ws / "c.yaml"), "--quiet", "--limit", "1") == 0
            assert cli(ws, "suppress", "add", target, "--reason", "unsubscribe") == 0
            assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
            sent_to = [d.rcpt.lower() for d in server.deliveries]
            assert sent_to == ["0first@other.example"]
            assert db_states(ws) == {"sent": 1, "suppressed": 1}
    finally:
        server.stop()
        assert not server.errors


# --------------------------------------------------------------------------- migration


class _OldDatabase:
    """A database of either backend at schema version 5, written with plain SQL (``?``
    placeholders on both)."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.postgres = backend == "postgresql"
        if self.postgres:
            import psycopg

            from mailctl.store import postgres_schema

            self.url = db_of(tmp_path)
            self.conn: Any = psycopg.connect(self.url, autocommit=True)
            self.conn.execute(postgres_schema.VERSION_TABLE)
            for statements in postgres_schema.MIGRATIONS[:5]:
                for statement in statements:
                    self.conn.execute(statement)
            self.conn.execute("INSERT INTO mailctl_schema (version) VALUES (5)")
        else:
            self.url = str(tmp_path / "old.db")
            self.conn = sqlite3.connect(self.url, isolation_level=None)
            for version, statements in enumerate(MIGRATIONS[:5], start=1):
                for statement in statements:
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {version}")

    def sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.postgres else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.sql(text), params)

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self.execute(text, row)


def test_migration_merges_case_duplicates_and_rekeys_suppression(
    tmp_path: Path, backend: str
) -> None:
    conn = _OldDatabase(backend, tmp_path)
    old = conn
    now = time.time()
    people = [
        (1, "sofia@gmail.com", '{"plan":"free","city":"Oslo"}'),
        (2, "SOFIA@gmail.com", '{"plan":"pro"}'),
        (3, "Sofia@gmail.com", '{"team":"a"}'),
        (4, "bob@example.net", "{}"),
    ]
    for rid, email, fields in people:
        conn.execute(
            "INSERT INTO recipients VALUES (?, ?, ?, ?, ?, ?)",
            (rid, email, email.rsplit("@")[1], fields, now, now),
        )
    conn.execute("INSERT INTO lists VALUES (1, 'a', ?), (2, 'b', ?)", (now, now))
    conn.executemany("INSERT INTO list_members VALUES (?, ?)", [(1, 1), (1, 4), (2, 2), (2, 3)])
    for cid, name in ((1, "sent-then-queued"), (2, "both-queued"), (3, "only-dup")):
        conn.execute(
            """INSERT INTO campaigns (id, name, profile, traffic_class, pool, list_name, content,
                 content_hash, created_at, updated_at) VALUES (?, ?, 'p', 't', 'p', 'a', '{}',
                 'h', ?, ?)""",
            (cid, name, now, now),
        )
    messages = [
        # (id, campaign, recipient, state): campaign 1 reached Sofia through her 2nd row.
        (1, 1, 1, "queued"),
        (2, 1, 2, "sent"),
        (3, 1, 4, "sent"),
        (4, 2, 2, "deferred"),
        (5, 2, 3, "queued"),
        (6, 3, 3, "failed"),
    ]
    for mid, cid, rid, state in messages:
        email = people[rid - 1][1]
        conn.execute(
            """INSERT INTO messages (id, campaign_id, recipient_id, email, domain, state,
                 tracking_id, queued_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (mid, cid, rid, email, email.rsplit("@")[1], state, f"t{mid}", now, now),
        )
    suppressions = [
        ("Ada@example.com", "unsubscribe", now - 50, now - 40, 1, None),
        ("ada@example.com", "soft_bounce_limit", now - 30, now - 10, 2, now + 99),
        ("*@blocked.example", "manual", now, now, 1, None),
        ("Eve@x.example", "soft_bounce_limit", now, now, 1, now + 500),
        ("eve@x.example", "soft_bounce_limit", now, now, 1, now + 900),
    ]
    for address, reason, first, last, count, expires in suppressions:
        conn.execute(
            """INSERT INTO suppression (address, reason, first_seen, last_seen, count,
                 expires_at) VALUES (?, ?, ?, ?, ?, ?)""",
            (address, reason, first, last, count, expires),
        )
    conn.conn.close()

    with open_store(old.url) as store:
        assert store.schema_version == len(MIGRATIONS)
        c = store.conn  # type: ignore[attr-defined]
        people_after = c.execute(
            "SELECT id, email, email_key, merged_into, fields FROM recipients ORDER BY id"
        ).fetchall()
        # The merged rows stay only as the holders of their cancelled leftovers.
        assert [(r[0], r[2], r[3]) for r in people_after] == [
            (1, "sofia@gmail.com", None),
            (2, None, 1),
            (3, None, 1),
            (4, "bob@example.net", None),
        ]
        fields = people_after[0][4]
        fields = fields if isinstance(fields, dict) else json.loads(fields)  # jsonb: a dict
        assert fields == {"plan": "pro", "city": "Oslo", "team": "a"}
        assert [r["email"] for r in store.iter_recipients()] == [
            "sofia@gmail.com",
            "bob@example.net",
        ]
        members = c.execute("SELECT list_id, recipient_id FROM list_members ORDER BY 1, 2")
        assert members.fetchall() == [(1, 1), (1, 4), (2, 1)]
        rows = c.execute(
            "SELECT id, campaign_id, recipient_id, state FROM messages ORDER BY id"
        ).fetchall()
        assert rows == [
            (1, 1, 2, "cancelled"),  # Sofia already had campaign 1: never sent twice
            (2, 1, 1, "sent"),
            (3, 1, 4, "sent"),
            (4, 2, 1, "deferred"),
            (5, 2, 3, "cancelled"),
            (6, 3, 1, "failed"),
        ]
        per_person = c.execute(
            """SELECT campaign_id, count(*) FROM messages
               WHERE recipient_id IN (1, 2, 3) AND state NOT IN ('cancelled')
               GROUP BY campaign_id"""
        ).fetchall()
        assert per_person == [(1, 1), (2, 1), (3, 1)]
        entries = {e["address"]: e for e in store.iter_suppression(include_expired=True)}
        assert set(entries) == {"ada@example.com", "*@blocked.example", "eve@x.example"}
        ada = entries["ada@example.com"]
        assert (ada["reason"], ada["expires_at"], ada["count"]) == ("unsubscribe", None, 3)
        assert (ada["first_seen"], ada["last_seen"]) == (now - 50, now - 10)
        assert entries["eve@x.example"]["expires_at"] == now + 900
        assert store.suppression_for("ada@example.com") is not None
        # The merged person is found by a bounce whichever spelling the message went to.
        c.execute(old.sql("UPDATE messages SET sent_at = ? WHERE id = 2"), (now,))
        assert store.latest_message_to("sofia@gmail.com", now - 60)["id"] == 2
