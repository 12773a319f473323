"""Taking due messages: claimed from the store for this run, then rendered for sending.

Claims go campaign by campaign in the run's order (transactional first); a claimed message
is `sending` until its outcome is committed. Rendering runs here or, for big runs, in
other processes (`RenderPool`). Imports the store and message rendering, not the CLI.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mailctl.config.campaign import Campaign
from mailctl.delivery.context import CampaignJob, SendContext
from mailctl.errors import TemplateError
from mailctl.message.render import RenderedMessage, Renderer
from mailctl.recipients.address import address_key

# After a claim came back short (the due queue is drained, or other senders took the rest),
# a run that still has messages going out asks the database again only after this long,
# not after every message that finishes: at the end of a campaign each of N senders would
# otherwise send one claim per message for the length of its backlog, each a round trip
# that holds up its event loop while the others still have mail to move.
CLAIM_RETRY_SECONDS = 0.5


class Claimer:
    """Due work of the run's active campaigns, and its rendering."""

    def __init__(self, ctx: SendContext) -> None:
        self.ctx = ctx
        self.render_pool: RenderPool | None = None
        self.claims = 0  # round trips to the store's claim
        self._retry_at: float | None = None  # set by a short claim

    async def claim(self, now: float, batch: int, *, busy: bool = False) -> list[dict[str, Any]]:
        """Up to ``batch`` due messages, now `sending` for this run.

        ``busy``: earlier claims are still being sent. Then, within `CLAIM_RETRY_SECONDS`
        of a short claim, nothing is claimed (the store is not asked). A run with nothing
        in flight always asks: it is about to finish or wait, and must see what fell due.
        With a store thread the claim runs there, and the connections keep sending."""
        if batch <= 0:
            return []
        if busy and self._retry_at is not None and now < self._retry_at:
            return []
        self.claims += 1
        campaigns, run_id = self.ctx.active(), self.ctx.run_id
        thread = self.ctx.store_thread
        if thread is None:
            claimed = self.ctx.store.claim_due(campaigns, now, run_id, batch)
        else:
            claimed = await thread.run(lambda store: store.claim_due(campaigns, now, run_id, batch))
        self._retry_at = now + CLAIM_RETRY_SECONDS if len(claimed) < batch else None
        return claimed

    def remaining(self) -> int:
        return sum(self.ctx.store.remaining(cid) for cid in self.ctx.jobs)

    def suppressed(self, claimed: Sequence[dict[str, Any]], now: float) -> set[str]:
        """Claimed addresses (as written) suppressed since they were queued (a bounce may
        have arrived): compared on their canonical keys, so no spelling slips through."""
        keys = {m["email"]: address_key(m["email"]) for m in claimed}
        hits = self.ctx.store.suppressed_set(set(keys.values()), now)
        return {email for email, key in keys.items() if key in hits}

    def start_render_pool(self) -> None:
        """Render in other processes when the run is big and the machine has a second core."""
        due = self.remaining()
        if (os.cpu_count() or 1) > 1 and due >= self.ctx.options.render_process_threshold:
            self.render_pool = RenderPool(list(self.ctx.jobs.values()))

    def close(self) -> None:
        if self.render_pool is not None:
            self.render_pool.close()

    def renders_elsewhere(self, count: int) -> bool:
        """Whether `render` of this many messages runs in the render processes (off the
        event loop) rather than here."""
        pool = self.render_pool
        return pool is not None and pool.ready and count > 16

    async def render(self, messages: list[dict[str, Any]]) -> list[RenderedMessage | str]:
        """Each message's bytes, or the template error that prevents it."""
        pool = self.render_pool
        if pool is not None and self.renders_elsewhere(len(messages)):
            try:
                return await pool.render(messages)
            except BrokenProcessPool:
                self.render_pool = None  # render here from now on: slower, never stuck
        return [self._render_here(message) for message in messages]

    def _render_here(self, message: dict[str, Any]) -> RenderedMessage | str:
        try:
            return self.ctx.jobs[message["campaign_id"]].renderer.render(
                message["email"], json.loads(message["fields_json"]), message["tracking_id"]
            )
        except TemplateError as exc:
            return str(exc)


# ---------------------------------------------------------------------- render process

_worker_renderers: dict[int, Renderer] = {}


# How often a render worker checks that the run that started it is still alive.
PARENT_POLL_SECONDS = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    """Exit this worker once its parent is gone (a `kill -9` of send skips every cleanup):
    an orphan would hold its memory, and keep multiprocessing's resource tracker alive, forever.
    Polling getppid works on every POSIX system, unlike Linux's parent-death signal."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(0)


def _init_render_worker(
    specs: dict[int, tuple[Campaign, dict[str, Any]]], parent_pid: int | None = None
) -> None:
    if parent_pid is not None:
        threading.Thread(
            target=_exit_when_orphaned, args=(parent_pid,), name="orphan-watch", daemon=True
        ).start()
    for campaign_id, (campaign, options) in specs.items():
        _worker_renderers[campaign_id] = Renderer(campaign, **options)


def _render_batch(batch: list[tuple[int, str, str, str]]) -> list[RenderedMessage | str]:
    results: list[RenderedMessage | str] = []
    for campaign_id, email, fields_json, tracking_id in batch:
        try:
            fields = json.loads(fields_json)
            results.append(_worker_renderers[campaign_id].render(email, fields, tracking_id))
        except TemplateError as exc:
            results.append(str(exc))
    return results


class RenderPool:
    """Templates rendered (and DKIM-signed) in other processes, batch by batch, while SMTP
    runs here. Signing costs several times the rendering, so it gets two workers."""

    def __init__(self, jobs: Sequence[CampaignJob]) -> None:
        specs = {job.campaign_id: (job.campaign, job.renderer.spec()) for job in jobs}
        signing = any(job.renderer.dkim is not None for job in jobs)
        self.workers = 2 if signing and (os.cpu_count() or 1) > 1 else 1
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a running loop
            initializer=_init_render_worker,
            initargs=(specs, os.getpid()),
        )
        # Starting the workers (a new interpreter, imports) takes a few hundred ms: the run
        # renders in-process until they answer, instead of waiting for them.
        self._warm = [self._executor.submit(_render_batch, []) for _ in range(self.workers)]

    @property
    def ready(self) -> bool:
        return all(future.done() for future in self._warm)

    async def render(self, messages: Sequence[dict[str, Any]]) -> list[RenderedMessage | str]:
        batch = [
            (m["campaign_id"], m["email"], m["fields_json"], m["tracking_id"]) for m in messages
        ]
        loop = asyncio.get_running_loop()
        size = -(-len(batch) // self.workers)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, _render_batch, batch[i : i + size])
                for i in range(0, len(batch), size)
            )
        )
        return [result for part in parts for result in part]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
