"""A real `mailctl send` subprocess, killed with SIGKILL at random moments, then resumed.

Guarantee under test: every recipient is delivered, none is lost, and duplicates are
bounded by (and only among) the messages that were in flight at the crashes.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mailctl.sim.behaviours import SimBehaviour
from tests.helpers.workspace import make_workspace


def query(db: str, sql: str) -> list[tuple]:
    """Rows of a read-only query on either backend."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def start_send(ws: Path, *extra: str, db: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailctl",
            "--db",
            db or str(ws / "m.db"),
            "--profiles",
            str(ws / "profiles.yaml"),
            "send",
            str(ws / "c.yaml"),
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def delivered(jsonl: Path) -> collections.Counter[str]:
    if not jsonl.exists():
        return collections.Counter()
    return collections.Counter(json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines())


def test_kill_9_and_resume_loses_nothing(sim_server, tmp_path: Path, store_url: str) -> None:
    jsonl = tmp_path / "delivered.jsonl"
    # A little latency so each run is killed with many messages in flight.
    server = sim_server(SimBehaviour(delays={"DATA": 0.002}), jsonl=jsonl)
    rows = 3000
    ws = make_workspace(tmp_path, server.port, rows=rows)
    rng = random.Random(42)
    kills = 0
    for _ in range(4):
        proc = start_send(ws, db=store_url)
        # Kill once it is sending (something delivered since the last kill), at a random moment.
        before = sum(delivered(jsonl).values())
        deadline = time.time() + 30
        while (
            sum(delivered(jsonl).values()) == before
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed; make the test slower"
    for _ in range(5):
        proc = start_send(ws, db=store_url)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        if json.loads(out)["remaining"] == 0:
            break
    counts = delivered(jsonl)
    expected = {f"user{i}@example.com" for i in range(rows)}
    assert set(counts) == expected, f"missing: {sorted(expected - set(counts))[:5]}"
    duplicates = {rcpt for rcpt, n in counts.items() if n > 1}
    flagged = {
        r[0] for r in query(store_url, "SELECT email FROM messages WHERE possible_duplicate = 1")
    }
    states = dict(query(store_url, "SELECT state, count(*) FROM messages GROUP BY state"))
    assert states == {"sent": rows}
    # Every duplicate was one of the messages in flight at a crash, and flagged as such.
    assert duplicates <= flagged
    assert all(counts[r] <= 1 + kills for r in duplicates)
    assert len(flagged) <= kills * 600  # in flight = claim batch + connection queues + pending


def test_sigint_stops_cleanly_and_resumes_without_duplicates(
    sim_server, tmp_path: Path, store_url: str
) -> None:
    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.01}), jsonl=jsonl)
    ws = make_workspace(tmp_path, server.port, rows=400)
    proc = start_send(ws, db=store_url)
    deadline = time.time() + 30
    while not delivered(jsonl) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["stop_reason"] == "interrupted"
    assert 0 < result["sent"] < 400
    assert query(store_url, "SELECT count(*) FROM messages WHERE state = 'sending'")[0][0] == 0
    assert (
        query(store_url, "SELECT count(*) FROM messages WHERE state = 'sent'")[0][0]
        == result["sent"]
    )
    proc = start_send(ws, db=store_url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    counts = delivered(jsonl)
    assert len(counts) == 400 and max(counts.values()) == 1
