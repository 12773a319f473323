"""Dispatch: connections and workers that send routed messages through their lanes.

Messages queue per connection group (one destination from one sending IP); a group's
workers each hold one reused SMTP connection, admit every message through its lane (rate,
pause, connection cap) and hand each reply to the lane and to the recorder. Imports the
transport, the domain and the recorder; never the simulator or the CLI.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mailctl.config.profiles import TlsMode, TransportKind, is_loopback
from mailctl.config.provider_rules import Scope, TlsPolicy
from mailctl.delivery.context import CampaignJob, SendContext, hms
from mailctl.delivery.early import EarlyConnection
from mailctl.delivery.outcome import NO_EVENT, Outcome, hm, reply_outcome, short
from mailctl.delivery.record import Recorder
from mailctl.delivery.route import Routed
from mailctl.delivery.transport import Connection, Destination, Reply, relay_destination
from mailctl.dns.providers import DomainRoute
from mailctl.message.render import RenderedMessage
from mailctl.model import MessageState
from mailctl.recipients.address import address_key
from mailctl.replies.classify import classify_reply, parse_reply_delay
from mailctl.reputation.lanes import Lane, LaneEvent, LaneEventKind

# A lane wait shorter than this is slept through by the worker; longer ones defer the message.
SHORT_WAIT = 2.0
# A worker holding an open connection sleeps through a wait up to this long rather than close
# it: reconnect churn is what connection-rate limits punish. Well below common server idle
# timeouts (Postfix 300 s, RFC 5321's 5 minutes).
KEEP_WAIT = 20.0
# A connection idle longer than this is checked with NOOP before the next message.
NOOP_AFTER = 10.0
# After this many refusals in a row on one session (greylisting, per-recipient 4xx) the
# connection is closed and the next message opens a new one: servers count errors per
# session and slow down (Postfix's smtpd_soft_error_limit, 10) or hang up (its hard limit)
# long before a session of refusals would have carried anything.
REFUSALS_PER_CONNECTION = 3
# A message the receiver refused with a throttle of the lane's message rate ("too much mail",
# a rate rule) is tried again on the same session at the lane's next slot, when that slot is
# within KEEP_WAIT, at most this many times; then it goes back to the queue as before. The
# round trip through the queue (retry delay, claim, render) would send it long after the
# receiver's window opened again, and behind the messages that were never refused.
SESSION_RETRIES = 5


@dataclass
class Item:
    message: dict[str, Any]
    job: CampaignJob
    rendered: RenderedMessage
    ip: str
    provider: str
    # Between the first command and the recording of its reply: cut off there, the message
    # may have been delivered. At any other moment it is only waiting.
    transmitting: bool = False
    # The outcome of a refusal waiting for its retry in this session: recorded if the retry
    # never happens (the run stops, the lane's wait grows, the connection is lost).
    refusal: Outcome | None = None
    # Its MAIL, RCPT and DATA went out behind the last message's text on the worker's
    # connection, its lane's permit taken then: the worker sends it next, on that session.
    presented: bool = False


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
    conn_lane: tuple[str, str] = ("", "")  # the lane whose learned connections cap this group
    paused_until: float = 0.0
    failures: int = 0
    closing: bool = False  # the run is ending: workers beyond the cap leave too
    pending: int = 0  # items queued to this group and not yet in flight
    workers: list[asyncio.Task[None]] = field(default_factory=list)


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


def session_retry(
    reply: Reply, event: LaneEvent, outcome: Outcome, wait: float, scope: Scope | None
) -> bool:
    """Whether a refused message goes again on the same session rather than back to the
    queue: a temporary refusal (not 421: the server closes the session) that throttled the
    lane's message rate, or met the lane already paused for it; not about the recipient; no
    delay named in the reply; and the lane's next slot (``wait`` seconds) within
    `KEEP_WAIT`. Anything else keeps the profile's retry schedule."""
    return (
        reply.code is not None
        and 400 <= reply.code < 500
        and reply.code != 421
        and reply.from_receiver
        and outcome.state is MessageState.DEFERRED
        and scope is not Scope.RECIPIENT
        and (
            event.kind in (LaneEventKind.BACKOFF, LaneEventKind.SUSPENDED, LaneEventKind.SLOWED)
            or (event.kind is LaneEventKind.IGNORED and wait > 0)
        )
        and parse_reply_delay(reply.text) is None
        and wait <= KEEP_WAIT
    )


