"""A run's first relay connection opens while its campaign loads (mailctl/delivery/early.py):
against a real Postfix, the connection is up before the CSV import ends and carries the
mail; a run with nothing due opens none; an early socket nobody takes is closed after the
greeting with QUIT. The conditions for connecting early are checked on a real SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mailctl.config.campaign import load_campaign
from mailctl.config.profiles import load_profiles
from mailctl.delivery import campaigns, early
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.early import EarlyConnection, Target, connect_early
from mailctl.reputation.lane_state import LaneMode, LaneState
from mailctl.store.sqlite import SqliteStore
from tests.helpers.postfix import Receiver, free_port, have_postfix, postfix_receiver
from tests.helpers.workspace import postfix_workspace, send

needs_postfix = pytest.mark.skipif(not have_postfix(), reason="Postfix is not installed")


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@needs_postfix
def test_a_first_send_connects_while_the_csv_imports_and_a_run_with_nothing_due_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with postfix_receiver() as receiver:
        ws = postfix_workspace(tmp_path, receiver.port, 30, connections=1)
        during_import: list[int] = []
        real_import = campaigns.import_csv_if_changed

        def import_when_connected(*args: Any, **kwargs: Any) -> Any:
            # Postfix logs "connect from" as its smtpd accepts: wait for it, bounded.
            wait_for(lambda: receiver.connections > 0)
            during_import.append(receiver.connections)
            return real_import(*args, **kwargs)

        monkeypatch.setattr(campaigns, "import_csv_if_changed", import_when_connected)
        assert send(ws) == 0
        assert during_import == [1], "the relay connection must be up while the CSV imports"
        assert receiver.settled_count(r"status=sent ", 30) == 30
        # The early connection is the one that carried the mail: one session, ended by QUIT.
        assert receiver.connections == 1
        assert receiver.count(r"disconnect from .* quit=1") == 1
        assert receiver.count(r"lost connection") == 0

        # Everything is sent: the next run (cron's) has nothing due and opens no connection.
        monkeypatch.setattr(campaigns, "import_csv_if_changed", real_import)
        assert send(ws) == 0
        time.sleep(0.3)
        assert receiver.connections == 1


def quits(receiver: Receiver) -> int:
    return receiver.count(r"disconnect from \S+ quit=1 commands=1\n")


@needs_postfix
def test_an_early_socket_nobody_takes_or_taken_too_late_is_closed_with_quit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with postfix_receiver() as receiver:
        target = Target("127.0.0.1", receiver.port, None, timeout=10.0, implicit_tls=False)

        unused = EarlyConnection(target)
        assert wait_for(lambda: receiver.connections == 1)
        unused.discard()
        assert wait_for(lambda: quits(receiver) == 1)

        # Waited longer than EARLY_HOLD: closed the same way, and the caller connects anew.
        monkeypatch.setattr(early, "EARLY_HOLD", 0.0)
        stale = EarlyConnection(target)
        assert wait_for(lambda: receiver.connections == 2)
        time.sleep(0.05)
        assert asyncio.run(stale.take()) is None
        stale.discard()  # taken already: nothing more to do
        assert wait_for(lambda: quits(receiver) == 2)

        # Discarded at once, most likely while it still connects (the thread then closes it
        # once connected).
        pending = EarlyConnection(target)
        pending.discard()
        assert wait_for(lambda: quits(receiver) == 3)

        # The run stopped while the dispatcher waited for it (its wait cancelled), before or
        # after the connect completed: closed the same way, and the thread raises nothing.
        faults: list[BaseException | None] = []
        monkeypatch.setattr(threading, "excepthook", lambda args: faults.append(args.exc_value))
        monkeypatch.setattr(early, "EARLY_HOLD", 60.0)

        async def stopped_while_taking(connection: EarlyConnection) -> None:
            waiting = asyncio.create_task(connection.take())
            await asyncio.sleep(0)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting

        cancelled = EarlyConnection(target)
        asyncio.run(stopped_while_taking(cancelled))
        cancelled.discard()
        assert wait_for(lambda: quits(receiver) == 4)
        assert faults == []
        assert receiver.count(r"lost connection") == 0


def gate(ws: Path, store: SqliteStore) -> EarlyConnection | None:
    """What `connect_early` makes of the workspace now (a connection it opens is dropped:
    the relay's port is closed)."""
    campaign = load_campaign(ws / "c.yaml")
    profile = load_profiles(ws / "profiles.yaml").get(campaign.profile)
    pool = profile.pool_for(campaign.traffic_class, campaign.pool)
    found = connect_early(store, campaign, profile, pool, time.time())
    if found is not None:
        found.discard()
    return found


WARMUP_POOL = """    pools:
      default:
        - ip: 127.0.0.1
          warmup: {preset: linear, start: 2026-01-01, target_daily: 1000}
"""
TWO_IP_POOL = """    pools:
      default:
        - ip: 127.0.0.1
        - ip: 127.0.0.2
"""


def _sandbox(ws: Path, store: SqliteStore) -> None:
    (ws / "profiles.yaml").write_text(
        "default_profile: relay\nprofiles:\n  relay:\n    transport: sandbox\n"
    )


def _two_ips(ws: Path, store: SqliteStore) -> None:
    (ws / "profiles.yaml").write_text((ws / "profiles.yaml").read_text() + TWO_IP_POOL)


def _warmup(ws: Path, store: SqliteStore) -> None:
    (ws / "profiles.yaml").write_text((ws / "profiles.yaml").read_text() + WARMUP_POOL)


def _big_csv(ws: Path, store: SqliteStore) -> None:
    rows = (f"user{i}@example.com,{'x' * 40}" for i in range(early.EARLY_MAX_CSV // 50))
    (ws / "list.csv").write_text("email,note\n" + "\n".join(rows) + "\n")


def _prepared(ws: Path, store: SqliteStore) -> int:
    profiles = load_profiles(ws / "profiles.yaml")
    return prepare(store, ws / "c.yaml", profiles, now=time.time()).job.campaign_id


def _nothing_due(ws: Path, store: SqliteStore) -> None:
    _prepared(ws, store)
    store.conn.execute("UPDATE messages SET next_attempt_at = ?", (time.time() + 3600,))


def _paused(ws: Path, store: SqliteStore) -> None:
    store.set_campaign_status(_prepared(ws, store), "paused", "operator", now=time.time())


def _lane(ws: Path, store: SqliteStore, **state: Any) -> None:
    store.upsert_lanes([LaneState(ip="0.0.0.0", **state).to_row()])


def _suspended_lane(ws: Path, store: SqliteStore) -> None:
    _lane(ws, store, provider="google", mode=LaneMode.SUSPENDED, until=time.time() + 600)


def _probe_pause(ws: Path, store: SqliteStore) -> None:
    _lane(ws, store, provider="relay 127.0.0.1:25", connect_until=time.time() + 60)


@pytest.mark.parametrize(
    "setup",
    [
        _sandbox,
        _two_ips,
        _warmup,
        _big_csv,
        _nothing_due,
        _paused,
        _suspended_lane,
        _probe_pause,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_no_early_connection_unless_the_run_is_sure_to_use_it(tmp_path: Path, setup: Any) -> None:
    ws = postfix_workspace(tmp_path, free_port(), 5)
    with SqliteStore.open(ws / "m.db") as store:
        assert isinstance(gate(ws, store), EarlyConnection)  # a first send over the relay
        setup(ws, store)
        assert gate(ws, store) is None


def test_a_resumed_campaign_with_mail_due_and_clean_lanes_connects_early(tmp_path: Path) -> None:
    ws = postfix_workspace(tmp_path, free_port(), 5)
    with SqliteStore.open(ws / "m.db") as store:
        _prepared(ws, store)
        _lane(ws, store, provider="google", learned_rate=600.0)
        assert isinstance(gate(ws, store), EarlyConnection)
