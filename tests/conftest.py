"""Shared fixtures: simulated mailbox providers (mailctl.sim) on 127.0.0.1.

``sim_server(behaviour, **config)`` starts a threaded simulated provider and stops it at
teardown; ``sim_clock`` is a manual clock to inject where rate windows or greylisting matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from mailctl.sim.behaviours import SimBehaviour, SimConfig
from mailctl.sim.events import SimEvent
from mailctl.sim.servers import ThreadedSimServer


class ManualClock:
    """A clock that only moves when told to, so rate windows are tested without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SimServerFactory(Protocol):
    def __call__(
        self,
        behaviour: SimBehaviour | None = None,
        *,
        clock: Callable[[], float] = ...,
        on_event: Callable[[SimEvent], None] | None = None,
        **config: Any,
    ) -> ThreadedSimServer: ...


@pytest.fixture
def sim_clock() -> ManualClock:
    return ManualClock()


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
