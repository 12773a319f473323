"""The one clock: where everything that reads the time or waits gets it from.

Delivery takes a `Clock` as a parameter, so tests drive throttling, backoff, greylisting and
warm-up on a fake clock without waiting. Pure modules (lanes, warm-up maths) take ``now``
read from it. A bottom module: imports nothing from mailctl.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in epoch seconds, and a sleep on that same time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.time()` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
