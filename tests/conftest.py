"""Shared fixtures: simulated mailbox providers (mailctl.sim) on 127.0.0.1.

``hostile_server(script)`` starts a misbehaving SMTP server (tests/hostile_smtp).
``sim_server(behaviour, **config)`` starts a threaded simulated provider and stops it at
teardown; ``sim_clock`` is the fake clock (tests.helpers.clock) to inject where rate windows or
greylisting matter. Shared non-fixture helpers live in tests/helpers/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
