"""`mailctl db copy` and `db migrate`: a SQLite database with history moved into a
throwaway PostgreSQL database reads the same afterwards (report, suppression, warm-up)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.message.tracking import tracking_keys
from mailctl.store.factory import open_store
from mailctl.store.sqlite_schema import MIGRATIONS
from tests.helpers.workspace import db_rows, make_workspace

POOL = "    pools:\n      default:\n        - 127.0.0.2\n"


def reads(db: str, ws: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """What a user sees: the report, the suppression list, warm-up status."""
    out: dict[str, object] = {}
    for name, args in {
        "report": ["report", "news", "--json"],
        "suppress": ["suppress", "list", "--json"],
        "warmup": ["warmup", "status", "--json", "--date", "2026-11-30"],
    }.items():
        code = run(["--db", db, "--profiles", str(ws / "profiles.yaml"), *args])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        text = captured.out
        out[name] = (
            {k: v for k, v in json.loads(text).items() if k != "generated_at"}
            if name == "report"
            else text
        )
    return out


def test_db_copy_moves_history_suppression_and_warmup_into_postgresql(
    pg_cluster, smtp_sink: tuple[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = smtp_sink
    ws = make_workspace(tmp_path, port, rows=40, profile_extra=POOL)
    sqlite_db = str(tmp_path / "m.db")
    base = ["--db", sqlite_db, "--profiles", str(ws / "profiles.yaml")]
    assert run([*base, "warmup", "start", "127.0.0.2", "--preset", "linear"]) == 0
    assert run([*base, "suppress", "add", "user3@example.com"]) == 0
    assert run([*base, "send", str(ws / "c.yaml"), "--json"]) == 0
    capsys.readouterr()
    before = reads(sqlite_db, ws, capsys)
    url = pg_cluster.new_database("copy")

    assert run(["db", "copy", sqlite_db, url]) == 0
    err = capsys.readouterr().err
    assert err.startswith("copied 1") and "messages 40" in err and "suppression 1" in err

    after = reads(url, ws, capsys)
    assert after == before
    with open_store(sqlite_db) as src, open_store(url) as dst:
        assert dst.ip_days() == src.ip_days()
        assert dst.warmup_events("127.0.0.2") == src.warmup_events("127.0.0.2")
        # New rows continue after the copied ids.
        assert dst.start_run(1, "mta1", 1.0) == src.start_run(1, "mta1", 1.0)
        # The key beside the file signs on in the database: every host verifies the ids
        # of mail sent before the move, so a bounce of it still finds its message.
        key = (tmp_path / "m.db.key").read_text().strip()
        assert dst.database_key("tracking", lambda: "not this one") == key
        ((tracking_id,),) = db_rows(
            tmp_path, "SELECT tracking_id FROM messages WHERE state = 'sent' LIMIT 1"
        )
        assert tracking_keys(url, stored=dst.database_key).verify(tracking_id)
        assert dst.message_by_tracking_id(tracking_id)["state"] == "sent"

    assert run(["db", "copy", sqlite_db, url]) == 1  # a StoreError: never into data
    assert capsys.readouterr().err == (f"Error: {url} already holds data; copy into an empty one\n")


def test_db_copy_refuses_a_source_table_it_would_leave_behind(
    pg_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite_db = str(tmp_path / "m.db")
    assert run(["--db", sqlite_db, "suppress", "add", "kept@example.com"]) == 0
    with open_store(sqlite_db) as src:
        src.conn.execute("CREATE TABLE operator_notes (id INTEGER PRIMARY KEY, note TEXT)")
    url = pg_cluster.new_database("leftover")
    capsys.readouterr()

    assert run(["db", "copy", sqlite_db, url]) == 1
    assert capsys.readouterr().err == (
        f"Error: {sqlite_db} has tables db copy does not know: operator_notes\n"
    )
    with open_store(url) as dst:
        assert dst.suppressed_set(["kept@example.com"]) == set()


def test_db_migrate_reports_the_schema_version(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = len(MIGRATIONS)
    assert run(["--db", store_url, "db", "migrate"]) == 0
    assert capsys.readouterr().err == f"{store_url}: schema version 0 -> {latest}\n"
    assert run(["--db", store_url, "db", "migrate"]) == 0
    assert capsys.readouterr().err == f"{store_url}: schema version {latest}, up to date\n"
