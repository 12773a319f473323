"""The type of the ``sim_server`` fixture (tests/conftest.py), for annotating tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from mailctl.sim.behaviours import SimBehaviour
from mailctl.sim.events import SimEvent
from mailctl.sim.servers import ThreadedSimServer


class SimServerFactory(Protocol):
    def __call__(
        self,
        behaviour: SimBehaviour | None = None,
        *,
        clock: Callable[[], float] = ...,
        on_event: Callable[[SimEvent], None] | None = None,
        **config: Any,
    ) -> ThreadedSimServer: ...
