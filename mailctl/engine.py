"""The send loop: claims due messages, renders, delivers through lanes, records outcomes.

Outcomes are committed in batches; a message is never recorded as sent before its 250.
A run that dies leaves its claimed messages in `sending`; the next run (holding the lock,
so certain the old run is gone) returns them to the queue as possible duplicates.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailctl.classify import Scope, classify_reply, parse_reply_delay
from mailctl.config import Campaign, Profile, TransportKind
from mailctl.errors import TemplateError
from mailctl.render import RenderedMessage, Renderer
from mailctl.store import Store
from mailctl.transport import Connection, Destination, Reply, relay_destination


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass(frozen=True)
class SendOptions:
    limit: int | None = None
    max_time: float | None = None
    # Wait for deferred messages that fall due before --max-time ends (default: only when
    # a max time is given; without one, a run ends when all remaining work is deferred).
    wait: bool | None = None
    claim_batch: int = 256
    commit_interval: float = 0.25
    stop_grace: float = 30.0
    heartbeat_interval: float = 5.0
    queue_per_connection: int = 64
    # Render in a separate process when a run has at least this many messages due and the
    # machine has a second core: the event loop then spends its core on SMTP alone.
    render_process_threshold: int = 2000


@dataclass
class CampaignJob:
    """One campaign in this run, with everything needed to send it."""

    campaign_id: int
    campaign: Campaign
    profile: Profile
    pool: str
    renderer: Renderer
    transactional: bool = False

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def max_age(self) -> float:
        return self.campaign.max_age or self.profile.max_age


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed message; committed in batches."""

    message_id: int
    campaign_id: int
    email: str
    state: str  # sent, deferred, bounced, failed, expired, suppressed, queued (released)
    attempted: bool
    at: float
    next_attempt_at: float
    ip: str | None = None
    provider: str | None = None
    code: int | None = None
    reply: str | None = None
    reason: str | None = None
    rule: str | None = None
    status: str | None = None
    suppress: bool = False
    scope: str | None = None


@dataclass
class Item:
    message: dict[str, Any]
    job: CampaignJob
    rendered: RenderedMessage


@dataclass
class LaneStats:
    """Counters for one lane (sending IP x destination group) shown in progress."""

    ip: str
    provider: str
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    failed: int = 0
    state: str = "normal"
    until: float | None = None
    reason: str | None = None


@dataclass
class _Group:
    """Connections from one sending IP to one destination, fed by one queue."""

    key: str
    ip: str
    destination: Destination
    connections: int
    messages_per_connection: int
    queue: asyncio.Queue[Item | None]
    paused_until: float = 0.0
    failures: int = 0
    workers: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class RunSummary:
    campaigns: list[str]
    queued: int = 0
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    failed: int = 0
    expired: int = 0
    suppressed: int = 0
    remaining: int = 0
    recovered: int = 0
    elapsed: float = 0.0
    stop_reason: str = "finished"
    next_attempt_at: float | None = None
    stopped_campaigns: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaigns[0] if len(self.campaigns) == 1 else self.campaigns,
            "queued": self.queued,
            "sent": self.sent,
            "deferred": self.deferred,
            "bounced": self.bounced,
            "failed": self.failed,
            "expired": self.expired,
            "suppressed": self.suppressed,
            "remaining": self.remaining,
            "possible_duplicates_recovered": self.recovered,
            "elapsed": round(self.elapsed, 3),
            "stop_reason": self.stop_reason,
            "next_attempt_at": self.next_attempt_at,
        }


ProgressCallback = Callable[["Engine"], None]


def provider_of(domain: str) -> str:
    """The group a recipient domain belongs to (the reputation layer maps MX to providers)."""
    return domain


