"""Atomic bounce imports: a report's event and its effects (suppression, message state,
warm-up signals) commit together or not at all, so an import interrupted at any write and
run again ends exactly where an uninterrupted one does. And `bounces import` holds the write
lock only for short batches: a `send` running at the same time never waits long.

Real SQLite files throughout; the interruption is a KeyboardInterrupt (Ctrl-C) raised by a
thin wrapper around the real store before its k-th write."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailctl.bounces.suppression import import_reports
from mailctl.message.tracking import key_file_for, tracking_keys
from mailctl.sim.dsn import append_to_mbox, build_dsn
from mailctl.store.sqlite import SqliteStore
from tests.helpers.workspace import cli, make_workspace

NOW = time.time()
DAY = 86400.0
WRITES = ("add_bounce_event", "add_bounce_recipient", "suppress", "mark_reported", "bump_ip_day")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C at a chosen write."""


class InterruptingStore:
    """The real store, with a Ctrl-C raised before its `at`-th write (0: never)."""

    def __init__(self, store: SqliteStore, at: int) -> None:
        self._store = store
        self._at = at
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if name not in WRITES:
            return value

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self._at:
                raise Interrupted
            return value(*args, **kwargs)

        return write


def _dsn(rcpt: str, status: str, diagnostic: str, when: float, queue_id: str) -> bytes:
    return build_dsn(
        reporting_mta="mx.example.net",
        sender="news@example.com",
        rcpt=rcpt,
        status=status,
        diagnostic=diagnostic,
        original_headers=b"",
        arrival=when,
        queue_id=queue_id,
    )


def _arf(rcpt: str) -> bytes:
    return (
        "From: staff@hotmail.example\nTo: fbl@example.com\nSubject: complaint\n"
        f"Date: {email.utils.formatdate(NOW)}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
        f"User-Agent: test/1.0\nVersion: 1\nOriginal-Rcpt-To: {rcpt}\n\n--b--\n"
    ).encode()


def _mailbox(path: Path) -> None:
    """Hard bounces, soft bounces on three days, a complaint, a delay, a stranger, a repeat."""
    hard = _dsn("user0@example.com", "5.1.1", "550 5.1.1 User unknown", NOW, "Q0")
    reports = [
        hard,
        _dsn("user1@example.com", "5.1.1", "550 5.1.1 No such user", NOW, "Q1"),
        *(
            _dsn("user2@example.com", "4.2.2", "452 4.2.2 Mailbox full", NOW - d * DAY, f"S{d}")
            for d in (2, 1, 0)
        ),
        _arf("user3@example.com"),
        _dsn("user4@example.com", "4.4.1", "451 4.4.1 try again later", NOW, "D4"),
        _dsn("stranger@example.net", "5.1.1", "550 5.1.1 User unknown", NOW, "X1"),
        hard,
    ]
    for raw in reports:
        append_to_mbox(path, raw, NOW)


def _state(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {
            "suppression": conn.execute("SELECT * FROM suppression ORDER BY address").fetchall(),
            "events": conn.execute(
                """SELECT digest, kind, tracking_id, message_id, imported_at FROM bounce_events
                   ORDER BY digest"""
            ).fetchall(),
            "recipients": conn.execute(
                """SELECT e.digest, r.address, r.day, r.status, r.permanent, r.suppress,
                          r.message_id
                   FROM bounce_recipients r JOIN bounce_events e ON e.id = r.event_id
                   ORDER BY e.digest, r.address"""
            ).fetchall(),
            "messages": conn.execute(
                "SELECT id, state, last_reply, reason FROM messages ORDER BY id"
            ).fetchall(),
            "ip_days": conn.execute("SELECT * FROM ip_days ORDER BY ip, day, provider").fetchall(),
        }
    finally:
        conn.close()


def _copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()
    shutil.copy(key_file_for(str(source)), key_file_for(str(target)))


@pytest.fixture
def sent_db(sim_server, tmp_path: Path, capsys) -> Path:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=6)
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 6
    _mailbox(tmp_path / "reports.mbox")
    return ws / "m.db"


