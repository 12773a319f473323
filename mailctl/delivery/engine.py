"""The send loop: claims due messages, renders, delivers through lanes, records outcomes.

Outcomes are committed in batches; a message is never recorded as sent before its 250.
A run that dies leaves its claimed messages in `sending`; the next run (holding the lock,
so certain the old run is gone) returns them to the queue as possible duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mailctl.config.campaign import Campaign
from mailctl.config.profiles import Profile, TlsMode, TransportKind
from mailctl.config.provider_rules import Scope, TlsPolicy
from mailctl.delivery.transport import Connection, Destination, Reply, relay_destination
from mailctl.dns.providers import (
    DirectAction,
    DomainRoute,
    RouteStatus,
    normalise_domain,
    resolve_domains,
    route_for_override,
    unresolved_route,
)
from mailctl.errors import StoreError, TemplateError
from mailctl.message.render import RenderedMessage, Renderer
from mailctl.replies.classify import classify_reply, parse_reply_delay
from mailctl.replies.rules import load_rules
from mailctl.reputation.budget import WarmupBudget, profile_settings
from mailctl.reputation.lanes import (
    BreakerPolicy,
    BreakerState,
    LaneEvent,
    LaneEventKind,
    LaneState,
    Scheduler,
    check_breaker,
)
from mailctl.reputation.signals import ip_day_counts, smtp_suppressions
from mailctl.store.base import Store


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


@dataclass(slots=True)
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
    day: str | None = None  # the sending IP's local day (its warm-up cap's day)


@dataclass
class Item:
    message: dict[str, Any]
    job: CampaignJob
    rendered: RenderedMessage
    ip: str
    provider: str


@dataclass
class LaneStats:
    """Counters for one lane (sending IP x destination group) shown in progress."""

    ip: str
    provider: str
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    failed: int = 0


@dataclass
class _Group:
    """Connections from one sending IP to one destination, fed by one queue.

    Relay and sandbox: one group per (profile, IP), shared by all provider lanes (the lanes
    shape the rate; the smarthost gets the connections). Direct: one group per (IP,
    provider, MX hosts), and the lane's connection cap applies.
    """

    key: tuple[str, ...]
    ip: str
    destination: Destination
    connections: int
    messages_per_connection: int
    queue: asyncio.Queue[Item | None]
    lane_capped: bool = False
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
            "stopped_campaigns": self.stopped_campaigns,  # name -> why a breaker/rule stopped it
            "next_attempt_at": self.next_attempt_at,
        }


ProgressCallback = Callable[["Engine"], None]


class StoreRouteCache:
    """providers.RouteCache over the mx_cache table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, domain: str, now: float) -> DomainRoute | None:
        row = self.store.cached_route(domain, now)
        return None if row is None else DomainRoute.from_row(row)

    def put(self, route: DomainRoute) -> None:
        if route.status is not RouteStatus.TIMEOUT:  # a timeout is not an answer
            self.store.cache_route(route.to_row())


def _pace(limits: Any) -> float:
    """Seconds between two messages at a lane's current rate (0: no rate limit)."""
    gaps = [
        window / rate
        for window, rate in (
            (60, limits.per_minute),
            (3600, limits.per_hour),
            (86400, limits.per_day),
        )
        if rate
    ]
    return max(gaps) if gaps else 0.0


