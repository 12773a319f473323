"""The one fake clock of the test suite.

It fits every clock shape mailctl takes: call it (``clock()``, as the simulated providers,
the renderer and the DKIM signer do) or ask it (``clock.now()``, as the engine does); sleeping
(``await clock.sleep(s)``) and ``clock.advance(s)`` move time at once, never on the wall clock.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when told to or when someone sleeps on it.

    With ``overlapping_sleeps`` a task sleeping s seconds moves time to (its start + s) at
    most, so two tasks sleeping at once do not add their sleeps up (the engine's workers, pacing
    a lane, sleep while its main loop waits for the next due message). Without it every sleep
    adds its full length.
    """

    def __init__(self, start: float = 1_800_000_000.0, *, overlapping_sleeps: bool = False):
        self.t = start
        self.overlapping_sleeps = overlapping_sleeps

    def __call__(self) -> float:
        return self.t

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        if self.overlapping_sleeps:
            target = self.t + max(seconds, 0.0)
            await asyncio.sleep(0)
            self.t = max(self.t, target)
        else:
            self.t += max(seconds, 0.0)
            await asyncio.sleep(0)
