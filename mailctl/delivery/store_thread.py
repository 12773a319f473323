"""The send loop's claims and outcome commits, off the event loop where they wait on a server.

On PostgreSQL a claim or a commit is a round trip of 10–40 ms. Made on the event loop, every
SMTP session of the run stands still for it: a third of a sender's time at full speed.
`StoreThread` runs them in one thread, one at a time and in the order asked, on the store's
second connection (`Store.side_connection`), while the loop goes on sending. Everything
else the run asks of the store stays on the main connection.

The two connections cannot wait on each other: the side one claims rows no one holds
(`SKIP LOCKED`) and writes the outcomes of this run's own claims, its IP counters and
suppressions; the main one reads, takes warm-up grants (their own rows and lock), and
writes routes and lane events. Imports the store interface only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from mailctl.store.base import Store

T = TypeVar("T")


class StoreThread:
    """One thread with its own connection, for claims and commits."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailctl-store")

    @classmethod
    def for_store(cls, store: Store) -> StoreThread | None:
        """A thread on the store's side connection, or None where the backend has none."""
        side = store.side_connection()
        return None if side is None else cls(side)

    def submit(self, work: Callable[[Store], T]) -> Future[T]:
        """Start ``work`` after what was asked before it; its result or error on the future."""
        return self._executor.submit(work, self.store)

    async def run(self, work: Callable[[Store], T]) -> T:
        """``work`` in the thread, awaited: the event loop runs meanwhile."""
        return await asyncio.wrap_future(self.submit(work))

    def close(self) -> None:
        """Finish what was asked, then close the connection."""
        self._executor.shutdown(wait=True)
        self.store.close()