def _lane_key(group: _Group) -> tuple[str, str]:
    """The lane whose connection cap the group's connections count against: (IP, provider)
    for direct delivery, (IP, "relay HOST:PORT") for a relay or the sandbox."""
    return group.conn_lane


class Dispatcher:
    """The run's connection groups and their workers."""

    def __init__(
        self,
        ctx: SendContext,
        recorder: Recorder,
        sandbox_port: int | None = None,
        early: EarlyConnection | None = None,
    ) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self.sandbox_port = sandbox_port
        # A relay connection the run opened while it loaded: the first connection to that
        # relay adopts its socket.
        self.early = early
        self.attempted = 0  # messages handed to connections (released ones taken back)
        self.finished = asyncio.Event()  # a worker is done with a message
        self._in_flight: dict[int, Item] = {}
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._open: dict[tuple[str, str], int] = {}  # connection slots taken per lane
        self._connecting: Counter[tuple[str, str]] = Counter()  # of those, still connecting
        self._freed: dict[tuple[str, str], asyncio.Event] = {}  # a lane connection closed
        # Workers holding a message while they wait for a lane connection slot, per lane.
        self._slot_waiters: Counter[tuple[str, str]] = Counter()
        self._slot_wanted: dict[tuple[str, str], asyncio.Event] = {}
        self._next_slot: dict[tuple[str, str], float] = {}
        self._last_lane_event: dict[tuple[str, str, str, str | None], float] = {}
        self._cut_by_force: list[Item] = []
        # The first exception that ended a worker: a fault in mailctl, re-raised by the
        # engine once the run has shut down cleanly.
        self.crash: Exception | None = None

    # ------------------------------------------------------------------ queueing

    async def send(
        self, routed: list[Routed], rendered: list[RenderedMessage | str], now: float
    ) -> None:
        """Queue each rendered message to its group (waiting while a queue is full)."""
        ctx, recorder = self.ctx, self.recorder
        for entry, result in zip(routed, rendered, strict=True):
            message, ip, provider = entry.message, entry.ip, entry.provider
            if isinstance(result, str):
                ctx.budget.release(ip, provider)
                recorder.record(
                    recorder.outcome_for(
                        message,
                        MessageState.FAILED,
                        now,
                        attempted=False,
                        reply=result,
                        reason="template",
                    )
                )
                continue
            if ctx.halted(message["campaign_id"]):
                ctx.budget.release(ip, provider)
                recorder.release([message], now)
                continue
            job = ctx.jobs[message["campaign_id"]]
            group = self._group_for(job, ip, provider, entry.route)
            group.pending += 1  # before the put: busy() must never miss it
            await group.queue.put(Item(message, job, result, ip, provider))
            self.attempted += 1

    def connecting(self) -> bool:
        """Whether a connection is being opened (its greeting, EHLO, STARTTLS, AUTH)."""
        return any(self._connecting.values())

    def busy(self) -> bool:
        # ``pending`` also counts an item a worker has taken off the queue but not yet
        # marked in flight (the get completed; the worker has not run since).
        return bool(self._in_flight) or any(g.pending > 0 for g in self._groups.values())

    def _release_queued(self, now: float) -> None:
        """Messages queued to connections but not taken: back to the queue."""
        for group in self._groups.values():
            while not group.queue.empty():
                item = group.queue.get_nowait()
                if item is not None:
                    group.pending -= 1
                    self.ctx.budget.release(item.ip, item.provider)
                    self.recorder.release([item.message], now)
                    self.attempted -= 1

    def cut(self, now: float) -> None:
        """A forced stop: cancel every worker and release what waits in the queues."""
        self._cut_by_force = self._cut_items()  # before they unwind
        for group in self._groups.values():
            for task in group.workers:
                task.cancel()
        # No worker will take these any more: release them now, so a dispatcher
        # blocked on a full queue goes on (and releases the rest itself).
        self._release_queued(now)

    async def close(self, now: float) -> list[dict[str, Any]]:
        """Release unsent items, let in-flight messages finish (bounded by the stop grace);
        returns the messages cut off mid-transaction."""
        self._release_queued(now)
        for group in self._groups.values():
            group.closing = True
            self._freed.setdefault(group.conn_lane, asyncio.Event()).set()
            for _ in group.workers:
                group.queue.put_nowait(None)
        workers = [task for group in self._groups.values() for task in group.workers]
        cut: list[Item] = []
        if workers:
            done, pending = await asyncio.wait(workers, timeout=self.ctx.options.stop_grace)
            # Taken before cancelling: a cancelled worker forgets its message as it unwinds.
            cut = self._cut_items()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        else:
            cut = self._cut_items()
        cut += [item for item in self._cut_by_force if item not in cut]
        return [item.message for item in cut]

    def _cut_items(self) -> list[Item]:
        """The messages in flight that are mid-transaction (possible duplicates if cut). The
        others (waiting for their lane or a connection) go back to the queue now, or keep the
        refusal they wait to retry."""
        now = self.ctx.clock.now()
        cut = []
        for key, item in list(self._in_flight.items()):
            if item.transmitting:
                cut.append(item)
                continue
            del self._in_flight[key]
            self._give_up(item, now)
        return cut

    def _give_up(self, item: Item, now: float, *, not_before: float | None = None) -> None:
        """A message that will not be tried (again) in this session: its refusal recorded
        (retried no sooner than ``not_before``), or, never attempted, back to the queue."""
        self.ctx.budget.release(item.ip, item.provider)
        refusal, item.refusal = item.refusal, None
        if refusal is None:
            self.recorder.release([item.message], now)
            return
        if not_before is not None and refusal.next_attempt_at < not_before:
            refusal.next_attempt_at = not_before
        self.recorder.record(refusal)

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
            limits = self.ctx.scheduler.rules.limits_for(provider)
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
                pipelining=profile.pipelining,
            )
            connections = limits.connections
            per_connection = limits.messages_per_connection
        else:
            destination = relay_destination(profile, ip, self.sandbox_port)
            if (
                destination.username
                and destination.allow_plaintext_auth
                and not destination.tls_required
                and destination.tls is not TlsMode.IMPLICIT
                and not is_loopback(destination.host)
            ):
                self.ctx.say(
                    f"warning: AUTH to {destination.name} may go in cleartext"
                    " (allow_plaintext_auth: true): the password can be read on the way"
                )
            connections = profile.connections
            per_connection = profile.messages_per_connection
        group = _Group(
            key=key,
            ip=ip,
            destination=destination,
            connections=connections,
            messages_per_connection=per_connection,
            queue=asyncio.Queue(
                maxsize=max(connections, 1) * self.ctx.options.queue_per_connection
            ),
            lane_capped=True,
            conn_lane=(ip, provider) if direct else (ip, f"relay {destination.name}"),
        )
        self._groups[key] = group
        group.workers = [
            asyncio.create_task(self._worker(group, index)) for index in range(connections)
        ]
        return group

    # ------------------------------------------------------------------ workers

    def _conn_lane(self, group: _Group) -> Lane:
        ip, name = group.conn_lane
        return self.ctx.scheduler.lane(ip, name)

    async def _my_turn(self, group: _Group, index: int, connection: Connection | None) -> None:
        """Wait while this worker is beyond the connections its lane may hold now (a slow
        start, or the number that held when a receiver refused one more). A worker above the
        cap gives up its connection first. Waits on the event loop, not the injected clock:
        an idle worker must not make time pass."""
        while self._beyond_cap(group, index):
            if self.ctx.stop.is_set() or group.closing:
                return
            changed = self._freed.setdefault(_lane_key(group), asyncio.Event())
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), timeout=0.2)
            except TimeoutError:
                pass

    async def _worker(self, group: _Group, index: int = 0) -> None:
        connection: Connection | None = None
        held: list[Item] = []  # the next message, taken while the last one's text went out

        def follow(sending: Connection) -> tuple[str, str] | None:
            if held:
                return None
            taken = self._take_next(group, index, sending)
            if taken is None:
                return None
            held.append(taken)
            if not taken.presented:
                return None
            return taken.rendered.envelope_from, taken.rendered.recipient

        try:
            while True:
                if held:
                    item = held.pop()  # in flight already, and perhaps presented
                else:
                    if index > 0 and connection is None:
                        await self._my_turn(group, index, connection)
                    elif connection is not None and self._beyond_cap(group, index):
                        await connection.close()
                        self._lane_closed(group)
                        connection = None
                        continue
                    next_item, connection = await self._next_item(group, connection)
                    if next_item is None:
                        break
                    item = self._taken(group, next_item)
                try:
                    connection = await self._deliver(group, item, connection, follow, held)
                except asyncio.CancelledError:
                    self._in_flight.pop(item.message["id"], None)
                    raise
                else:
                    self._in_flight.pop(item.message["id"], None)
                finally:
                    self.finished.set()
                self.recorder.commit_due()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            # A fault in mailctl itself. The message (and the one held behind it) stay in
            # flight for `close` to settle: cut off if its outcome was not recorded after
            # its transaction began, else back to the queue. The run stops and says why.
            if self.crash is None:
                self.crash = exc
            self.ctx.stop.set()
            self.ctx.wake.set()
            if connection is not None:
                connection.abort()  # mid-transaction perhaps: no QUIT to be read as text
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
        if connection is None or not group.lane_capped or not group.queue.empty():
            # Work waiting (the busy case: no futures to set up per message), or no
            # connection to give up while waiting.
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
        self,
        group: _Group,
        item: Item,
        connection: Connection | None,
        follow: Callable[[Connection], tuple[str, str] | None] | None = None,
        held: list[Item] | None = None,
    ) -> Connection | None:
        """One message through this group; returns the connection to keep using.

        The lane's permit is taken only once a connection is ready: opening one (or waiting
        for a connection slot) must not use up a slot the receiver was learned to take. A
        throttle of the lane's message rate is tried again on the same session at the lane's
        next slot, up to `SESSION_RETRIES` times. ``follow`` takes the group's next message
        into ``held`` while this one's text goes out (`_take_next`).

        A message presented behind the last one (`Item.presented`) is sent on without
        waiting for its lane: its permit was taken when its commands went out. Unless it
        may no longer go (its campaign stopped, its address bounced meanwhile): then the
        session is hung up mid-transaction, which the server drops, never delivers, and the
        message takes the usual way (recorded as suppressed, or back to the queue)."""
        ctx, recorder = self.ctx, self.recorder
        message, ip, provider = item.message, item.ip, item.provider
        presented = item.presented and connection is not None and connection.presented is not None
        item.presented = False
        # Stopping the run is no reason: the message is in flight, and goes like the others.
        if presented and (self._suppressed_in_run(item) or message["campaign_id"] in ctx.stopped):
            assert connection is not None
            await connection.close()
            self._lane_closed(group)
            connection, presented = None, False
        if self._suppressed_in_run(item):
            # A hard bounce earlier in this run (another campaign, the same address).
            ctx.budget.release(ip, provider)
            recorder.record(
                recorder.outcome_for(
                    message, MessageState.SUPPRESSED, ctx.clock.now(), attempted=False
                )
            )
            return connection
        tries = 0
        while True:
            if presented:
                presented = False
            else:
                go, connection = await self._admitted(group, item, connection)
                if not go:
                    return connection
            assert connection is not None
            tries += 1
            item.transmitting = True
            reply = await connection.send(
                item.rendered.envelope_from,
                item.rendered.recipient,
                item.rendered.data,
                partial(follow, connection) if follow is not None else None,
            )
            connection.last_used = ctx.clock.now()
            event = self._after_reply(
                item,
                reply,
                group=group,
                busy=not group.queue.empty() or bool(held),
                # Not with the next message presented: it goes first on this session.
                may_retry=tries <= SESSION_RETRIES and connection.presented is None,
            )
            item.transmitting = False
            if event.pauses_lane or event.kind is LaneEventKind.IGNORED:
                # A throttle of the lane (message rate): the lane waits, the session is kept.
                connection.refusals = 0
            if connection.alive and connection.refusals >= REFUSALS_PER_CONNECTION:
                await connection.close()
            if not connection.alive:
                self._lane_closed(group)
                connection = None
            if item.refusal is None:
                return connection
            # Refused by a throttle: again at the lane's next slot (`_admitted` sends it
            # back to the queue with its refusal if that slot is far off).

    def _taken(self, group: _Group, item: Item) -> Item:
        """An item a worker took off its group's queue: in flight from now on."""
        self._in_flight[item.message["id"]] = item
        group.pending -= 1
        return item

    def _beyond_cap(self, group: _Group, index: int) -> bool:
        """Whether worker ``index`` is beyond the connections its lane may hold now (the
        first worker never is)."""
        if index == 0:
            return False
        return index >= self._conn_lane(group).connection_cap(
            self.ctx.clock.now(), group.connections
        )

    @staticmethod
    def _session_limit(group: _Group, lane: Lane, now: float) -> int:
        """Messages one session may carry: the group's limit, and for direct delivery the
        provider's."""
        limit = group.messages_per_connection
        if group.conn_lane == (lane.ip, lane.provider):  # direct: the provider's limit
            limit = min(limit, lane.limits(now).messages_per_connection)
        return limit

    def _suppressed_in_run(self, item: Item) -> bool:
        suppressed = self.recorder.suppressed_in_run
        return bool(suppressed) and address_key(item.message["email"]) in suppressed

    def _take_next(self, group: _Group, index: int, connection: Connection) -> Item | None:
        """While a message's text goes out on ``connection``: the group's next message, taken
        into the worker's hands (in flight) when the worker would take it next anyway: the
        session clean (no refusal since its last delivery), the worker within its lane's
        connection cap, the group neither paused nor closing. It is marked `Item.presented`
        when its commands may go in the same write: room for it on the session, its
        campaign not stopped, its address not bounced in this run, and its lane's permit
        free now (taken here). Otherwise the worker sends it next the usual way."""
        ctx = self.ctx
        now = ctx.clock.now()
        if (
            group.closing
            or ctx.stop.is_set()
            or group.queue.empty()
            or connection.refusals
            or group.paused_until > now
            or self._beyond_cap(group, index)
        ):
            return None
        item = group.queue.get_nowait()
        if item is None:  # the end of the run (not while closing: cannot come here)
            group.queue.put_nowait(None)
            return None
        self._taken(group, item)
        lane = ctx.scheduler.lane(item.ip, item.provider)
        item.presented = (
            connection.messages + 2 <= self._session_limit(group, lane, now)
            and item.refusal is None
            and not ctx.halted(item.message["campaign_id"])
            and not self._suppressed_in_run(item)
            and lane.admit(now) == 0
        )
        return item

    async def _admitted(
        self, group: _Group, item: Item, connection: Connection | None
    ) -> tuple[bool, Connection | None]:
        """Wait for the lane's permit and a ready connection: (True, connection) to send
        now, or (False, connection to keep) when the message was deferred or recorded."""
        ctx = self.ctx
        message, ip, provider = item.message, item.ip, item.provider
        lane = ctx.scheduler.lane(ip, provider)
        lane_key = (ip, provider)
        while True:
            now = ctx.clock.now()
            if ctx.halted(message["campaign_id"]):
                self._give_up(item, now)
                return False, connection
            if group.paused_until > now:
                self._defer(
                    item,
                    now,
                    group.paused_until,
                    why=f"connections to {group.destination.name} are failing; next try at "
                    f"{hm(group.paused_until)}",
                    kind=f"connections to {group.destination.name} are failing",
                )
                return False, connection
            connection = await self._usable(group, lane, connection, now)
            # With a connection ready the permit is taken; without one, only asked about.
            wait = lane.admit(now) if connection is not None else lane.ready_in(now)
            if wait == 0:
                if connection is not None:
                    return True, connection
                connection = await self._connect(group, item, now)
                if connection is None:
                    return False, None  # deferred, or the connect failure recorded
                continue  # the permit is taken now that the connection is ready
            # A few seconds to the next token: keep the connection, do not churn it. A lane
            # that is only pacing (not paused) holds the message too: booking it a slot of
            # its own would space out a burst the receiver was learned to take at once.
            keep = wait <= KEEP_WAIT and (connection is not None or lane.pause_wait(now) == 0)
            if wait <= SHORT_WAIT or keep:
                await ctx.clock.sleep(wait)
                continue
            # Paused, or pacing far behind: spread this lane's messages over its slots.
            slot = max(now + wait, self._next_slot.get(lane_key, 0.0))
            ends = lane.state.until
            if ends is not None and slot > ends >= now + wait:
                # Never book past the end of a slow period at the slow pace: what is left
                # comes due then and is spaced again at the lane's new rate.
                slot = ends
            else:
                self._next_slot[lane_key] = slot + _pace(lane.limits(now))
            if connection is not None and lane.pause_wait(now) > KEEP_WAIT:
                await connection.close()  # a paused lane keeps no idle connection open
                if group.lane_capped:
                    self._lane_closed(group)
                connection = None
            # Recorded last: after its outcome a message must not wait on anything that a
            # cancellation could interrupt (it would be counted twice at shutdown).
            mode = lane.state.mode.value
            what = f"lane {ip} -> {provider} {'pacing' if mode == 'normal' else mode}"
            cause = f" ({short(lane.state.reason, 40)})" if lane.state.reason else ""
            self._defer(
                item,
                now,
                slot,
                why=f"{what} until {hm(ends if ends is not None else slot)}"
                + (f" ({short(lane.state.reason)})" if lane.state.reason else "")
                + f"; slot at {hm(slot)}",
                kind=what + cause,
            )
            return False, connection

    def _defer(self, item: Item, now: float, until: float, *, why: str, kind: str) -> None:
        """Not now: a refusal waiting for its retry is recorded (no sooner than ``until``);
        a message not tried yet waits in the queue until then (mailctl's own deferral)."""
        if item.refusal is not None:
            self._give_up(item, now, not_before=until)
            return
        self.ctx.budget.release(item.ip, item.provider)
        self.recorder.defer_self(
            item.message, now, until, provider=item.provider, ip=item.ip, why=why, kind=kind
        )

    async def _usable(
        self, group: _Group, lane: Lane, connection: Connection | None, now: float
    ) -> Connection | None:
        """The connection if it can take one more message now, else None (closed)."""
        if connection is None:
            return None
        if connection.alive and connection.messages < self._session_limit(group, lane, now):
            if now - connection.last_used <= NOOP_AFTER or await connection.noop():
                return connection
            # The server dropped the idle connection: a new one, the message is not lost.
            self._lane_closed(group)
            return None
        await connection.close()
        self._lane_closed(group)
        return None

    async def _connect(self, group: _Group, item: Item, now: float) -> Connection | None:
        """A new connection for this group, or None when the message was deferred (a probe
        pause after a refused connection) or the failure recorded."""
        conn_lane = self._conn_lane(group)
        connect_wait = conn_lane.connect_wait(now)
        if connect_wait > 0:
            # A receiver refused a connection moments ago: open none until the probe
            # pause ends. The connections that held go on sending.
            self._defer(
                item,
                now,
                now + connect_wait,
                why="waiting to open another connection",
                kind=f"connections to {group.destination.name} refused: probe pause",
            )
            return None
        key = _lane_key(group)
        await self._lane_slot(key, conn_lane.connection_cap(now, group.connections))
        connection = Connection(group.destination)
        self._connecting[key] += 1
        began = self.ctx.clock.now()
        try:
            sock = None
            if self.early is not None and self.early.target.serves(group.destination):
                early, self.early = self.early, None
                sock = await early.take()
                if sock is not None:
                    began = early.began
            failure = await connection.open(sock)
        finally:
            self._connecting[key] -= 1
        if failure is None:
            self._report_open(key)
            group.failures = 0
            connection.last_used = self.ctx.clock.now()  # just answered: no NOOP first
            # The receiver may count this lane's window from here (Pacer.window_starts).
            self.ctx.scheduler.lane(item.ip, item.provider).contacted(began)
            return connection
        self._lane_closed(group)
        if failure.code is None and not self._open.get(key):
            self._connection_failed(group)  # nobody answers: back the group off
        item.refusal = None  # the connect failure is this message's latest outcome
        self._connect_refused(group, item, failure)
        return None

    async def _lane_slot(self, lane_key: tuple[str, str], cap: int) -> None:
        """Take one of the lane's connection slots, waiting while all ``cap`` are open."""
        ip, provider = lane_key
        while self._open.get(lane_key, 0) >= max(cap, 1):
            # Wait for one of the lane's connections to close (not a poll on the injected
            # clock: an idle worker must not make time pass), asking idle workers of the
            # lane to give theirs up. Re-check now and then: the cap rises as a recovering
            # lane ramps up.
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
            if self.ctx.stop.is_set():
                break
            cap = self.ctx.scheduler.lane(ip, provider).connection_cap(self.ctx.clock.now(), cap)
        self._open[lane_key] = self._open.get(lane_key, 0) + 1

    def _report_open(self, key: tuple[str, str]) -> None:
        """Tell the lane how many of its connections are established (not still connecting):
        the concurrency that held."""
        self.ctx.scheduler.lane(*key).meter.opened(
            max(0, self._open.get(key, 0) - self._connecting[key])
        )

    def _lane_closed(self, group: _Group) -> None:
        key = _lane_key(group)
        self._open[key] = max(0, self._open.get(key, 0) - 1)
        self._report_open(key)
        freed = self._freed.get(key)
        if freed is not None:
            freed.set()

    def _connect_refused(self, group: _Group, item: Item, failure: Reply) -> None:
        """A connection that failed to open. A refusal (421 at the banner, a connection
        reset or refused) is a connection signal for the group's lane: fewer connections,
        the message rate untouched. Other replies at connect go to the message's lane."""
        ctx = self.ctx
        now = ctx.clock.now()
        refused = failure.code == 421 or (
            failure.code is None and "refused" in failure.text.lower()
        )
        if not refused:
            self._after_reply(item, failure)
            return
        lane = self._conn_lane(group)
        if failure.code is None:
            event = lane.on_connect_refused(failure.text, now)
        else:
            event = lane.on_reply(
                failure.text, failure.code, now, from_receiver=True, stage="connect"
            )
        if event.kind is not LaneEventKind.IGNORED:
            self._lane_event(event, item.message["campaign_id"], now)
        outcome = self._outcome(item, failure, event, now)
        ctx.budget.release(item.ip, item.provider)
        self.recorder.record(outcome)

    def _connection_failed(self, group: _Group) -> None:
        # Back off the whole group so a refusing server is not hammered: 1 s doubling to 5 min.
        group.failures += 1
        delay = min(300.0, 2.0 ** (group.failures - 1)) * self.ctx.rng.uniform(0.8, 1.2)
        group.paused_until = self.ctx.clock.now() + delay

    # ------------------------------------------------------------------ replies

    def _after_reply(
        self,
        item: Item,
        reply: Reply,
        *,
        group: _Group | None = None,
        busy: bool = False,
        may_retry: bool = False,
    ) -> LaneEvent:
        """Record a reply and feed it to the lane; returns the lane's event. With
        ``may_retry``, a throttle of the lane's message rate whose next slot is near is kept
        in ``item.refusal`` instead (`session_retry`), for the worker to send it again."""
        ctx, recorder = self.ctx, self.recorder
        now = ctx.clock.now()
        lane = ctx.scheduler.lane(item.ip, item.provider)
        if reply.ok:
            item.refusal = None
            lane.accepted(now, busy=busy)
            if group is not None:
                conn_lane = self._conn_lane(group)
                if group.conn_lane != (item.ip, item.provider):
                    conn_lane.accepted(now, busy=busy)
                if conn_lane.slow_start_grew():
                    # The next connection is due: its worker looks now, not at its next poll.
                    self._freed.setdefault(group.conn_lane, asyncio.Event()).set()
            recorder.sent(self._outcome(item, reply, NO_EVENT, now))
            return NO_EVENT
        verdict_scope = None
        if reply.code is not None:
            verdict_scope = classify_reply(
                reply.code, reply.text, item.provider, stage=reply.stage
            ).scope
        event = lane.on_reply(
            reply.text,
            reply.code,
            now,
            from_receiver=reply.from_receiver,
            stage=reply.stage,
            recipient_scoped=verdict_scope is Scope.RECIPIENT,
        )
        if event.pauses_lane or event.kind in (LaneEventKind.DISABLED, LaneEventKind.CONNECTIONS):
            self._lane_event(event, item.message["campaign_id"], now)
        outcome = self._outcome(item, reply, event, now)
        if may_retry and session_retry(reply, event, outcome, lane.ready_in(now), verdict_scope):
            item.refusal = outcome  # its budget stays taken: it goes again in a moment
            return event
        item.refusal = None
        ctx.budget.release(item.ip, item.provider)  # not sent: its place in the day goes back
        recorder.record(outcome)
        cid = item.message["campaign_id"]
        if event.kind is LaneEventKind.STOP_CAMPAIGN:
            why = event.reason or "stopped by rule"
            # A rule's reason is often the reply itself: say it once.
            ctx.stop_campaign(cid, why if reply.text in why else f"{why} ({reply.text})")
        elif outcome.state is MessageState.FAILED and outcome.scope == "campaign":
            ctx.stop_campaign(cid, f"the receiver refused the sender: {reply.text}")
        return event

    def _outcome(self, item: Item, reply: Reply, event: LaneEvent, now: float) -> Outcome:
        ctx = self.ctx
        lane_pause = (
            ctx.scheduler.lane(item.ip, item.provider).pause_wait(now) if event.pauses_lane else 0.0
        )
        return reply_outcome(
            item.message,
            reply,
            event,
            now,
            ip=item.ip,
            provider=item.provider,
            retry_delays=item.job.profile.retry_delays,
            max_age=item.job.max_age,
            lane_pause=lane_pause,
            rng=ctx.rng,
            day=ctx.budget.day_of(item.ip, now),
        )

    def _lane_event(self, event: LaneEvent, campaign_id: int, now: float) -> None:
        # Replies to messages already in flight repeat the event that paused the lane: one
        # record (and one line) per episode.
        key = (event.ip, event.provider, event.kind.value, event.rule)
        if now - self._last_lane_event.get(key, float("-inf")) < 60:
            return
        self._last_lane_event[key] = now
        self.ctx.store.add_lane_event(
            at=now,
            ip=event.ip,
            provider=event.provider,
            kind=event.kind.value,
            until=event.until,
            reason=event.reason,
            rule=event.rule,
            campaign_id=campaign_id,
        )
        until = f" until {hms(event.until)}" if event.until else ""
        self.ctx.say(
            f"lane {event.ip} -> {event.provider} {event.kind.value}{until}: {event.reason}"
            + (" [ALERT]" if event.alert else "")
        )
