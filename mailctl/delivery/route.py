"""Routing: each claimed recipient to a provider lane and a sending IP, or a deferral.

A recipient's domain resolves (MX rollup through mailctl.dns.providers, cached in the store with
its TTL) to a provider; the pool's lanes and today's warm-up budget pick the IP. Messages
that cannot go now are deferred by mailctl itself (never feeding a rule); a cold IP at its
cap keeps a message for a later slot of its window. Imports the domain and the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailctl.config.profiles import TransportKind
from mailctl.delivery.context import CampaignJob, SendContext
from mailctl.delivery.outcome import asked_back_to, hm
from mailctl.delivery.record import Recorder
from mailctl.dns.providers import (
    AsyncMxResolver,
    DirectAction,
    DomainRoute,
    RouteStatus,
    normalise_domain,
    resolve_domains,
    route_for_override,
    unresolved_route,
)
from mailctl.model import MessageState
from mailctl.store.base import Store

if TYPE_CHECKING:
    from mailctl.dns.resolver import Resolver  # dnspython: loaded only for live lookups


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


@dataclass(frozen=True)
class Routed:
    """A message with its lane: budget reserved, ready to render and hand to a connection."""

    message: dict[str, Any]
    ip: str
    provider: str
    route: DomainRoute


class Router:
    """Recipient -> provider (through DNS) -> lane and sending IP, per claimed batch."""

    def __init__(
        self,
        ctx: SendContext,
        recorder: Recorder,
        resolver: Resolver | AsyncMxResolver | None = None,
    ) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self.resolver = resolver
        self._routes: dict[tuple[str, str], DomainRoute] = {}
        self._route_cache = StoreRouteCache(ctx.store)
        # Messages deferred to a cold IP's later window slots in this run, per lane.
        self._window_waiting: dict[int, tuple[str, str]] = {}
        self._window_waiting_count: dict[tuple[str, str], int] = {}
        self._window_slot: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------------ DNS

    async def resolve(self, messages: Sequence[dict[str, Any]], now: float) -> None:
        """Routes for the batch's domains, per profile (MX rollup, cached with its TTL)."""
        jobs = self.ctx.jobs
        wanted: dict[str, set[str]] = {}
        for message in messages:
            profile = jobs[message["campaign_id"]].profile
            domain = message["domain"]
            if (profile.name, domain) not in self._routes:
                wanted.setdefault(profile.name, set()).add(domain)
        for profile_name, domains in wanted.items():
            profile = next(j.profile for j in jobs.values() if j.profile.name == profile_name)
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
                assert resolver is not None
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

    @staticmethod
    def _provider(job: CampaignJob, route: DomainRoute) -> str:
        if job.profile.transport is TransportKind.DIRECT:
            return route.provider
        return route.relay_group()

    # ------------------------------------------------------------------ capacity

    def _capacity(self, now: float) -> Callable[[str, str], int | None]:
        """What is left of each IP's day for routing: a cold IP keeps its share of the day
        (minus the messages already waiting for its window slots); only the excess spills."""
        budget = self.ctx.budget

        def left(ip: str, provider: str) -> int | None:
            today = budget.remaining_today(ip, provider, now)
            if today is None:
                return None
            return today - self._window_waiting_count.get((ip, provider), 0)

        return left

    def _capacity_returns(self, pool: list[str], provider: str, now: float) -> float:
        budget = self.ctx.budget
        moments = []
        left = self._capacity(now)
        for ip in pool:
            lane_ready = now + self.ctx.scheduler.lane(ip, provider).pause_wait(now)
            today = left(ip, provider)
            if today is not None and today <= 0:
                # The day's cap is used up (or promised to messages waiting for their slots).
                returns = budget.next_day_opens(ip, now)
            else:
                returns = budget.capacity_returns(ip, provider, now)
            moments.append(max(lane_ready, returns))
        finite = [m for m in moments if m != float("inf")]
        return min(finite) if finite else now + 3600

    def _blocked_kind(
        self,
        pool_name: str,
        pool: list[str],
        provider: str,
        capacity: Callable[[str, str], int | None],
        now: float,
    ) -> str:
        """Why no IP of the pool may send to this provider now, in words that group."""
        capped = [ip for ip in pool if (left := capacity(ip, provider)) is not None and left <= 0]
        if capped and len(capped) == len(pool):
            return f"warm-up: {', '.join(capped)} at today's cap for {provider}"
        paused = [ip for ip in pool if self.ctx.scheduler.lane(ip, provider).pause_wait(now) > 0]
        if paused and len(paused) + len(capped) == len(pool):
            return f"lanes {', '.join(paused)} -> {provider} paused" + (
                f"; {', '.join(capped)} at today's warm-up cap" if capped else ""
            )
        return f"no IP of pool {pool_name} may send to {provider}"

    # ------------------------------------------------------------------ routing

    def route(
        self, claimed: list[dict[str, Any]], suppressed: set[str], now: float
    ) -> list[Routed]:
        """The batch's messages that may go now, each with its IP's budget reserved; every
        other message gets its outcome here (suppressed, bounced by DNS, or deferred)."""
        ctx, recorder, budget = self.ctx, self.recorder, self.ctx.budget
        routed: list[Routed] = []
        capacity = self._capacity(now)
        for message in claimed:
            job = ctx.jobs[message["campaign_id"]]
            waiting = self._window_waiting.pop(message["id"], None)
            if waiting is not None:  # its window slot has come: it no longer holds a place
                self._window_waiting_count[waiting] -= 1
            if message["email"] in suppressed:
                # Checked again just before delivery: a bounce may have arrived meanwhile.
                recorder.record(
                    recorder.outcome_for(message, MessageState.SUPPRESSED, now, attempted=False)
                )
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
                    recorder.record(
                        recorder.outcome_for(
                            message,
                            MessageState.BOUNCED,
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
                    retry_at = now + job.profile.retry_delays[0]
                    recorder.defer_self(
                        message,
                        now,
                        retry_at,
                        provider=provider,
                        why=f"DNS lookup for {route.domain} timed out; retry at {hm(retry_at)}",
                        kind="DNS lookup timed out",
                    )
                    continue
            room = budget.provider_room(provider, now)
            if room is not None and room <= 0:
                # The provider-wide limit (every IP, every host) is used up for this hour.
                returns = budget.next_hour(now)
                recorder.defer_self(
                    message,
                    now,
                    returns,
                    provider=provider,
                    why=f"provider limit: {provider} per hour reached; next hour at {hm(returns)}",
                    kind=f"provider limit: {provider} per hour",
                    may_expire=False,
                )
                continue
            pool = [s.ip for s in job.profile.pools[job.pool]]
            # An open lane with capacity; one that is only pacing is fine: the worker
            # waits for its slot.
            ip = ctx.scheduler.pick_ip(pool, provider, now, capacity, prefer=asked_back_to(message))
            if ip is None:
                returns = self._capacity_returns(pool, provider, now)
                kind = self._blocked_kind(job.pool, pool, provider, capacity, now)
                recorder.defer_self(
                    message,
                    now,
                    returns,
                    provider=provider,
                    why=f"{kind}; next capacity at {hm(returns)}",
                    kind=kind,
                    may_expire=False,  # warm-up caps and pauses never cost a message
                )
                continue
            allowed = budget.remaining(ip, provider, now)
            if allowed is not None and allowed <= 0:
                # The IP keeps this message for a later slot of its window: spread, no burst.
                key = (ip, provider)
                slot = max(
                    budget.capacity_returns(ip, provider, now),
                    self._window_slot.get(key, 0.0),
                )
                self._window_slot[key] = slot + budget.window_pace(ip, now)
                self._window_waiting[message["id"]] = key
                self._window_waiting_count[key] = self._window_waiting_count.get(key, 0) + 1
                recorder.defer_self(
                    message,
                    now,
                    slot,
                    provider=provider,
                    ip=ip,
                    why=f"warm-up: {ip}'s next window slot at {hm(slot)}",
                    kind=f"warm-up: {ip}'s window slots",
                    may_expire=False,
                )
                continue
            budget.reserve(ip, provider)
            routed.append(Routed(message, ip, provider, route))
        return routed
