"""The store protocol on both backends (the `store_url` fixture: a SQLite file and a fresh
database on a throwaway PostgreSQL cluster): same schema version, same answers.

Also what choosing a backend can go wrong with: a bad URL, a refused connection and a bad
password are one line and exit 2.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.recipients.csv_import import import_csv
from mailctl.store.base import IpDayCounts, SuppressionEntry
from mailctl.store.factory import open_store
from mailctl.store.sqlite_schema import MIGRATIONS

_tracking = itertools.count()


def tracking_id() -> str:
    return f"t{next(_tracking)}"


@dataclass(frozen=True)
class Outcome:
    message_id: int
    state: str
    attempted: bool
    at: float
    next_attempt_at: float
    ip: str | None = "127.0.0.2"
    provider: str | None = "example"
    code: int | None = 250
    reply: str | None = "ok"
    reason: str | None = None
    rule: str | None = None
    scope: str | None = None
    possible_duplicate: bool = False
    wait_kind: str | None = None
    wait_reason: str | None = None


def loaded(store_url: str, tmp_path: Path, rows: int = 30) -> int:
    """A list of `rows` recipients and a campaign queued for them; its id."""
    csv = tmp_path / "list.csv"
    csv.write_text(
        "email,first_name\n" + "".join(f"user{i}@example.com,U{i}\n" for i in range(rows))
    )
    with open_store(store_url) as store:
        import_csv(store, csv, list_name="l")
        cid = store.create_campaign(
            name="news", path="c.yaml", profile="relay", traffic_class="marketing",
            pool="default", list_name="l", content={"subject": "hi"}, content_hash="h",
            now=1000.0,
        )  # fmt: skip
        assert store.queue_messages(cid, "l", 1000.0, tracking_id) == (rows, 0)
    return cid


def test_both_backends_migrate_to_the_same_schema_version(store_url: str) -> None:
    with open_store(store_url) as store:
        assert store.schema_version == len(MIGRATIONS)  # type: ignore[attr-defined]
    with open_store(store_url) as store:  # opening again applies nothing
        assert store.schema_version == len(MIGRATIONS)  # type: ignore[attr-defined]


def test_import_merges_fields_and_counts_suppressed(store_url: str, tmp_path: Path) -> None:
    first = tmp_path / "a.csv"
    first.write_text("email,city\na@example.com,Paris\nb@example.com,Rome\n")
    second = tmp_path / "b.csv"
    second.write_text("email,city\na@example.com,Oslo\nc@blocked.test,Bonn\n")
    with open_store(store_url) as store:
        store.suppress("*@blocked.test", "manual", now=time.time())
        one = import_csv(store, first, list_name="l")
        two = import_csv(store, second, list_name="l")
        assert (one.imported, two.imported, two.updated, two.suppressed) == (2, 1, 1, 1)
        rows = {r["email"]: r["fields"] for r in store.iter_recipients("l")}
    assert rows == {
        "a@example.com": {"city": "Oslo"},
        "b@example.com": {"city": "Rome"},
        "c@blocked.test": {"city": "Bonn"},
    }


def test_claims_by_two_connections_never_overlap(store_url: str, tmp_path: Path) -> None:
    cid = loaded(store_url, tmp_path, rows=40)
    with open_store(store_url) as one, open_store(store_url) as two:
        run_one = one.start_run(1, "mta1", 1000.0)
        run_two = two.start_run(2, "mta2", 1000.0)
        claims = [
            {m["id"] for m in store.claim_due([cid], 2000.0, run, 7)}
            for _ in range(4)
            for store, run in ((one, run_one), (two, run_two))
        ]
        seen: set[int] = set()
        for batch in claims:
            assert not batch & seen
            seen |= batch
        assert len(seen) == 40 and one.remaining(cid) == 40
        assert one.message_counts(cid)["sending"] == 40
        one.finish_run(run_one, 2001.0, "finished", 0)
        two.finish_run(run_two, 2001.0, "finished", 0)


def test_outcomes_signals_and_suppressions_commit_in_one_batch(
    store_url: str, tmp_path: Path
) -> None:
    cid = loaded(store_url, tmp_path, rows=5)
    with open_store(store_url) as store:
        run_id = store.start_run(1, "mta1", 1000.0)
        claimed = store.claim_due([cid], 2000.0, run_id, 5)
        assert json.loads(claimed[0]["fields_json"]) == {"first_name": "U0"}
        ids = [m["id"] for m in claimed]
        store.record_outcomes(
            [Outcome(ids[0], "sent", True, 2001.0, 2001.0)]
            + [Outcome(ids[1], "bounced", True, 2001.0, 2001.0, code=550, reply="no such user")]
            + [
                Outcome(i, "deferred", True, 2001.0, 2300.0, code=451, reply="later")
                for i in ids[2:4]
            ],
            [IpDayCounts("127.0.0.2", "2026-11-30", "example", sent=1, bounced=1, deferred=2)],
            [SuppressionEntry("user1@example.com", "hard_bounce", 2001.0, source="smtp")],
        )
        store.release([ids[4]])
        counts = store.message_counts(cid)
        assert {k: v for k, v in counts.items() if v} == {
            "sent": 1, "bounced": 1, "deferred": 2, "queued": 1,
        }  # fmt: skip
        assert store.ip_days() == [
            {"ip": "127.0.0.2", "day": "2026-11-30", "provider": "example", "sent": 1,
             "deferred": 2, "bounced": 1, "complained": 0, "throttles": 0, "blocks": 0}
        ]  # fmt: skip
        assert store.suppressed_set(["user1@example.com", "user2@example.com"], 2002.0) == {
            "user1@example.com"
        }
        assert store.top_replies(cid) == [("later", 2), ("no such user", 1)]
        assert store.next_due_at([cid]) == 1000.0
        by_ip = store.reports.message_counts("ip", cid)
        assert by_ip["127.0.0.2"]["deferred"] == {
            "messages": 2, "attempted": 2, "hard": 0, "soft": 0, "complaint": 0,
        }  # fmt: skip
        rules = store.reports.reply_rules("all", cid)
        assert sorted((r["outcome"], r["count"]) for r in rules) == [
            ("bounced", 1),
            ("deferred", 2),
        ]
        store.finish_run(run_id, 2003.0, "finished", 0)


def test_suppression_list_reads_the_same(store_url: str) -> None:
    with open_store(store_url) as store:
        assert store.suppress("b@example.com", "manual", source="cli", now=10.0)
        assert store.suppress("*@spam.test", "complaint", now=11.0)
        assert store.suppress("t@example.com", "soft_bounce_limit", expires_at=20.0, now=12.0)
        assert not store.suppress("b@example.com", "hard_bounce", now=13.0)
        assert store.suppression_for("x@SPAM.test".lower(), now=14.0)["address"] == "*@spam.test"
        rows = list(store.iter_suppression(include_expired=True))
        assert [(r["address"], r["reason"], r["count"]) for r in rows] == [
            ("*@spam.test", "complaint", 1),
            ("b@example.com", "hard_bounce", 2),
            ("t@example.com", "soft_bounce_limit", 1),
        ]
        assert store.unsuppress("b@example.com") and not store.unsuppress("b@example.com")


def test_a_bad_database_url_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["--db", "mysql://u@localhost/mail", "suppress", "list"])
    assert code == 2
    assert capsys.readouterr().err == (
        "Error: --db mysql://u@localhost/mail: unknown database URL scheme 'mysql'; use a file "
        "path, sqlite:///path or postgresql://user@host/dbname\n"
    )


def test_a_refused_connection_is_one_line_and_exit_2(
    pg_cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.postgres import free_port

    port = free_port()
    code = run(["--db", f"postgresql://mailctl@127.0.0.1:{port}/mail", "suppress", "list"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"Error: postgresql://mailctl@127.0.0.1:{port}/mail: cannot connect: ")
    assert "Connection refused" in err


def test_a_bad_password_is_one_line_exit_2_and_never_printed(
    pg_cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://mailctl_pw:wrong-secret@127.0.0.1:{pg_cluster.port}/postgres"
    code = run(["--db", url, "suppress", "list"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        f"Error: postgresql://mailctl_pw:***@127.0.0.1:{pg_cluster.port}/postgres: cannot "
        f'connect: connection to server at "127.0.0.1", port {pg_cluster.port} failed: FATAL: '
        'password authentication failed for user "mailctl_pw"\n'
    )
    assert "wrong-secret" not in err


def test_sqlite_url_and_plain_path_open_the_same_file(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "m.db")) as store:
        store.suppress("a@example.com", "manual", now=1.0)
    with open_store(f"sqlite:///{tmp_path}/m.db") as store:
        assert [r["address"] for r in store.iter_suppression()] == ["a@example.com"]


def test_recovery_requeues_only_expired_leases_never_a_live_runs_claims(
    pg_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCTL_LEASE_SECONDS", "1")
    url = pg_cluster.new_database("lease")
    cid = loaded(url, tmp_path, rows=10)
    with open_store(url) as live, open_store(url) as dead, open_store(url) as other:
        live_run = live.start_run(1, "mta1", 1000.0)  # its heartbeat thread keeps the lease
        dead_run = dead.start_run(2, "mta2", 1000.0)
        held = {m["id"] for m in live.claim_due([cid], 2000.0, live_run, 4)}
        lost = {m["id"] for m in dead.claim_due([cid], 2000.0, dead_run, 4)}
        dead._heartbeat.stop()  # type: ignore[attr-defined,union-attr]  # as if killed -9
        dead._heartbeat = None  # type: ignore[attr-defined]
        assert other.recover_interrupted() == 0  # both leases are fresh
        time.sleep(2.5)
        assert other.recover_interrupted() == 4  # only the silent run's claims
        again = {m["id"] for m in other.claim_due([cid], 2000.0, other.start_run(3, "x", 0), 10)}
        assert again == lost | (set(range(1, 11)) - held - lost)
        assert not again & held
        flagged = {m["id"] for m in other.claim_due([cid], 2000.0, 99, 10)}
        assert flagged == set()
        assert other.message_counts(cid)["possible_duplicates"] == 4
        live.finish_run(live_run, 2001.0, "finished", 0)
