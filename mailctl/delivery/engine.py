"""The send loop: claims due messages, routes, renders, dispatches, records outcomes.

This module only wires the parts and runs the loop: `claim` takes due messages, `route`
gives each a lane and an IP, `dispatch` sends them over pooled connections, `record`
commits outcomes in batches. A message is never recorded as sent before its 250. A run that
dies leaves its claimed messages in `sending`; the next run (holding the lock, so certain
the old run is gone) returns them to the queue as possible duplicates.
Time and sleep come from the injected clock only. Imports no CLI and no simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mailctl.clock import Clock, SystemClock
from mailctl.delivery.attention import attention
from mailctl.delivery.claim import Claimer
from mailctl.delivery.context import (
    CampaignJob,
    EventCallback,
    SendContext,
    SendOptions,
    hms,
)
from mailctl.delivery.dispatch import Dispatcher
from mailctl.delivery.early import EarlyConnection
from mailctl.delivery.record import Recorder, RunSummary
from mailctl.delivery.route import Router
from mailctl.delivery.store_thread import StoreThread
from mailctl.dns.providers import AsyncMxResolver
from mailctl.errors import StoreError
from mailctl.replies.rules import load_rules
from mailctl.reputation.budget import WarmupBudget, profile_settings, provider_hourly
from mailctl.reputation.lane_state import LaneState
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.base import Store

# Messages rendered on the event loop between two looks at the connections (see _step).
RENDER_CHUNK = 16
# Seconds the loop is left to the network between two render chunks while a connection opens.
OPENING_TURN = 0.001

if TYPE_CHECKING:
    from mailctl.dns.resolver import Resolver  # dnspython: loaded only for live lookups

ProgressCallback = Callable[["Engine"], None]


class Engine:
    """One send run over a set of campaigns."""

    def __init__(
        self,
        store: Store,
        jobs: Sequence[CampaignJob],
        *,
        run_id: int,
        clock: Clock | None = None,
        options: SendOptions | None = None,
        sandbox_port: int | None = None,
        on_progress: ProgressCallback | None = None,
        on_event: EventCallback | None = None,
        rng: random.Random | None = None,
        resolver: Resolver | AsyncMxResolver | None = None,
        scheduler: Scheduler | None = None,
        budget: WarmupBudget | None = None,
        early: EarlyConnection | None = None,
    ) -> None:
        rng = rng or random.Random()
        profiles = {job.profile.name: job.profile for job in jobs}
        if scheduler is None:
            # One rule set per run: the first profile's overrides (lanes are per IP, and an
            # IP belongs to one profile).
            first = next(iter(profiles.values()), None)
            rules = load_rules(first.rules if first else None)
            states = [LaneState.from_row(row) for row in store.lane_rows()]
            scheduler = Scheduler(rules, rng=rng, states=states)
        if budget is None:
            budget = WarmupBudget(
                store,
                profile_settings(*profiles.values()),
                shared=True,
                provider_hourly=provider_hourly(*profiles.values()),
            )
        self.ctx = SendContext(
            store,
            jobs,
            run_id=run_id,
            clock=clock or SystemClock(),
            options=options or SendOptions(),
            rng=rng,
            scheduler=scheduler,
            budget=budget,
            on_event=on_event,
        )
        self.on_progress = on_progress
        self.recorder = Recorder(self.ctx, on_commit=self._progress)
        self.claimer = Claimer(self.ctx)
        self.router = Router(self.ctx, self.recorder, resolver)
        self.dispatcher = Dispatcher(self.ctx, self.recorder, sandbox_port, early)
        self.started = 0.0

    @property
    def options(self) -> SendOptions:
        return self.ctx.options

    @options.setter
    def options(self, options: SendOptions) -> None:
        self.ctx.options = options

    @property
    def summary(self) -> RunSummary:
        return self.recorder.summary

    def lane_rows(self) -> list[dict[str, Any]]:
        """Progress rows: this run's counters with each lane's current state."""
        return self.recorder.lane_rows()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self)

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """First call: stop claiming, finish in-flight work. Second call: stop at once."""
        ctx = self.ctx
        if ctx.stop.is_set():
            ctx.force = True
            self.dispatcher.cut(ctx.clock.now())
        ctx.stop.set()
        ctx.wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> RunSummary:
        """Send until done, stopped, out of time or out of due work; return the summary."""
        with _fewer_collections():
            return await self._run()

    async def _run(self) -> RunSummary:
        ctx, clock, options = self.ctx, self.ctx.clock, self.ctx.options
        dispatcher, recorder, store = self.dispatcher, self.recorder, self.ctx.store
        self.started = clock.now()
        deadline = self.started + options.max_time if options.max_time else None
        wait = options.wait if options.wait is not None else deadline is not None
        reason = "finished"
        try:
            ctx.store_thread = StoreThread.for_store(store)
            self.claimer.start_render_pool()
            while True:
                if ctx.stop.is_set():
                    reason = "interrupted"
                    break
                if not ctx.active():
                    reason = "campaign stopped"
                    break
                if options.limit is not None and dispatcher.attempted >= options.limit:
                    # The last claims are already queued to connections: let them go out.
                    while dispatcher.busy() and not ctx.stop.is_set():
                        await self._await_workers()
                    reason = "limit"
                    break
                now = clock.now()
                if deadline is not None and now >= deadline:
                    reason = "max-time"
                    break
                # The run's first claim is one render chunk: its connections start opening
                # before the rest are claimed, routed and rendered.
                batch = options.claim_batch if self.claimer.claims else RENDER_CHUNK
                if options.limit is not None:
                    batch = min(batch, options.limit - dispatcher.attempted)
                claimed = await self.claimer.claim(now, batch, busy=dispatcher.busy())
                if not claimed:
                    if dispatcher.busy():
                        await self._await_workers()
                        continue
                    recorder.commit(force=True)
                    next_due = store.next_due_at(ctx.active())
                    if next_due is None:
                        reason = "finished"
                        break
                    if wait and (deadline is None or next_due < deadline):
                        ctx.say(f"all remaining work waits; next attempt at {hms(next_due)}")
                        await self._pause(max(0.0, next_due - clock.now()), until=deadline)
                        continue
                    reason = "deferred"
                    self.summary.next_attempt_at = next_due
                    break
                await self._step(claimed, now)
                recorder.commit()
        finally:
            try:
                await self._shutdown()
            finally:
                self.claimer.close()
                if ctx.store_thread is not None:
                    ctx.store_thread.close()
                    ctx.store_thread = None
        if recorder.fatal is not None:
            raise StoreError(f"{store.location}: cannot record outcomes: {recorder.fatal}")
        if dispatcher.crash is not None:
            crash = dispatcher.crash
            raise RuntimeError(
                f"a delivery worker failed ({type(crash).__name__}: {crash}); the run"
                " stopped, and the messages it had in flight went back to the queue"
            ) from crash
        summary = self.summary
        summary.stop_reason = reason
        summary.elapsed = clock.now() - self.started
        summary.remaining = self.claimer.remaining()
        if reason == "deferred" or summary.remaining:
            summary.next_attempt_at = store.next_due_at(ctx.claim_order)
        for cid in ctx.jobs:
            if cid in ctx.stopped:
                continue
            if store.remaining(cid) == 0:
                store.set_campaign_status(cid, "done", None, now=clock.now())
        summary.stopped_campaigns = {ctx.jobs[cid].name: why for cid, why in ctx.stopped.items()}
        summary.deferral_reasons = top_wait_kinds(store, ctx.jobs)
        summary.attention = attention(recorder.faults, summary.stopped_campaigns, sent=summary.sent)
        self._progress()
        return summary

    async def _step(self, claimed: list[dict[str, Any]], now: float) -> None:
        """One claimed batch: route it, render what may go, hand it to the connections."""
        suppressed = self.claimer.suppressed(claimed, now)
        await self.router.resolve(claimed, now)
        routed = self.router.route(claimed, suppressed, now)
        if not routed:
            return
        # The render processes take the batch whole. Rendered here, on the event loop, it
        # goes a few at a time, each few handed to the connections at once and the loop let
        # run between them: one whole batch at a time kept every connection waiting for its
        # replies (and the run's first connection unopened) while hundreds rendered.
        chunk = len(routed) if self.claimer.renders_elsewhere(len(routed)) else RENDER_CHUNK
        for start in range(0, len(routed), chunk):
            part = routed[start : start + chunk]
            rendered = await self.claimer.render([entry.message for entry in part])
            await self.dispatcher.send(part, rendered, now)
            await asyncio.sleep(0)  # replies are read, new workers start
            if self.dispatcher.connecting():
                # Each step of an opening (connect, greeting, EHLO) needs the loop: one turn
                # between chunks let the whole batch render first (20 ms for 256 messages).
                await asyncio.sleep(OPENING_TURN)

    async def _await_workers(self) -> None:
        """Wait until a worker is done with a message, or a stop. Not a poll on the clock:
        time must not pass while the work in flight is only waiting for the network."""
        finished, wake = self.dispatcher.finished, self.ctx.wake
        finished.clear()
        wake.clear()
        done = asyncio.ensure_future(finished.wait())
        woken = asyncio.ensure_future(wake.wait())
        await asyncio.wait({done, woken}, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        woken.cancel()

    async def _pause(self, seconds: float, until: float | None = None) -> None:
        """Sleep on the injected clock, waking early on stop."""
        clock, wake = self.ctx.clock, self.ctx.wake
        if until is not None:
            seconds = min(seconds, max(0.0, until - clock.now()))
        wake.clear()
        sleeper = asyncio.create_task(clock.sleep(seconds))
        waker = asyncio.create_task(wake.wait())
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        waker.cancel()

    async def _shutdown(self) -> None:
        """Release unsent claims, let in-flight messages finish (bounded), commit."""
        now = self.ctx.clock.now()
        cut = await self.dispatcher.close(now)
        # Anything still in flight was cut off mid-transaction: it may have been delivered.
        self.recorder.cut_off(cut, now)
        self.recorder.commit(force=True)
        # Sends granted to this run and not made go back to other runs; if the database is
        # away they stay spent for their day or hour (fewer messages, never more).
        with contextlib.suppress(StoreError):
            self.ctx.budget.give_back()


def top_wait_kinds(
    store: Store, campaign_ids: Iterable[int], limit: int = 5
) -> list[tuple[str, int]]:
    """Why the deferred messages of these campaigns wait, most common first."""
    counts: Counter[str] = Counter()
    for cid in campaign_ids:
        counts.update(dict(store.top_wait_kinds(cid, limit)))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The send loop makes many short-lived objects per message and few long-lived ones:
    the cyclic collector's default young-generation threshold (700) makes it scan the
    whole heap thousands of times a run. Freeze what exists and collect less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