EventCallback = Callable[[str], None]
# A lane wait shorter than this is slept through by the worker; longer ones defer the message.
SHORT_WAIT = 2.0


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
        on_event: EventCallback | None = None,
        rng: random.Random | None = None,
        resolver: Any = None,
        scheduler: Scheduler | None = None,
        budget: WarmupBudget | None = None,
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
        self.on_event = on_event
        self.rng = rng or random.Random()
        self.resolver = resolver
        profiles = {job.profile.name: job.profile for job in jobs}
        if scheduler is None:
            # One rule set per run: the first profile's overrides (lanes are per IP, and an
            # IP belongs to one profile).
            first = next(iter(profiles.values()), None)
            rules = load_rules(first.rules if first else None)
            states = [LaneState.from_row(row) for row in store.lane_rows()]
            scheduler = Scheduler(rules, rng=self.rng, states=states)
        self.scheduler = scheduler
        if budget is None:
            budget = WarmupBudget(store, profile_settings(*profiles.values()))
        self.budget = budget
        self.summary = RunSummary(campaigns=[job.name for job in jobs])
        self.lanes: dict[tuple[str, str], LaneStats] = {}
        self.attempted = 0
        self._pending: list[Outcome] = []
        self._in_flight: dict[int, Item] = {}
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._open: dict[tuple[str, str], int] = {}  # open connections per lane (direct)
        self._freed: dict[tuple[str, str], asyncio.Event] = {}  # a lane connection closed
        # Workers holding a message while they wait for a lane connection slot, per lane.
        self._slot_waiters: Counter[tuple[str, str]] = Counter()
        self._slot_wanted: dict[tuple[str, str], asyncio.Event] = {}
        self._next_slot: dict[tuple[str, str], float] = {}
        self._sent_by_lane: Counter[tuple[str, str]] = Counter()
        self._last_lane_event: dict[tuple[str, str, str, str | None], float] = {}
        self._suppressed_in_run: set[str] = set()
        self._cut_by_force: list[Item] = []
        self._fatal: BaseException | None = None
        # Messages deferred to a cold IP's later window slots in this run, per lane.
        self._window_waiting: dict[int, tuple[str, str]] = {}
        self._window_waiting_count: dict[tuple[str, str], int] = {}
        self._window_slot: dict[tuple[str, str], float] = {}
        self._routes: dict[tuple[str, str], DomainRoute] = {}
        self._route_cache = StoreRouteCache(store)
        self._stopped: dict[int, str] = {}
        self._breakers: dict[int, BreakerState] = {}
        for cid in self.jobs:
            counts = store.message_counts(cid)
            self._breakers[cid] = BreakerState(
                sent=counts["sent"] + counts["bounced"] + counts["complained"],
                bounced=counts["bounced"],
                complained=counts["complained"],
            )
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
            now = self.clock.now()
            self._cut_by_force = list(self._in_flight.values())  # before they unwind
            for group in self._groups.values():
                for task in group.workers:
                    task.cancel()
                # No worker will take these any more: release them now, so a dispatcher
                # blocked on a full queue goes on (and releases the rest itself).
                while not group.queue.empty():
                    item = group.queue.get_nowait()
                    if item is not None:
                        self.budget.release(item.ip, item.provider)
                        self._record(
                            self._outcome_for(item.message, "queued", now, attempted=False)
                        )
                        self.attempted -= 1
        self._stop.set()
        self._wake.set()

    def _say(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    # ------------------------------------------------------------------ routing

    async def _resolve(self, messages: Sequence[dict[str, Any]], now: float) -> None:
        """Routes for the batch's domains, per profile (MX rollup, cached with its TTL)."""
        wanted: dict[str, set[str]] = {}
        for message in messages:
            profile = self.jobs[message["campaign_id"]].profile
            domain = message["domain"]
            if (profile.name, domain) not in self._routes:
                wanted.setdefault(profile.name, set()).add(domain)
        for profile_name, domains in wanted.items():
            profile = next(j.profile for j in self.jobs.values() if j.profile.name == profile_name)
            lookups = profile.dns and profile.transport is not TransportKind.SANDBOX
            if not lookups and not profile.mx_override:
                for domain in domains:
                    self._routes[(profile_name, domain)] = unresolved_route(
                        normalise_domain(domain), now, "lookups off"
                    )
                continue
            resolver = self.resolver
            if resolver is None and lookups:
                from mailctl.dns.providers import DnsPythonMxResolver

                resolver = self.resolver = DnsPythonMxResolver()
            if lookups:
                routes = await resolve_domains(
                    domains,
                    resolver,
                    now=now,
                    cache=self._route_cache,
                    mx_override=profile.mx_override,
                )
            else:  # lookups off: only the profile's overrides say where a domain goes
                overrides = {normalise_domain(k): v for k, v in profile.mx_override.items()}
                routes = {
                    key: route_for_override(key, overrides[key], now)
                    for key in map(normalise_domain, domains)
                    if key in overrides
                }
            for domain in domains:
                self._routes[(profile_name, domain)] = routes.get(
                    normalise_domain(domain)
                ) or unresolved_route(normalise_domain(domain), now, "lookups off")

    def _provider(self, job: CampaignJob, route: DomainRoute) -> str:
        if job.profile.transport is TransportKind.DIRECT:
            return route.provider
        return route.relay_group()

    def _capacity(self, now: float) -> Callable[[str, str], int | None]:
        """What is left of each IP's day for routing: a cold IP keeps its share of the day
        (minus the messages already waiting for its window slots); only the excess spills."""

        def left(ip: str, provider: str) -> int | None:
            today = self.budget.remaining_today(ip, provider, now)
            if today is None:
                return None
            return today - self._window_waiting_count.get((ip, provider), 0)

        return left

    def _group_for(self, job: CampaignJob, ip: str, provider: str, route: DomainRoute) -> _Group:
        profile = job.profile
        direct = profile.transport is TransportKind.DIRECT
        key: tuple[str, ...] = (
            (profile.name, ip, provider, *route.hosts) if direct else (profile.name, ip)
        )
        group = self._groups.get(key)
        if group is not None:
            return group
        sending_ip = next(s for s in profile.pools[job.pool] if s.ip == ip)
        if direct:
            limits = self.scheduler.rules.limits_for(provider)
            destination = Destination(
                name=f"{route.hosts[0]}:{route.port}",
                host=route.hosts[0],
                port=route.port,
                fallback_hosts=route.hosts[1:],
                tls=TlsMode.STARTTLS,  # opportunistic unless the provider's rules require it
                tls_required=limits.tls is TlsPolicy.REQUIRED,
                helo=sending_ip.helo or profile.helo,
                source_ip=ip,
                timeout=profile.timeout,
                validate_certs=False,  # MX certificates rarely match; TLS still encrypts
            )
            connections = limits.connections
            per_connection = limits.messages_per_connection
        else:
            destination = relay_destination(profile, ip, self.sandbox_port)
            connections = profile.connections
            per_connection = profile.messages_per_connection
        group = _Group(
            key=key,
            ip=ip,
            destination=destination,
            connections=connections,
            messages_per_connection=per_connection,
            queue=asyncio.Queue(maxsize=max(connections, 1) * self.options.queue_per_connection),
            lane_capped=direct,
        )
        self._groups[key] = group
        group.workers = [asyncio.create_task(self._worker(group)) for _ in range(connections)]
        return group

    def _lane(self, ip: str, provider: str) -> LaneStats:
        lane = self.lanes.get((ip, provider))
        if lane is None:
            lane = self.lanes[(ip, provider)] = LaneStats(ip=ip, provider=provider)
        return lane

    # ------------------------------------------------------------------ the loop

    async def run(self) -> RunSummary:
        """Send until done, stopped, out of time or out of due work; return the summary."""
        with _fewer_collections():
            return await self._run()

    async def _run(self) -> RunSummary:
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
                if not self._active():
                    reason = "campaign stopped"
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
                    next_due = self.store.next_due_at(self._active())
                    if next_due is None:
                        reason = "finished"
                        break
                    if wait and (deadline is None or next_due < deadline):
                        self._say(f"all remaining work waits; next attempt at {_hms(next_due)}")
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
        if self._fatal is not None:
            raise StoreError(f"{self.store.location}: cannot record outcomes: {self._fatal}")
        self.summary.stop_reason = reason
        self.summary.elapsed = clock.now() - self.started
        self.summary.remaining = sum(self.store.remaining(cid) for cid in self.jobs)
        if reason == "deferred" or self.summary.remaining:
            self.summary.next_attempt_at = self.store.next_due_at(self.claim_order)
        for cid in self.jobs:
            if cid in self._stopped:
                continue
            if self.store.remaining(cid) == 0:
                self.store.set_campaign_status(cid, "done", None, now=clock.now())
        self.summary.stopped_campaigns = {
            self.jobs[cid].name: why for cid, why in self._stopped.items()
        }
        if self.on_progress:
            self.on_progress(self)
        return self.summary

    def _active(self) -> list[int]:
        return [cid for cid in self.claim_order if cid not in self._stopped]

    def _claim(self, now: float, batch: int) -> list[dict[str, Any]]:
        if batch <= 0:
            return []
        return self.store.claim_due(self._active(), now, self.run_id, batch)

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
        await self._resolve(claimed, now)
        routed: list[tuple[dict[str, Any], str, str, DomainRoute]] = []
        capacity = self._capacity(now)
        for message in claimed:
            job = self.jobs[message["campaign_id"]]
            waiting = self._window_waiting.pop(message["id"], None)
            if waiting is not None:  # its window slot has come: it no longer holds a place
                self._window_waiting_count[waiting] -= 1
            if message["email"] in suppressed:
                # Checked again just before delivery: a bounce may have arrived meanwhile.
                self._record(self._outcome_for(message, "suppressed", now, attempted=False))
                continue
            route = self._routes[(job.profile.name, message["domain"])]
            if route.status is RouteStatus.TIMEOUT:
                del self._routes[(job.profile.name, message["domain"])]  # ask again next batch
            provider = self._provider(job, route)
            if job.profile.transport is TransportKind.DIRECT:
                action = route.direct_action()
                if action is DirectAction.FAIL:
                    # NXDOMAIN or a null MX: no server will ever take it; never connect.
                    reason = route.failure_reason() or "hostunknown"
                    self._record(
                        self._outcome_for(
                            message,
                            "bounced",
                            now,
                            attempted=True,
                            provider=provider,
                            reply=f"{route.domain}: {route.status.value} {route.detail}".strip(),
                            reason=reason,
                            rule=f"dns.{route.status.value}",
                            scope="recipient",
                            suppress=True,
                            status="5.1.2" if reason == "hostunknown" else "5.1.10",
                        )
                    )
                    continue
                if action is DirectAction.DEFER:
                    self._defer_self(
                        message,
                        now,
                        now + job.profile.retry_delays[0],
                        provider=provider,
                        why="DNS lookup timed out",
                    )
                    continue
            pool = [s.ip for s in job.profile.pools[job.pool]]
            # An open lane with capacity; one that is only pacing is fine: the worker
            # waits for its slot.
            ip = self.scheduler.pick_ip(pool, provider, now, capacity)
            if ip is None:
                self._defer_self(
                    message,
                    now,
                    self._capacity_returns(pool, provider, now),
                    provider=provider,
                    why="no IP of the pool may send now",
                    may_expire=False,  # warm-up caps and pauses never cost a message
                )
                continue
            allowed = self.budget.remaining(ip, provider, now)
            if allowed is not None and allowed <= 0:
                # The IP keeps this message for a later slot of its window: spread, no burst.
                key = (ip, provider)
                slot = max(
                    self.budget.capacity_returns(ip, provider, now),
                    self._window_slot.get(key, 0.0),
                )
                self._window_slot[key] = slot + self.budget.window_pace(ip, now)
                self._window_waiting[message["id"]] = key
                self._window_waiting_count[key] = self._window_waiting_count.get(key, 0) + 1
                self._defer_self(
                    message,
                    now,
                    slot,
                    provider=provider,
                    ip=ip,
                    why=f"warm-up: {ip} sends its next message at its window slot",
                    may_expire=False,
                )
                continue
            self.budget.reserve(ip, provider)
            routed.append((message, ip, provider, route))
        if not routed:
            return
        messages = [m for m, *_ in routed]
        rendered: list[RenderedMessage | str] | None = None
        if self._render_pool is not None and self._render_pool.ready and len(messages) > 16:
            try:
                rendered = await self._render_pool.render(messages)
            except BrokenProcessPool:
                self._render_pool = None  # render here from now on: slower, never stuck
        if rendered is None:
            rendered = [self._render_here(message) for message in messages]
        for (message, ip, provider, route), result in zip(routed, rendered, strict=True):
            if isinstance(result, str):
                self.budget.release(ip, provider)
                self._record(
                    self._outcome_for(
                        message, "failed", now, attempted=False, reply=result, reason="template"
                    )
                )
                continue
            if self._stop.is_set() or message["campaign_id"] in self._stopped:
                self.budget.release(ip, provider)
                self._record(self._outcome_for(message, "queued", now, attempted=False))
                continue
            job = self.jobs[message["campaign_id"]]
            group = self._group_for(job, ip, provider, route)
            await group.queue.put(Item(message, job, result, ip, provider))
            self.attempted += 1

    def _capacity_returns(self, pool: list[str], provider: str, now: float) -> float:
        moments = []
        left = self._capacity(now)
        for ip in pool:
            lane_ready = now + self.scheduler.lane(ip, provider).pause_wait(now)
            today = left(ip, provider)
            if today is not None and today <= 0:
                # The day's cap is used up (or promised to messages waiting for their slots).
                returns = self.budget.next_day_opens(ip, now)
            else:
                returns = self.budget.capacity_returns(ip, provider, now)
            moments.append(max(lane_ready, returns))
        finite = [m for m in moments if m != float("inf")]
        return min(finite) if finite else now + 3600

    def _defer_self(
        self,
        message: dict[str, Any],
        now: float,
        until: float,
        *,
        provider: str | None,
        why: str,
        ip: str | None = None,
        may_expire: bool = True,
    ) -> None:
        """mailctl's own deferral: no attempt, no reply, never feeds a rule.

        A message that cannot go anywhere (DNS failing, its lane disabled) still expires at
        its maximum age; one waiting for warm-up capacity (``may_expire=False``) never does.
        """
        if until == float("inf"):
            until = now + 3600
        if may_expire:
            job = self.jobs[message["campaign_id"]]
            first = message.get("first_attempt_at") or message["queued_at"]
            if until > first + job.max_age:
                self._record(
                    self._outcome_for(
                        message,
                        "expired",
                        now,
                        attempted=False,
                        ip=ip,
                        provider=provider,
                        reason="expired",
                        reply=f"{why} (past the maximum age)",
                    )
                )
                return
        self._record(
            self._outcome_for(
                message,
                "deferred",
                now,
                attempted=False,
                next_attempt_at=max(until, now),
                ip=ip,
                provider=provider,
                reason="mailctl",
                reply=why,
            )
        )

    def _render_here(self, message: dict[str, Any]) -> RenderedMessage | str:
        try:
            return self.jobs[message["campaign_id"]].renderer.render(
                message["email"], json.loads(message["fields_json"]), message["tracking_id"]
            )
        except TemplateError as exc:
            return str(exc)

    def _outcome_for(
        self, message: dict[str, Any], state: str, now: float, *, attempted: bool, **extra: Any
    ) -> Outcome:
        ip = extra.get("ip")
        return Outcome(
            message_id=message["id"],
            campaign_id=message["campaign_id"],
            email=message["email"],
            state=state,
            attempted=attempted,
            at=now,
            next_attempt_at=extra.pop("next_attempt_at", now),
            day=self.budget.day_of(ip, now) if ip else None,
            **extra,
        )

    # ------------------------------------------------------------------ workers

    async def _worker(self, group: _Group) -> None:
        connection: Connection | None = None
        try:
            while True:
                item, connection = await self._next_item(group, connection)
                if item is None:
                    break
                message = item.message
                self._in_flight[message["id"]] = item
                try:
                    connection = await self._deliver(group, item, connection)
                finally:
                    self._in_flight.pop(message["id"], None)
        except asyncio.CancelledError:
            pass
        finally:
            if connection is not None:
                await connection.close()
                if group.lane_capped:
                    self._lane_closed(group)

    async def _next_item(
        self, group: _Group, connection: Connection | None
    ) -> tuple[Item | None, Connection | None]:
        """The group's next item, and the connection to keep.

        A lane's connection cap can be below its group's worker count (a slowed or ramping
        lane allows one connection). A worker idle on an open connection then gives it up as
        soon as another worker of the lane holds a message and waits for a slot; otherwise
        each would wait for the other for ever.
        """
        if connection is None or not group.lane_capped:
            return await group.queue.get(), connection
        lane_key = _lane_key(group)
        wanted = self._slot_wanted.setdefault(lane_key, asyncio.Event())
        get = asyncio.ensure_future(group.queue.get())
        try:
            while not get.done():
                if wanted.is_set():
                    await connection.close()
                    self._lane_closed(group)
                    return await get, None
                waiter = asyncio.ensure_future(wanted.wait())
                try:
                    await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            if not get.done():
                get.cancel()
        return get.result(), connection

    async def _deliver(
        self, group: _Group, item: Item, connection: Connection | None
    ) -> Connection | None:
        """One message through this group; returns the connection to keep using."""
        message, ip, provider = item.message, item.ip, item.provider
        lane = self.scheduler.lane(ip, provider)
        lane_key = (ip, provider)
        if message["email"] in self._suppressed_in_run:
            # A hard bounce earlier in this run (another campaign, the same address).
            self.budget.release(ip, provider)
            self._record(
                self._outcome_for(message, "suppressed", self.clock.now(), attempted=False)
            )
            return connection
        while True:
            now = self.clock.now()
            if self._stop.is_set() or message["campaign_id"] in self._stopped:
                self.budget.release(ip, provider)
                self._record(self._outcome_for(message, "queued", now, attempted=False))
                return connection
            if group.paused_until > now:
                self.budget.release(ip, provider)
                self._defer_self(
                    message,
                    now,
                    group.paused_until,
                    provider=provider,
                    ip=ip,
                    why="connections to this destination are failing",
                )
                return connection
            wait = lane.admit(now)
            if wait == 0:
                break
            if wait <= SHORT_WAIT:
                await self.clock.sleep(wait)
                continue
            # Paused, or pacing far behind: spread this lane's messages over its slots.
            self.budget.release(ip, provider)
            slot = max(now + wait, self._next_slot.get(lane_key, 0.0))
            ends = lane.state.until
            if ends is not None and slot > ends >= now + wait:
                # Never book past the end of a slow period at the slow pace: what is left
                # comes due then and is spaced again at the lane's new rate.
                slot = ends
            else:
                self._next_slot[lane_key] = slot + _pace(lane.limits(now))
            if connection is not None and lane.pause_wait(now) > 0:
                await connection.close()  # a paused lane keeps no idle connection open
                if group.lane_capped:
                    self._lane_closed(group)
                connection = None
            # Recorded last: after its outcome a message must not wait on anything that a
            # cancellation could interrupt (it would be counted twice at shutdown).
            self._defer_self(
                message,
                now,
                slot,
                provider=provider,
                ip=ip,
                why=f"lane {ip} -> {provider} is {lane.state.mode.value}",
            )
            return connection
        limit = group.messages_per_connection
        if group.lane_capped:
            limit = min(limit, lane.limits(now).messages_per_connection)
        if connection is None or not connection.alive or connection.messages >= limit:
            if connection is not None:
                await connection.close()
                if group.lane_capped:
                    self._lane_closed(group)
                connection = None
            if group.lane_capped:
                cap = lane.limits(now).connections
                while self._open.get(lane_key, 0) >= max(cap, 1):
                    # Wait for one of the lane's connections to close (not a poll on the
                    # injected clock: an idle worker must not make time pass), asking idle
                    # workers of the lane to give theirs up. Re-check now and then: the cap
                    # rises as a recovering lane ramps up.
                    freed = self._freed.setdefault(lane_key, asyncio.Event())
                    wanted = self._slot_wanted.setdefault(lane_key, asyncio.Event())
                    freed.clear()
                    self._slot_waiters[lane_key] += 1
                    wanted.set()
                    try:
                        await asyncio.wait_for(freed.wait(), timeout=0.5)
                    except TimeoutError:
                        pass
                    finally:
                        self._slot_waiters[lane_key] -= 1
                        if self._slot_waiters[lane_key] <= 0:
                            wanted.clear()
                    if self._stop.is_set():
                        break
                    cap = lane.limits(self.clock.now()).connections
                self._open[lane_key] = self._open.get(lane_key, 0) + 1
            connection = Connection(group.destination)
            failure = await connection.open()
            if failure is not None:
                if group.lane_capped:
                    self._lane_closed(group)
                connection = None
                self._connection_failed(group)
                self._after_reply(item, failure)
                return None
            group.failures = 0
        reply = await connection.send(
            item.rendered.envelope_from, item.rendered.recipient, item.rendered.data
        )
        self._after_reply(item, reply)
        if not connection.alive:
            if group.lane_capped:
                self._lane_closed(group)
            return None
        return connection

    def _lane_closed(self, group: _Group) -> None:
        key = _lane_key(group)
        self._open[key] = max(0, self._open.get(key, 0) - 1)
        freed = self._freed.get(key)
        if freed is not None:
            freed.set()

    def _connection_failed(self, group: _Group) -> None:
        # Back off the whole group so a refusing server is not hammered: 1 s doubling to 5 min.
        group.failures += 1
        delay = min(300.0, 2.0 ** (group.failures - 1)) * self.rng.uniform(0.8, 1.2)
        group.paused_until = self.clock.now() + delay

    def _after_reply(self, item: Item, reply: Reply) -> None:
        now = self.clock.now()
        if reply.ok:
            # The hot path: a 250 changes no lane state (sent counts go in bulk at commit).
            self._sent_by_lane[(item.ip, item.provider)] += 1
            self._record(self._classify(item, reply, _NO_EVENT))
            return
        lane = self.scheduler.lane(item.ip, item.provider)
        event = lane.on_reply(reply.text, reply.code, now, from_receiver=reply.from_receiver)
        if event.pauses_lane or event.kind is LaneEventKind.DISABLED:
            self._lane_event(event, item.message["campaign_id"], now)
        outcome = self._classify(item, reply, event)
        if not reply.ok:
            self.budget.release(item.ip, item.provider)
        self._record(outcome)
        cid = item.message["campaign_id"]
        if event.kind is LaneEventKind.STOP_CAMPAIGN:
            self._stop_campaign(cid, f"{event.reason or 'stopped by rule'} ({reply.text})")
        elif outcome.state == "failed" and outcome.scope == "campaign":
            self._stop_campaign(cid, f"the receiver refused the sender: {reply.text}")

    def _lane_event(self, event: LaneEvent, campaign_id: int, now: float) -> None:
        # Replies to messages already in flight repeat the event that paused the lane: one
        # record (and one line) per episode.
        key = (event.ip, event.provider, event.kind.value, event.rule)
        if now - self._last_lane_event.get(key, float("-inf")) < 60:
            return
        self._last_lane_event[key] = now
        self.store.add_lane_event(
            at=now,
            ip=event.ip,
            provider=event.provider,
            kind=event.kind.value,
            until=event.until,
            reason=event.reason,
            rule=event.rule,
            campaign_id=campaign_id,
        )
        until = f" until {_hms(event.until)}" if event.until else ""
        self._say(
            f"lane {event.ip} -> {event.provider} {event.kind.value}{until}: {event.reason}"
            + (" [ALERT]" if event.alert else "")
        )

    def _stop_campaign(self, campaign_id: int, why: str) -> None:
        if campaign_id in self._stopped:
            return
        self._stopped[campaign_id] = why
        self.store.set_campaign_status(campaign_id, "stopped", why, now=self.clock.now())
        self._say(f"campaign {self.jobs[campaign_id].name} stopped: {why}")
        self._wake.set()

    def _classify(self, item: Item, reply: Reply, event: LaneEvent) -> Outcome:
        message, job = item.message, item.job
        now = self.clock.now()
        base = {"ip": item.ip, "provider": item.provider, "code": reply.code, "reply": reply.text}
        if reply.ok:
            return self._outcome_for(message, "sent", now, attempted=True, **base)
        verdict = (
            classify_reply(reply.code, reply.text, item.provider, stage=reply.stage)
            if reply.code
            else None
        )
        if verdict is not None and reply.stage == "connect" and verdict.scope is Scope.RECIPIENT:
            # Refused before any recipient was named: about the server or us, not the address.
            verdict = replace(verdict, scope=Scope.LANE, suppress=False)
        details = (
            {
                "reason": verdict.reason,
                "rule": verdict.rule,
                "status": verdict.status,
                "scope": verdict.scope.value,
            }
            if verdict
            else {"reason": "networkerror", "rule": "connection", "scope": Scope.TRANSIENT.value}
        )
        permanent = (
            verdict is not None
            and reply.code is not None
            and reply.code >= 500
            and verdict.permanent
        )
        if permanent and verdict is not None and event.kind is not LaneEventKind.DEFER_RECIPIENT:
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
        named = event.retry_after or (parse_reply_delay(reply.text) if reply.code else None)
        if named:
            delay = float(named)
        else:
            delays = job.profile.retry_delays
            delay = delays[min(attempts - 1, len(delays) - 1)] * self.rng.uniform(0.85, 1.15)
        next_at = now + delay
        if event.pauses_lane:
            # Not before the lane may send again: the end of its pause, not of a slow period
            # that follows it (a slowed lane still sends). A lane out of rotation without an
            # end leaves the retry to the pool's other IPs.
            pause = self.scheduler.lane(item.ip, item.provider).pause_wait(now)
            if pause != float("inf"):
                next_at = max(next_at, now + pause)
        first = message.get("first_attempt_at") or now
        if next_at > first + job.max_age:
            return self._outcome_for(message, "expired", now, attempted=True, **base, **details)
        return self._outcome_for(
            message, "deferred", now, attempted=True, next_attempt_at=next_at, **base, **details
        )

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        if outcome.suppress:
            self._suppressed_in_run.add(outcome.email)
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
        if outcome.attempted and state in ("sent", "bounced"):
            cid = outcome.campaign_id
            breaker = self._breakers[cid].add(sent=1, bounced=int(state == "bounced"))
            self._breakers[cid] = breaker
            policy = BreakerPolicy.from_config(self.jobs[cid].profile.breakers)
            # A rate crosses its threshold on a bounce, or when the count reaches min_sent
            # (bounces before it were not judged yet).
            if state == "bounced" or breaker.sent == policy.min_sent:
                trip = check_breaker(breaker, policy)
                if trip is not None:
                    self._stop_campaign(cid, trip.reason)
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
        try:
            done = [o for o in pending if o.state != "queued"]
            self.store.record_outcomes(done, ip_day_counts(done), smtp_suppressions(done))
            self.store.release(released)
        except BaseException:
            self._pending = pending + self._pending  # nothing is lost: tried again
            raise
        clock_now = self.clock.now()
        for (ip, provider), count in self._sent_by_lane.items():
            self.scheduler.lane(ip, provider).count_sent(count, clock_now)
        self._sent_by_lane.clear()
        self.store.upsert_lanes([state.to_row() for state in self.scheduler.changed_states()])
        self._last_commit = now
        if now - self._last_heartbeat >= self.options.heartbeat_interval:
            self.store.heartbeat(self.run_id, self.clock.now())
            self._last_heartbeat = now

    def lane_rows(self) -> list[dict[str, Any]]:
        """Progress rows: this run's counters with each lane's current state."""
        now = self.clock.now()
        rows = []
        for (ip, provider), stats in self.lanes.items():
            snapshot = self.scheduler.lane(ip, provider).snapshot(now)
            rows.append(
                {
                    "ip": ip,
                    "provider": provider,
                    "sent": stats.sent,
                    "deferred": stats.deferred,
                    "bounced": stats.bounced,
                    "failed": stats.failed,
                    "state": snapshot.mode.value
                    if snapshot.mode.value == "normal"
                    else f"{snapshot.mode.value} until {_hms(snapshot.until)}",
                }
            )
        return rows

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval)
            try:
                self._commit()
            except Exception as exc:  # noqa: BLE001 - the run stops and says why
                self._fatal = exc
                self.request_stop()
                return
            if self.on_progress:
                self.on_progress(self)

    async def _shutdown(self) -> None:
        """Release unsent claims, let in-flight messages finish (bounded), commit."""
        now = self.clock.now()
        for group in self._groups.values():
            while not group.queue.empty():
                item = group.queue.get_nowait()
                if item is not None:
                    self.budget.release(item.ip, item.provider)
                    self._record(self._outcome_for(item.message, "queued", now, attempted=False))
                    self.attempted -= 1
            for _ in group.workers:
                group.queue.put_nowait(None)
        workers = [task for group in self._groups.values() for task in group.workers]
        cut: list[Item] = []
        if workers:
            done, pending = await asyncio.wait(workers, timeout=self.options.stop_grace)
            # Taken before cancelling: a cancelled worker forgets its message as it unwinds.
            cut = list(self._in_flight.values())
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        else:
            cut = list(self._in_flight.values())
        cut += [item for item in self._cut_by_force if item not in cut]
        # Anything still in flight was cut off mid-transaction: it may have been delivered.
        for item in cut:
            self._record(self._outcome_for(item.message, "queued", now, attempted=False))
        if cut:
            self.store.mark_possible_duplicates([item.message["id"] for item in cut])
        self._commit(force=True)


_NO_EVENT = LaneEvent(LaneEventKind.NONE, "", "")


def _lane_key(group: _Group) -> tuple[str, str]:
    """(IP, provider) of a direct group, whose connections count against its lane's cap."""
    return (group.ip, group.key[2]) if len(group.key) > 2 else (group.ip, "")


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


def _hms(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


# ---------------------------------------------------------------------- render process

_worker_renderers: dict[int, Renderer] = {}


def _init_render_worker(specs: dict[int, tuple[Campaign, dict[str, Any]]]) -> None:
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
            initargs=(specs,),
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
