"""Outcomes in, batched commits out: the run's counters, circuit breakers and lane stats.

Every outcome of the run goes through `Recorder.record`; `commit` writes the batch to the
store in one transaction, with the lanes' changed state and the run's heartbeat. A message
is never recorded as sent before its 250. Imports the store and the domain, not the CLI.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mailctl.config.profiles import TransportKind
from mailctl.delivery.attention import SenderFaults
from mailctl.delivery.context import SendContext, hms
from mailctl.delivery.outcome import Outcome, new_outcome
from mailctl.model import MessageState
from mailctl.recipients.address import address_key
from mailctl.reputation.breaker import BreakerPolicy, BreakerState, check_breaker
from mailctl.reputation.signals import ip_day_counts, smtp_suppressions
from mailctl.store.base import Store

# Pending outcomes that force a commit whatever the interval.
_MAX_PENDING = 2000


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
    possible_duplicates: int = 0  # this run's: no answer after the final dot, or cut off
    elapsed: float = 0.0
    stop_reason: str = "finished"
    next_attempt_at: float | None = None
    stopped_campaigns: dict[str, str] = field(default_factory=dict)
    # What the operator must fix before this mail can go (`delivery.attention`), or None.
    attention: str | None = None
    # Why the deferred messages of these campaigns wait, most common first.
    deferral_reasons: list[tuple[str, int]] = field(default_factory=list)

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
            "possible_duplicates": self.possible_duplicates,
            "elapsed": round(self.elapsed, 3),
            "stop_reason": self.stop_reason,
            "stopped_campaigns": self.stopped_campaigns,  # name -> why a breaker/rule stopped it
            "next_attempt_at": self.next_attempt_at,
            "attention": self.attention,
            "deferral_reasons": [
                {"reason": reason, "count": count} for reason, count in self.deferral_reasons
            ],
        }


# The summary counter each final state adds to (QUEUED, a release, counts nowhere).
_SUMMARY_FIELD = {
    MessageState.SENT: "sent",
    MessageState.DEFERRED: "deferred",
    MessageState.BOUNCED: "bounced",
    MessageState.FAILED: "failed",
    MessageState.EXPIRED: "expired",
    MessageState.SUPPRESSED: "suppressed",
}
# The lane counter each state adds to.
_LANE_FIELD = {
    MessageState.SENT: "sent",
    MessageState.DEFERRED: "deferred",
    MessageState.BOUNCED: "bounced",
    MessageState.FAILED: "failed",
    MessageState.EXPIRED: "failed",
}


@dataclass
class _Batch:
    """One commit: outcomes, with the lane rows that changed and maybe the heartbeat."""

    pending: list[Outcome]  # what is not written yet
    lanes: list[dict[str, Any]]
    run_id: int
    at: float
    heartbeat: bool

    def write(self, store: Store) -> None:
        """Outcomes in one transaction, then releases, lanes and the heartbeat. Each step
        that succeeds leaves ``pending``, so a failed write is retried from where it
        stopped and no outcome is counted twice."""
        done = [o for o in self.pending if o.state is not MessageState.QUEUED]
        released = [o for o in self.pending if o.state is MessageState.QUEUED]
        store.record_outcomes(done, ip_day_counts(done), smtp_suppressions(done))
        self.pending = released
        store.release([o.message_id for o in released])
        self.pending = []
        store.upsert_lanes(self.lanes)
        if self.heartbeat:
            store.heartbeat(self.run_id, self.at)


class Recorder:
    """The run's outcomes: counted at once, committed in batches."""

    def __init__(self, ctx: SendContext, on_commit: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.on_commit = on_commit
        self.summary = RunSummary(campaigns=[job.name for job in ctx.jobs.values()])
        self.lanes: dict[tuple[str, str], LaneStats] = {}
        # Address keys hard-bounced in this run, any campaign, any spelling.
        self.suppressed_in_run: set[str] = set()
        self.fatal: BaseException | None = None  # a commit failed: the run stops and says so
        self.faults = SenderFaults()  # sending-side failures toward relays, for cron's exit
        self._pending: list[Outcome] = []
        self._writing: tuple[Future[None], _Batch] | None = None  # on the store thread
        self._sent_by_lane: Counter[tuple[str, str]] = Counter()
        self._last_commit = 0.0
        self._last_heartbeat = 0.0
        self._breakers: dict[int, BreakerState] = {}
        for cid in ctx.jobs:
            counts = ctx.store.message_counts(cid)
            self._breakers[cid] = BreakerState(
                sent=counts[MessageState.SENT]
                + counts[MessageState.BOUNCED]
                + counts[MessageState.COMPLAINED],
                bounced=counts[MessageState.BOUNCED],
                complained=counts[MessageState.COMPLAINED],
            )

    # ------------------------------------------------------------------ outcomes

    def outcome_for(
        self,
        message: dict[str, Any],
        state: MessageState,
        now: float,
        *,
        attempted: bool,
        **extra: Any,
    ) -> Outcome:
        ip = extra.get("ip")
        day = self.ctx.budget.day_of(ip, now) if ip else None
        return new_outcome(message, state, now, attempted=attempted, day=day, **extra)

    def release(self, messages: Iterable[dict[str, Any]], now: float) -> None:
        """Claimed, never attempted: back to the queue."""
        for message in messages:
            self.record(self.outcome_for(message, MessageState.QUEUED, now, attempted=False))

    def sent(self, outcome: Outcome) -> None:
        """The hot path: a 250 changes no lane state (sent counts go in bulk at commit)."""
        assert outcome.ip is not None and outcome.provider is not None
        self._sent_by_lane[(outcome.ip, outcome.provider)] += 1
        self.record(outcome)

    def record(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        if outcome.possible_duplicate:
            self.summary.possible_duplicates += 1
        if outcome.attempted:
            if outcome.code is not None:
                self.faults.answered += 1
            if outcome.fault is not None:
                job = self.ctx.jobs[outcome.campaign_id]
                if job.profile.transport is TransportKind.RELAY:
                    # Toward an MX it is the receiver's problem; toward our relay, ours.
                    self.faults.add(outcome.fault, outcome.reply)
        if outcome.suppress:
            self.suppressed_in_run.add(address_key(outcome.email))
        state = outcome.state
        counter = _SUMMARY_FIELD.get(state)
        if counter is not None:
            setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        if outcome.attempted and state in (MessageState.SENT, MessageState.BOUNCED):
            self._judge(outcome.campaign_id, bounced=state is MessageState.BOUNCED)
        if outcome.ip is not None and outcome.provider is not None:
            if state is not MessageState.QUEUED:
                lane = self._lane(outcome.ip, outcome.provider)
                lane_counter = _LANE_FIELD.get(state)
                if lane_counter is not None:
                    setattr(lane, lane_counter, getattr(lane, lane_counter) + 1)
        if len(self._pending) >= _MAX_PENDING:
            self.commit(force=True)

    def _judge(self, campaign_id: int, *, bounced: bool) -> None:
        """The campaign's circuit breaker, after one more answered message."""
        breaker = self._breakers[campaign_id].add(sent=1, bounced=int(bounced))
        self._breakers[campaign_id] = breaker
        policy = BreakerPolicy.from_config(self.ctx.jobs[campaign_id].profile.breakers)
        # A rate crosses its threshold on a bounce, or when the count reaches min_sent
        # (bounces before it were not judged yet).
        if bounced or breaker.sent == policy.min_sent:
            trip = check_breaker(breaker, policy)
            if trip is not None:
                self.ctx.stop_campaign(campaign_id, trip.reason)

    def defer_self(
        self,
        message: dict[str, Any],
        now: float,
        until: float,
        *,
        provider: str | None,
        why: str,
        kind: str,
        ip: str | None = None,
        may_expire: bool = True,
    ) -> None:
        """mailctl's own deferral: no attempt, no reply, never feeds a rule.

        ``kind`` says why in words that group (no times); ``why`` is the full reason the
        message carries in the queue.

        A message that cannot go anywhere (DNS failing, its lane disabled) still expires at
        its maximum age; one waiting for warm-up capacity (``may_expire=False``) never does.
        """
        if until == float("inf"):
            until = now + 3600
        if may_expire:
            job = self.ctx.jobs[message["campaign_id"]]
            first = message.get("first_attempt_at") or message["queued_at"]
            if until > first + job.max_age:
                self.record(
                    self.outcome_for(
                        message,
                        MessageState.EXPIRED,
                        now,
                        attempted=False,
                        ip=ip,
                        provider=provider,
                        reason="expired",
                        reply=f"{why} (past the maximum age)",
                    )
                )
                return
        self.record(
            self.outcome_for(
                message,
                MessageState.DEFERRED,
                now,
                attempted=False,
                next_attempt_at=max(until, now),
                ip=ip,
                provider=provider,
                reason="mailctl",
                reply=why,
                wait_kind=kind,
                wait_reason=why,
            )
        )

    def cut_off(self, messages: list[dict[str, Any]], now: float) -> None:
        """Messages cut off mid-transaction: queued again, marked as possible duplicates
        (they may have been delivered)."""
        self.release(messages, now)
        self.summary.possible_duplicates += len(messages)
        if messages:
            self.ctx.store.mark_possible_duplicates([message["id"] for message in messages])

    def _lane(self, ip: str, provider: str) -> LaneStats:
        lane = self.lanes.get((ip, provider))
        if lane is None:
            lane = self.lanes[(ip, provider)] = LaneStats(ip=ip, provider=provider)
        return lane

    # ------------------------------------------------------------------ commits

    def commit_due(self) -> None:
        """Commit when the interval has passed on the clock; a failure stops the run."""
        if self.fatal is not None:
            return
        try:
            self.commit()
        except Exception as exc:  # noqa: BLE001 - the run stops and says why
            self.fatal = exc
            self.ctx.stop.set()
            self.ctx.wake.set()

    def commit(self, force: bool = False) -> None:
        """Write the pending outcomes (once ``commit_interval`` has passed, or ``force``).

        With a store thread the write goes there and the loop goes on; the next call
        settles it (an error is raised there, with the batch pending again). Only one write
        is on its way at a time: outcomes that come meanwhile wait for the next. A forced
        commit waits for the one on its way and writes the rest here, before returning."""
        ctx = self.ctx
        if self._writing is not None:
            if not force and not self._writing[0].done():
                return
            self._settle()
        now = ctx.clock.now()
        if not self._pending or (
            not force and now - self._last_commit < ctx.options.commit_interval
        ):
            return
        batch = self._take(now)
        thread = ctx.store_thread
        if thread is not None and not force:
            self._writing = (thread.submit(batch.write), batch)
            return
        try:
            batch.write(ctx.store)
        except BaseException:
            self._restore(batch)
            raise
        self._written(batch)

    def _take(self, now: float) -> _Batch:
        """The pending outcomes as one write, with the lanes they changed."""
        ctx = self.ctx
        pending, self._pending = self._pending, []
        for (ip, provider), count in self._sent_by_lane.items():
            ctx.scheduler.lane(ip, provider).count_sent(count, now)
        self._sent_by_lane.clear()
        heartbeat = now - self._last_heartbeat >= ctx.options.heartbeat_interval
        return _Batch(
            pending,
            [state.to_row() for state in ctx.scheduler.changed_states()],
            ctx.run_id,
            now,
            heartbeat,
        )

    def _settle(self) -> None:
        """The write on its way, finished: waited for if it is not done yet."""
        assert self._writing is not None
        future, batch = self._writing
        self._writing = None
        try:
            future.result()
        except BaseException:
            self._restore(batch)
            raise
        self._written(batch)

    def _restore(self, batch: _Batch) -> None:
        """A write that failed: its outcomes pending again (nothing is lost), its lanes
        changed again."""
        self._pending = batch.pending + self._pending
        for row in batch.lanes:
            self.ctx.scheduler.lane(row["ip"], row["provider"]).changed = True

    def _written(self, batch: _Batch) -> None:
        self._last_commit = batch.at
        if batch.heartbeat:
            self._last_heartbeat = batch.at
        if self.on_commit is not None:
            self.on_commit()

    def lane_rows(self) -> list[dict[str, Any]]:
        """Progress rows: this run's counters with each lane's current state."""
        now = self.ctx.clock.now()
        rows = []
        for (ip, provider), stats in self.lanes.items():
            snapshot = self.ctx.scheduler.lane(ip, provider).snapshot(now)
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
                    else f"{snapshot.mode.value} until {hms(snapshot.until)}",
                }
            )
        return rows
