"""Shared fixtures: simulated mailbox providers (mailctl.sim) on 127.0.0.1.

``hostile_server(script)`` starts a misbehaving SMTP server (tests/hostile_smtp).
``sim_server(behaviour, **config)`` starts a threaded simulated provider and stops it at
teardown; ``sim_clock`` is the fake clock (tests.helpers.clock) to inject where rate windows or
greylisting matter. Shared non-fixture helpers live in tests/helpers/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailctl.sim.behaviours import SimBehaviour, SimConfig
from mailctl.sim.events import SimEvent
from mailctl.sim.servers import ThreadedSimServer
from tests.helpers.clock import FakeClock
from tests.helpers.sim import SimServerFactory
from tests.hostile_smtp import HostileServer, Script


@pytest.fixture
def sim_clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def sim_server() -> Iterator[SimServerFactory]:
    """Start simulated providers: ``sim_server(behaviour, mbox=..., jsonl=..., maildir=...)``.

    Keyword arguments other than ``clock`` and ``on_event`` are ``SimConfig`` fields. Every
    server is stopped at teardown, and the test fails if a server hit an internal error.
    """
    servers: list[ThreadedSimServer] = []

    def start(
        behaviour: SimBehaviour | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[SimEvent], None] | None = None,
        **config: Any,
    ) -> ThreadedSimServer:
        server = ThreadedSimServer(
            SimConfig(behaviour or SimBehaviour(), **config), clock=clock, on_event=on_event
        )
        server.start()
        servers.append(server)
        return server

    yield start
    errors: list[str] = []
    for server in reversed(servers):
        server.stop()
        errors.extend(server.errors)
    assert not errors, f"simulated provider failed internally: {errors}"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests.helpers.postgres)."""
    from tests.helpers.postgres import pg_bin_dir, remove_cluster, start_cluster

    if pg_bin_dir() is None:
        if os.environ.get("MAILCTL_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (apt-get install postgresql)")
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("MAILCTL_REQUIRE_POSTGRES"):
            pytest.fail("psycopg is required here (pip install -e '.[test]')")
        pytest.skip("psycopg not installed (pip install -e '.[postgres]')")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


_databases = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test on each backend ("sqlite", "postgresql"): for PostgreSQL a new database
    on the session's throwaway cluster, named in tmp_path's DB_URL_FILE so the workspace
    helpers (`cli`, `send`, `db_of`, `db_rows` in tests.helpers.workspace) use it."""
    from tests.helpers.workspace import DB_URL_FILE

    if request.param == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.new_database(f"t{next(_databases)}")
        (tmp_path / DB_URL_FILE).write_text(url + "\n")
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> str:
    """A fresh, empty database of each backend (see `backend`): a SQLite file, or a new
    PostgreSQL database. Use as `--db` or with `open_store`."""
    from tests.helpers.workspace import db_of

    return db_of(tmp_path)


# --------------------------------------------------------------------------- smtp-sink

SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
)


@pytest.fixture()
def smtp_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if SINK is None:
        if os.environ.get("MAILCTL_REQUIRE_SMTP_SINK"):
            pytest.fail("smtp-sink is required here (apt-get install postfix)")
        pytest.skip("Postfix smtp-sink not installed (apt-get install postfix)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # smtp-sink drops privileges before writing: pytest's tmp_path is not reachable for it.
    dump = Path(tempfile.mkdtemp(prefix="mailctl-sink-"))
    os.chmod(dump, 0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SINK, *user, "-d", f"{dump}/%M.", f"127.0.0.1:{port}", "64"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, dump
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(dump, ignore_errors=True)


@pytest.fixture
def hostile_server() -> Iterator[Callable[[Script], HostileServer]]:
    """Start hostile SMTP servers: ``hostile_server(Script(...))``; stopped at teardown, and
    the test fails if a server hit an internal error."""
    servers: list[HostileServer] = []

    def start(script: Script) -> HostileServer:
        server = HostileServer(script).start()
        servers.append(server)
        return server

    yield start
    errors: list[str] = []
    for server in servers:
        server.stop()
        errors.extend(server.errors)
    assert not errors, f"hostile server failed internally: {errors}"