class Engine:
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
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.jobs = {job.campaign_id: job for job in jobs}
        # Transactional campaigns are claimed first when both kinds run together.
        self.claim_order = [
            job.campaign_id for job in sorted(jobs, key=lambda j: (not j.transactional, j.name))
        ]
        self.run_id = run_id
        self.clock = clock or RealClock()
        self.options = options or SendOptions()
        self.sandbox_port = sandbox_port
        self.on_progress = on_progress
        self.rng = rng or random.Random()
        self.summary = RunSummary(campaigns=[job.name for job in jobs])
        self.lanes: dict[tuple[str, str], LaneStats] = {}
        self.total_due = 0
        self.attempted = 0
        self._pending: list[Outcome] = []
        self._in_flight: dict[int, Item] = {}
        self._groups: dict[str, _Group] = {}
        self._pool_cycle: dict[tuple[str, str], itertools.cycle[str]] = {}
        self._stop = asyncio.Event()
        self._force = False
        self._wake = asyncio.Event()
        self._last_commit = 0.0
        self._last_heartbeat = 0.0
        self.started = 0.0
        self._render_pool: RenderPool | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """First call: stop claiming, finish in-flight work. Second call: stop at once."""
        if self._stop.is_set():
            self._force = True
            for group in self._groups.values():
                for task in group.workers:
                    task.cancel()
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ groups and lanes

    def _group_for(self, job: CampaignJob) -> _Group:
        ips = [ip.ip for ip in job.profile.pools[job.pool]]
        cycle_key = (job.profile.name, job.pool)
        if cycle_key not in self._pool_cycle:
            self._pool_cycle[cycle_key] = itertools.cycle(ips)
        ip = next(self._pool_cycle[cycle_key])
        key = f"{job.profile.name}/{ip}"
        group = self._groups.get(key)
        if group is None:
            destination = relay_destination(job.profile, ip, self.sandbox_port)
            profile = job.profile
            group = _Group(
                key=key,
                ip=ip,
                destination=destination,
                connections=profile.connections,
                messages_per_connection=profile.messages_per_connection,
                queue=asyncio.Queue(
                    maxsize=profile.connections * self.options.queue_per_connection
                ),
            )
            self._groups[key] = group
            group.workers = [
                asyncio.create_task(self._worker(group)) for _ in range(group.connections)
            ]
        return group

    def _lane(self, ip: str, provider: str) -> LaneStats:
        lane = self.lanes.get((ip, provider))
        if lane is None:
            lane = self.lanes[(ip, provider)] = LaneStats(ip=ip, provider=provider)
        return lane

    # ------------------------------------------------------------------ the loop

    async def run(self) -> RunSummary:
        clock = self.clock
        self.started = clock.now()
        deadline = self.started + self.options.max_time if self.options.max_time else None
        wait = self.options.wait if self.options.wait is not None else deadline is not None
        reason = "finished"
        ticker = asyncio.create_task(self._ticker())
        due = sum(self.store.remaining(cid) for cid in self.jobs)
        if (os.cpu_count() or 1) > 1 and due >= self.options.render_process_threshold:
            self._render_pool = RenderPool(list(self.jobs.values()))
        try:
            while True:
                if self._stop.is_set():
                    reason = "interrupted"
                    break
                if self.options.limit is not None and self.attempted >= self.options.limit:
                    # The last claims are already queued to connections: let them go out.
                    while self._busy() and not self._stop.is_set():
                        await self._pause(0.02)
                    reason = "limit"
                    break
                now = clock.now()
                if deadline is not None and now >= deadline:
                    reason = "max-time"
                    break
                batch = self.options.claim_batch
                if self.options.limit is not None:
                    batch = min(batch, self.options.limit - self.attempted)
                claimed = self._claim(now, batch)
                if not claimed:
                    if self._busy():
                        await self._pause(0.05)
                        continue
                    self._commit(force=True)
                    next_due = self.store.next_due_at(self.claim_order)
                    if next_due is None:
                        reason = "finished"
                        break
                    if wait and (deadline is None or next_due < deadline):
                        await self._pause(max(0.0, next_due - clock.now()), until=deadline)
                        continue
                    reason = "deferred"
                    self.summary.next_attempt_at = next_due
                    break
                await self._dispatch(claimed, now)
                self._commit()
        finally:
            await self._shutdown()
            ticker.cancel()
            if self._render_pool is not None:
                self._render_pool.close()
        self.summary.stop_reason = reason
        self.summary.elapsed = clock.now() - self.started
        self.summary.remaining = sum(self.store.remaining(cid) for cid in self.jobs)
        if reason == "deferred" or self.summary.remaining:
            self.summary.next_attempt_at = self.store.next_due_at(self.claim_order)
        for cid in self.jobs:
            if self.store.remaining(cid) == 0:
                self.store.set_campaign_status(cid, "done", None, now=clock.now())
        if self.on_progress:
            self.on_progress(self)
        return self.summary

    def _claim(self, now: float, batch: int) -> list[dict[str, Any]]:
        if batch <= 0:
            return []
        return self.store.claim_due(self.claim_order, now, self.run_id, batch)

    def _busy(self) -> bool:
        return bool(self._in_flight) or any(not g.queue.empty() for g in self._groups.values())

    async def _pause(self, seconds: float, until: float | None = None) -> None:
        """Sleep on the injected clock, waking early on stop."""
        if until is not None:
            seconds = min(seconds, max(0.0, until - self.clock.now()))
        self._wake.clear()
        sleeper = asyncio.create_task(self.clock.sleep(seconds))
        waker = asyncio.create_task(self._wake.wait())
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        waker.cancel()

    async def _dispatch(self, claimed: list[dict[str, Any]], now: float) -> None:
        suppressed = self.store.suppressed_set([m["email"] for m in claimed], now)
        to_render = []
        for message in claimed:
            if message["email"] in suppressed:
                # Checked again just before delivery: a bounce may have arrived meanwhile.
                self._record(self._outcome_for(message, "suppressed", now, attempted=False))
            else:
                to_render.append(message)
        rendered: list[RenderedMessage | str] | None = None
        if self._render_pool is not None and len(to_render) > 16:
            try:
                rendered = await self._render_pool.render(to_render)
            except BrokenProcessPool:
                self._render_pool = None  # render here from now on: slower, never stuck
        if rendered is None:
            rendered = [self._render_here(message) for message in to_render]
        for message, result in zip(to_render, rendered, strict=True):
            if isinstance(result, str):
                self._record(
                    self._outcome_for(
                        message, "failed", now, attempted=False, reply=result, reason="template"
                    )
                )
                continue
            if self._stop.is_set():
                self._record(self._outcome_for(message, "queued", now, attempted=False))
                continue
            job = self.jobs[message["campaign_id"]]
            await self._group_for(job).queue.put(Item(message, job, result))
            self.attempted += 1

    def _render_here(self, message: dict[str, Any]) -> RenderedMessage | str:
        try:
            return self.jobs[message["campaign_id"]].renderer.render(
                message["email"], message["fields"], message["tracking_id"]
            )
        except TemplateError as exc:
            return str(exc)

    def _outcome_for(
        self, message: dict[str, Any], state: str, now: float, *, attempted: bool, **extra: Any
    ) -> Outcome:
        return Outcome(
            message_id=message["id"],
            campaign_id=message["campaign_id"],
            email=message["email"],
            state=state,
            attempted=attempted,
            at=now,
            next_attempt_at=extra.pop("next_attempt_at", now),
            **extra,
        )

    # ------------------------------------------------------------------ workers

    async def _worker(self, group: _Group) -> None:
        connection: Connection | None = None
        try:
            while True:
                item = await group.queue.get()
                if item is None:
                    break
                message = item.message
                self._in_flight[message["id"]] = item
                try:
                    now = self.clock.now()
                    provider = provider_of(message["domain"])
                    if group.paused_until > now or self._stop.is_set():
                        # mailctl's own deferral: no attempt, no reply, never feeds a rule.
                        state = "queued" if self._stop.is_set() else "deferred"
                        self._record(
                            self._outcome_for(
                                message,
                                state,
                                now,
                                attempted=False,
                                next_attempt_at=max(group.paused_until, now),
                                ip=group.ip,
                                provider=provider,
                            )
                        )
                        continue
                    if (
                        connection is None
                        or not connection.alive
                        or connection.messages >= group.messages_per_connection
                    ):
                        if connection is not None:
                            await connection.close()
                        connection = Connection(group.destination)
                        failure = await connection.open()
                        if failure is not None:
                            connection = None
                            self._connection_failed(group)
                            self._record(self._classify(item, failure, group.ip, provider))
                            continue
                        group.failures = 0
                    reply = await connection.send(
                        item.rendered.envelope_from, item.rendered.recipient, item.rendered.data
                    )
                    self._record(self._classify(item, reply, group.ip, provider))
                finally:
                    self._in_flight.pop(message["id"], None)
        except asyncio.CancelledError:
            pass
        finally:
            if connection is not None:
                await connection.close()

    def _connection_failed(self, group: _Group) -> None:
        # Back off the whole group so a refusing server is not hammered: 1 s doubling to 5 min.
        group.failures += 1
        delay = min(300.0, 2.0 ** (group.failures - 1)) * self.rng.uniform(0.8, 1.2)
        group.paused_until = self.clock.now() + delay

    def _classify(self, item: Item, reply: Reply, ip: str, provider: str) -> Outcome:
        message, job = item.message, item.job
        now = self.clock.now()
        base = {"ip": ip, "provider": provider, "code": reply.code, "reply": reply.text}
        if reply.ok:
            return self._outcome_for(message, "sent", now, attempted=True, **base)
        verdict = classify_reply(reply.code, reply.text, provider) if reply.code else None
        details = (
            {
                "reason": verdict.reason,
                "rule": verdict.rule,
                "status": verdict.status,
                "scope": verdict.scope.value,
            }
            if verdict
            else {"reason": "networkerror", "rule": "connection"}
        )
        permanent = (
            verdict is not None
            and reply.code is not None
            and reply.code >= 500
            and verdict.permanent
        )
        if permanent and verdict is not None:
            if verdict.scope is Scope.RECIPIENT:
                return self._outcome_for(
                    message,
                    "bounced",
                    now,
                    attempted=True,
                    suppress=verdict.suppress,
                    **base,
                    **details,
                )
            if verdict.scope is Scope.CAMPAIGN:
                return self._outcome_for(message, "failed", now, attempted=True, **base, **details)
        # Temporary, or a throttle/block about this sending IP: try again later.
        attempts = message["attempts"] + 1
        named = parse_reply_delay(reply.text) if reply.code else None
        if named:
            delay = float(named)
        else:
            delays = job.profile.retry_delays
            delay = delays[min(attempts - 1, len(delays) - 1)] * self.rng.uniform(0.85, 1.15)
        next_at = now + delay
        if next_at > message["queued_at"] + job.max_age:
            return self._outcome_for(message, "expired", now, attempted=True, **base, **details)
        return self._outcome_for(
            message, "deferred", now, attempted=True, next_attempt_at=next_at, **base, **details
        )

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        s = self.summary
        state = outcome.state
        if state == "sent":
            s.sent += 1
        elif state == "deferred":
            s.deferred += 1
        elif state == "bounced":
            s.bounced += 1
        elif state == "failed":
            s.failed += 1
        elif state == "expired":
            s.expired += 1
        elif state == "suppressed":
            s.suppressed += 1
        if outcome.ip is not None and outcome.provider is not None and state != "queued":
            lane = self._lane(outcome.ip, outcome.provider)
            if state == "sent":
                lane.sent += 1
            elif state == "deferred":
                lane.deferred += 1
            elif state == "bounced":
                lane.bounced += 1
            elif state in ("failed", "expired"):
                lane.failed += 1
        if len(self._pending) >= 2000:
            self._commit(force=True)

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._pending or (
            not force and now - self._last_commit < self.options.commit_interval
        ):
            return
        pending, self._pending = self._pending, []
        released = [o.message_id for o in pending if o.state == "queued"]
        self.store.record_outcomes([o for o in pending if o.state != "queued"])
        self.store.release(released)
        self._last_commit = now
        if now - self._last_heartbeat >= self.options.heartbeat_interval:
            self.store.heartbeat(self.run_id, self.clock.now())
            self._last_heartbeat = now

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval)
            self._commit()
            if self.on_progress:
                self.on_progress(self)

    async def _shutdown(self) -> None:
        """Release unsent claims, let in-flight messages finish (bounded), commit."""
        now = self.clock.now()
        for group in self._groups.values():
            while not group.queue.empty():
                item = group.queue.get_nowait()
                if item is not None:
                    self._record(self._outcome_for(item.message, "queued", now, attempted=False))
                    self.attempted -= 1
            for _ in group.workers:
                group.queue.put_nowait(None)
        workers = [task for group in self._groups.values() for task in group.workers]
        if workers:
            done, pending = await asyncio.wait(workers, timeout=self.options.stop_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        # Anything still in flight was cut off mid-transaction: it may have been delivered.
        for item in list(self._in_flight.values()):
            self._record(self._outcome_for(item.message, "queued", now, attempted=False))
        if self._in_flight:
            self.store.conn.executemany(
                "UPDATE messages SET possible_duplicate = 1 WHERE id = ?",
                [(mid,) for mid in self._in_flight],
            )
        self._commit(force=True)


# ---------------------------------------------------------------------- render process

_worker_renderers: dict[int, Renderer] = {}


def _init_render_worker(specs: dict[int, tuple[Campaign, str | None, bool]]) -> None:
    for campaign_id, (campaign, bounce_domain, verp) in specs.items():
        _worker_renderers[campaign_id] = Renderer(campaign, bounce_domain=bounce_domain, verp=verp)


def _render_batch(batch: list[tuple[int, str, dict[str, Any], str]]) -> list[RenderedMessage | str]:
    results: list[RenderedMessage | str] = []
    for campaign_id, email, fields, tracking_id in batch:
        try:
            results.append(_worker_renderers[campaign_id].render(email, fields, tracking_id))
        except TemplateError as exc:
            results.append(str(exc))
    return results


class RenderPool:
    """Templates rendered in a second process, batch by batch, while SMTP runs here."""

    def __init__(self, jobs: Sequence[CampaignJob]) -> None:
        specs = {
            job.campaign_id: (job.campaign, job.renderer.bounce_domain, job.renderer.verp)
            for job in jobs
        }
        self._executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a running loop
            initializer=_init_render_worker,
            initargs=(specs,),
        )

    async def render(self, messages: Sequence[dict[str, Any]]) -> list[RenderedMessage | str]:
        batch = [(m["campaign_id"], m["email"], m["fields"], m["tracking_id"]) for m in messages]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _render_batch, batch)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def destination_is_sandbox(profile: Profile) -> bool:
    return profile.transport is TransportKind.SANDBOX