def _import(db: Path, mbox: Path, *, at: int = 0, batch: int = 50) -> int:
    """One import; returns how many writes it reached. Raises Interrupted at write `at`."""
    with SqliteStore.open(db) as store:
        wrapped = InterruptingStore(store, at)
        import_reports(
            wrapped,  # type: ignore[arg-type]
            [str(mbox)],
            now=NOW,
            keys=tracking_keys(str(db)),
            batch=batch,
        )
        return wrapped.writes


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_an_import_interrupted_at_any_write_then_rerun_ends_in_the_same_state(
    sent_db: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    mbox = sent_db.parent / "reports.mbox"
    folder = tmp_path_factory.mktemp("run")
    clean = folder / "clean.db"
    _copy(sent_db, clean)
    writes = _import(clean, mbox)
    expected = _state(clean)
    # Hard bounces, three days of soft bounces, a complaint; never the stranger.
    assert [(row[0], row[1]) for row in expected["suppression"]] == [
        ("user0@example.com", "hard_bounce"),
        ("user1@example.com", "hard_bounce"),
        ("user2@example.com", "soft_bounce_limit"),
        ("user3@example.com", "complaint"),
    ]
    assert writes > 10

    batch = data.draw(st.sampled_from([1, 2, 3, 50]), label="batch")
    interruptions = data.draw(
        st.lists(st.integers(1, writes), min_size=1, max_size=3), label="interrupt at writes"
    )
    db = folder / "interrupted.db"
    _copy(sent_db, db)
    for at in interruptions:
        try:
            _import(db, mbox, at=at, batch=batch)
        except Interrupted:
            pass
    _import(db, mbox, batch=batch)
    assert _state(db) == expected


@pytest.mark.parametrize("batch", [1, 50])
def test_an_import_interrupted_at_each_write_in_turn_then_rerun_ends_in_the_same_state(
    sent_db: Path, tmp_path: Path, batch: int
) -> None:
    """Exhaustive: Ctrl-C at the 1st write, then (fresh) at the 2nd, ... at the last."""
    mbox = sent_db.parent / "reports.mbox"
    clean = tmp_path / "clean.db"
    _copy(sent_db, clean)
    writes = _import(clean, mbox, batch=batch)
    expected = _state(clean)
    for k in range(1, writes + 1):
        db = tmp_path / f"k{k}.db"
        _copy(sent_db, db)
        with pytest.raises(Interrupted):
            _import(db, mbox, at=k, batch=batch)
        _import(db, mbox, batch=batch)
        assert _state(db) == expected, f"interrupted at write {k} of {writes}"


def test_a_send_and_an_import_at_once_never_meet_a_locked_database(
    sim_server, tmp_path: Path
) -> None:
    """`bounces import` of a large mailbox while `send` runs, both as real processes on one
    SQLite file; a third writer measures how long the write lock is ever held."""
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=400)
    mbox = tmp_path / "big.mbox"
    with mbox.open("wb") as out:
        for i in range(1500):
            raw = _dsn(f"someone{i}@example.org", "5.1.1", "550 5.1.1 User unknown", NOW, f"B{i}")
            out.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + raw + b"\n")
        # Hostile reports too: under the old parser one of these held the lock for seconds.
        for i in range(4):
            out.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n")
            out.write(f"Subject: Undelivered Mail {i}\n\nundeliverable\n".encode())
            out.write(b"-" * 20_000 + b"\n\n")
    base = [
        sys.executable,
        "-m",
        "mailctl",
        "--db",
        str(ws / "m.db"),
        "--profiles",
        str(ws / "profiles.yaml"),
    ]
    env = dict(os.environ)  # PYTHONPATH, when set, names this tree
    # The database exists (and its schema) before the two start.
    SqliteStore.open(ws / "m.db").close()

    waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        conn = sqlite3.connect(ws / "m.db", timeout=60, isolation_level=None)
        while not stop.is_set():
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            waits.append(time.perf_counter() - started)
            conn.execute("COMMIT")
            time.sleep(0.01)
        conn.close()

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        importing = subprocess.Popen(
            [*base, "bounces", "import", str(mbox), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sending = subprocess.Popen(
            [*base, "send", str(ws / "c.yaml"), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        import_out, import_err = importing.communicate(timeout=300)
        send_out, send_err = sending.communicate(timeout=300)
    finally:
        stop.set()
        prober.join()
    assert importing.returncode == 0, import_err.decode()
    assert sending.returncode == 0, send_err.decode()
    assert b"locked" not in import_err + send_err
    assert json.loads(send_out)["sent"] == 400
    assert json.loads(import_out)["messages"] == 1504
    # Short batches: the lock is never held for anything like a busy timeout.
    assert max(waits) < 2.0, f"waited {max(waits):.1f}s for the write lock"
