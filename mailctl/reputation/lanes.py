"""Lanes (sending IP x provider): token buckets, connection caps, pauses, gradual recovery.

A lane is what a provider judges: one of our IPs sending to its servers. Everything here is
pure and clock-free: every method takes ``now`` (epoch seconds) and jitter comes from an
injected `random.Random`, so throttling is tested without sleeping.

* `Lane.admit` hands out send permits from token buckets (per minute / hour / day, with a
  burst) and says how long to wait when there is none or the lane is paused.
* `Lane.on_reply` feeds a receiver's reply through the rules (`rules.RuleSet`): a match acts
  (suspend, slow down, disable, stop the campaign, defer the recipient), possibly only on the
  N-th match within a window; a 421 that no rule names backs the lane off exponentially with
  jitter. Replies mailctl makes up itself (``from_receiver=False``) never act.
* After any pause the lane recovers gradually: a quarter of the earlier rate and one
  connection, then x1.25 rate and +1 connection per clean interval, limits raised at most once
  a minute. It never snaps back to full speed.
* `LaneState` is the whole persistent state of a lane (`to_row` / `from_row`), so a cron run
  at 10:10 honours a 2-hour suspension set by the run at 10:00.
* What a lane learns from receivers (acceptance rate, connections that held, AIMD cuts and
  increases) is computed in `mailctl.reputation.aimd`; the lane applies it.
* `Scheduler` (reputation/scheduler.py) holds the lanes; `check_breaker`
  (reputation/breaker.py) is the campaign circuit breaker.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from mailctl.config.provider_rules import Action, LaneLimits, ReplyRule
from mailctl.replies.classify import parse_reply_code
from mailctl.replies.rules import RuleMatch, RuleSet
from mailctl.reputation.aimd import (
    AimdPolicy,
    Meter,
    Pacer,
    cut_connections,
    cut_rate,
    probe_offset,
    probe_pause,
    recent_times,
    relax,
    step_up,
)
from mailctl.reputation.lane_state import (
    LaneEvent,
    LaneEventKind,
    LaneMode,
    LaneSnapshot,
    LaneState,
    RecoveryPolicy,
)

__all__ = [
    "Lane",
    "LaneEvent",
    "LaneEventKind",
    "LaneMode",
    "LaneSnapshot",
    "LaneState",
    "RecoveryPolicy",
]

_EPSILON = 1e-9  # float slack when a refilled bucket lands a hair under one token
_WINDOWS = (60.0, 3600.0, 86400.0)  # per_minute, per_hour, per_day

# --------------------------------------------------------------------------------------------
# A lane


def _scaled(base: LaneLimits, factor: float, connections: int) -> LaneLimits:
    def rate(value: float | None) -> float | None:
        return None if value is None else value * factor

    return replace(
        base,
        connections=max(1, min(base.connections, connections)),
        per_minute=rate(base.per_minute),
        per_hour=rate(base.per_hour),
        per_day=rate(base.per_day),
        burst=max(1, math.floor(base.burst * factor)),
    )


def _rate_factor(limits: LaneLimits, base: LaneLimits) -> float:
    """How fast ``limits`` lets the lane go compared with ``base`` (the slowest window)."""
    ratios = [
        lim / full
        for lim, full in (
            (limits.per_minute, base.per_minute),
            (limits.per_hour, base.per_hour),
            (limits.per_day, base.per_day),
        )
        if lim is not None and full
    ]
    return min(ratios, default=1.0)


class Lane:
    """One sending IP towards one provider. Not thread-safe; the engine's loop owns it."""

    def __init__(
        self,
        state: LaneState,
        rules: RuleSet,
        *,
        policy: RecoveryPolicy | None = None,
        rng: random.Random | None = None,
        aimd: AimdPolicy | None = None,
    ) -> None:
        self.state = state
        self.rules = rules
        self.policy = policy or RecoveryPolicy()
        self.rng = rng or random.Random()
        self.aimd = aimd or AimdPolicy()
        self.meter = Meter(self.aimd)
        self.pacer = Pacer(self.aimd)
        # The end of the last message-rate pause: a message accepted after it is progress,
        # so the next throttle starts its pause short again.
        self._progress_after: float | None = None
        # The slow start (in memory): connections allowed, and since when.
        self._slow_cap = 1
        self._slow_at: float | None = None
        self._conn_probed = False  # a learned connection count grows once per run at most
        self._seeded = False  # the earlier run's recent acceptances taken into the meter
        self.changed = False  # set on every state change, cleared by Scheduler.changed_states

    @property
    def ip(self) -> str:
        return self.state.ip

    @property
    def provider(self) -> str:
        return self.state.provider

    @property
    def base(self) -> LaneLimits:
        """The provider's limits from the rules (profile overrides included)."""
        return self.rules.limits_for(self.provider)

    def _set(self, state: LaneState, now: float) -> None:
        self.state = replace(state, updated_at=now)
        self.changed = True

    # ---------------------------------------------------------------- time passing

    def _min_factor(self) -> float:
        per_minute = self.base.per_minute
        if not per_minute:
            return 0.01
        return min(1.0, self.policy.min_rate_per_minute / per_minute)

    def _start_ramp(self, s: LaneState, at: float) -> LaneState:
        start = max(self._min_factor(), self.policy.start_fraction * s.earlier_factor)
        if s.mode is LaneMode.SLOWED and s.slow_limits is not None:
            # Never slower after a slow period than during it.
            start = max(start, _rate_factor(s.slow_limits, self.base))
            held = s.slow_limits.per_minute
            if held:
                # The provider's documented rate held for the whole period: grow additively
                # from it (aimd.step_up, in steps sized by it), not from a share of the
                # ceiling or of a burst's rate, which is what throttled the lane.
                s = replace(s, learned_rate=held, learned_peak=held, learned_step_at=at)
        return replace(
            s,
            mode=LaneMode.NORMAL,
            until=None,
            reason=f"recovering after: {s.reason}" if s.reason else "recovering",
            slow_limits=None,
            slow_until=None,
            ramp_factor=min(1.0, start),
            ramp_connections=1,
            last_change_at=at,
            alert=False,
        )

    def _slowed_pace(self, s: LaneState) -> bool:
        """Whether a slow period lowered rate or connections (then it ends in a ramp)."""
        slow, base = s.slow_limits, self.base
        if slow is None:
            return False
        return slow.connections < base.connections or _rate_factor(slow, base) < 1.0

    def _advance(self, now: float) -> None:
        """Apply the transitions that time alone causes, lazily, as of ``now``."""
        if not self._seeded:
            # What the receiver accepted from this lane in the last window, in earlier runs:
            # it still counts them (the burst a first refusal teaches includes them).
            self._seeded = True
            times = recent_times(self.state.recent_accepts, now, self.aimd)
            self.meter.seed(times)
            self.pacer.seed(times)
        s = self.state
        start = s
        if s.learned_rate is not None or s.learned_connections is not None:
            s = relax(
                s, now, self.aimd, ceiling_rate=self.base.per_minute,
                ceiling_connections=self.base.connections,
            )  # fmt: skip
        for _ in range(4):  # at most suspended -> slowed -> normal
            if s.until is None or now < s.until:
                break
            if s.mode is LaneMode.SUSPENDED and s.probing:
                # A probe pause ends where it began: the learned caps govern, no ramp.
                s = replace(
                    s, mode=LaneMode.NORMAL, until=None, reason=None, rule=None, probing=False,
                )  # fmt: skip
                break
            if s.mode is LaneMode.SUSPENDED and s.slow_limits is not None and s.slow_until:
                if s.slow_until > (s.until or 0.0):
                    s = replace(
                        s, mode=LaneMode.SLOWED, until=s.slow_until, slow_until=None,
                        last_change_at=s.until,
                    )  # fmt: skip
                    continue
            if s.mode is LaneMode.SLOWED and not self._slowed_pace(s):
                s = replace(
                    s, mode=LaneMode.NORMAL, until=None, reason=None, slow_limits=None,
                    slow_until=None, last_change_at=s.until,
                )  # fmt: skip
                break
            if s.mode is LaneMode.SUSPENDED and s.rule is None:
                s = replace(s, last_resume_at=s.until)  # a backoff ended
            s = self._start_ramp(s, s.until)  # type: ignore[arg-type]
            break
        if s.mode is LaneMode.NORMAL and s.ramp_factor is not None:
            s = self._ramp_steps(s, now)
        if s is not start:
            self._set(s, now)

    def _ramp_steps(self, s: LaneState, now: float) -> LaneState:
        interval = self.policy.step_interval
        last = s.last_change_at if s.last_change_at is not None else now
        steps = int((now - last) // interval)
        if steps <= 0:
            return s
        factor = min(1.0, (s.ramp_factor or 1.0) * self.policy.step**steps)
        connections = min(self.base.connections, (s.ramp_connections or 1) + steps)
        if factor >= 1.0 and connections >= self.base.connections:
            return replace(
                s, ramp_factor=None, ramp_connections=None, reason=None,
                last_change_at=last + steps * interval,
            )  # fmt: skip
        return replace(
            s, ramp_factor=factor, ramp_connections=connections,
            last_change_at=last + steps * interval,
        )  # fmt: skip

    # ---------------------------------------------------------------- limits and permits

    def _limits_of(self, s: LaneState) -> LaneLimits:
        base = self.base
        if s.mode is LaneMode.SLOWED and s.slow_limits is not None:
            return s.slow_limits
        if s.mode in (LaneMode.SUSPENDED, LaneMode.DISABLED):
            return replace(base, connections=0)
        if s.ramp_factor is not None:
            return _scaled(base, s.ramp_factor, s.ramp_connections or 1)
        return base

    def limits(self, now: float) -> LaneLimits:
        """The limits in force at ``now``: size the lane's connections and reuse by these.

        ``connections`` is 0 while the lane is suspended or disabled. What the lane learned
        caps the rate and the connections; the ceilings stay upper bounds.
        """
        self._advance(now)
        return self._learned_caps(self._limits_of(self.state), self.state)

    def _learned_caps(self, limits: LaneLimits, s: LaneState) -> LaneLimits:
        if s.learned_rate is None and s.learned_connections is None:
            return limits
        per_minute = limits.per_minute
        burst = limits.burst
        if s.learned_rate is not None:
            per_minute = s.learned_rate if per_minute is None else min(per_minute, s.learned_rate)
            # A learned rate is paced evenly: at most a second's worth at once.
            burst = max(1, min(burst, math.floor(per_minute / 60.0)))
        connections = limits.connections
        if s.learned_connections is not None and connections > 0:
            connections = max(1, min(connections, s.learned_connections))
        return replace(limits, per_minute=per_minute, burst=burst, connections=connections)

    def connection_cap(self, now: float, configured: int | None = None) -> int:
        """How many connections the lane may hold now: the limits' (and ``configured``, the
        group's own count), and, until a receiver refused one, one more per
        `AimdPolicy.slow_start` accepted messages (a slow start: never open them all at once)."""
        cap = self.limits(now).connections
        if configured is not None:
            cap = min(cap, configured)
        if cap <= 0:
            return 0
        if self.state.learned_connections is None:
            # One new connection at a time: the next only once all allowed ones hold and
            # carried mail for a while (the wait doubling per connection). A receiver that
            # limits connections refuses the one too many: rather never reach it than be
            # refused for a few seconds' gain.
            if self._slow_at is None:
                self._slow_at = now
            a = self.aimd
            due = self._slow_at
            if self._slow_cap >= 2:
                due += a.slow_start_interval * 2 ** min(10, self._slow_cap - 2)
            if (
                now >= due
                and self.meter.open >= self._slow_cap
                and self.meter.accepted_total >= a.slow_start * self._slow_cap
            ):
                self._slow_cap += 1
                self._slow_at = now
            cap = min(cap, self._slow_cap, self.meter.open + 1)
        return max(1, cap)

    def slow_start_grew(self) -> bool:
        """Whether the last acceptance completed the count the slow start's next connection
        waits for (`connection_cap`): a worker waiting for its turn should look now."""
        return (
            self.state.learned_connections is None
            and self.meter.accepted_total == self.aimd.slow_start * self._slow_cap
        )

    def connect_wait(self, now: float) -> float:
        """Seconds until the lane may open another connection (after a connection signal)."""
        until = self.state.connect_until
        return 0.0 if until is None else max(0.0, until - now)

    def _pace_factor(self, s: LaneState) -> float:
        if s.mode is LaneMode.SLOWED and s.slow_limits is not None:
            return _rate_factor(s.slow_limits, self.base)
        return s.ramp_factor if s.ramp_factor is not None else 1.0

    def pause_wait(self, now: float) -> float:
        """Seconds until a suspension ends (inf while disabled without an end), else 0."""
        self._advance(now)
        s = self.state
        if s.mode is LaneMode.DISABLED:
            return math.inf if s.until is None else max(0.0, s.until - now)
        if s.mode is LaneMode.SUSPENDED and s.until is not None:
            return max(0.0, s.until - now)
        return 0.0

    def _buckets(self, limits: LaneLimits) -> list[tuple[float, float] | None]:
        """(rate per second, capacity) for each window with a limit."""
        buckets: list[tuple[float, float] | None] = []
        for window, limit in zip(
            _WINDOWS, (limits.per_minute, limits.per_hour, limits.per_day), strict=True
        ):
            if limit is None:
                buckets.append(None)
            else:
                buckets.append((limit / window, max(1.0, min(float(limits.burst), limit))))
        return buckets

    def _refilled(self, now: float, buckets: list[tuple[float, float] | None]) -> list[float]:
        s = self.state
        if s.tokens is None or s.tokens_at is None:
            return [b[1] if b else 0.0 for b in buckets]  # a new lane starts with its burst
        elapsed = max(0.0, now - s.tokens_at)
        return [
            min(b[1], tokens + b[0] * elapsed) if b else 0.0
            for tokens, b in zip(s.tokens, buckets, strict=True)
        ]

    def _token_wait(
        self, now: float
    ) -> tuple[float, list[float], list[tuple[float, float] | None]]:  # noqa: E501
        buckets = self._buckets(self._limits_of(self.state))
        tokens = self._refilled(now, buckets)
        wait = 0.0
        for level, bucket in zip(tokens, buckets, strict=True):
            if bucket is not None and level < 1.0 - _EPSILON:
                wait = max(wait, (1.0 - level) / bucket[0])
        return wait, tokens, buckets

    def ready_in(self, now: float) -> float:
        """Seconds until `admit` would say yes; does not take a permit."""
        pause = self.pause_wait(now)
        if pause > 0:
            return pause
        return max(self._token_wait(now)[0], self.pacer.wait(now, self.state.learned_rate))

    def contacted(self, at: float) -> None:
        """A connection that will carry this lane's messages began at ``at`` (the run's
        first counts: `Pacer.window_starts`)."""
        self.pacer.contacted(at)

    def admit(self, now: float) -> float:
        """0.0 and a permit taken: send one message now. Otherwise the seconds to wait
        (until a token, or the end of a pause; inf while disabled) and nothing taken."""
        pause = self.pause_wait(now)
        if pause > 0:
            return pause
        paced = self.pacer.wait(now, self.state.learned_rate)
        if paced > 0:
            return paced  # what the receiver was learned to take (reputation/aimd.py)
        wait, tokens, buckets = self._token_wait(now)
        if wait > 0:
            return wait
        self.pacer.permit(now, self.state.learned_rate)
        if not any(buckets):
            return 0.0  # no rate limit on this lane: nothing to take, no state to write
        taken = tuple(
            max(0.0, level - 1.0) if bucket else 0.0
            for level, bucket in zip(tokens, buckets, strict=True)
        )
        self._set(replace(self.state, tokens=taken, tokens_at=now), now)  # type: ignore[arg-type]
        return 0.0

    # ---------------------------------------------------------------- replies

    def count_sent(self, count: int, now: float) -> None:
        """Delivered messages, counted in bulk (a 250 changes nothing else in a lane)."""
        if count:
            s = self.state
            self._set(replace(s, sent=s.sent + count, recent_accepts=self.meter.recent(now)), now)

    def _event(self, kind: LaneEventKind, **fields: Any) -> LaneEvent:
        return LaneEvent(kind, self.ip, self.provider, **fields)

    def accepted(self, now: float, *, busy: bool = True) -> None:
        """A message the receiver accepted: measure it, and take an additive step when a clean
        interval has passed (``busy``: the lane had more work waiting, so a larger cap would
        have been used)."""
        self.meter.accepted(now)
        s = self.state
        if self.pacer.accepted():
            # The receiver took a message after a shorter window than before: the learned
            # rate rises to what that window implies (never past the ceiling).
            rate = self.pacer.rate()
            ceiling = self.base.per_minute
            if rate is not None and (ceiling is None or rate < ceiling):
                s = replace(s, learned_rate=rate, learned_peak=self.pacer.peak(),
                            learned_step_at=now)  # fmt: skip
                self._set(s, now)
        if self._progress_after is not None and now >= self._progress_after:
            # Progress since the last message-rate throttle: the next one is a new episode.
            self._progress_after = None
            if s.probe_level:
                s = replace(s, probe_level=0)
                self._set(s, now)
        if s.learned_rate is None and s.learned_connections is None:
            if s.probe_level and s.learned_at is not None:
                if now - s.learned_at >= self.aimd.episode_gap:
                    self._set(replace(s, probe_level=0), now)
            return
        stepped = step_up(
            s, now, self.aimd, ceiling_rate=self.base.per_minute,
            ceiling_connections=self.base.connections,
            connections_due=busy and self.meter.open >= (s.learned_connections or 0),
        )  # fmt: skip
        if (stepped.learned_connections or 0) > (s.learned_connections or 0) or (
            stepped.learned_connections is None and s.learned_connections is not None
        ):
            if self._conn_probed:
                # One more connection than a receiver took is tried once per run at most.
                stepped = replace(
                    stepped, learned_connections=s.learned_connections,
                    learned_conn_at=s.learned_conn_at,
                )  # fmt: skip
            self._conn_probed = True
        if self.pacer.learned:
            # The pacer's bisection is this lane's additive increase: keep its rate.
            stepped = replace(
                stepped, learned_rate=s.learned_rate, learned_peak=s.learned_peak,
                learned_step_at=s.learned_step_at,
            )  # fmt: skip
        if stepped.probe_level and s.learned_at is not None:
            if now - s.learned_at >= self.aimd.episode_gap:
                stepped = replace(stepped, probe_level=0)
        if stepped != s:
            self._set(stepped, now)

    def on_reply(
        self,
        reply_text: str,
        code: int | None,
        now: float,
        *,
        from_receiver: bool,
        stage: str | None = None,
        recipient_scoped: bool = False,
    ) -> LaneEvent:
        """Apply what a reply means to this lane, and say what happened.

        ``from_receiver=False`` is for deferrals mailctl made itself (lane paused, cap
        reached, connection never made): they never trigger, extend or count anything.
        ``stage`` is the command it answered ("connect" for the banner, EHLO ...): a refusal
        there is a connection signal. ``recipient_scoped`` (the classifier's word) keeps an
        unclassified 4xx about one recipient out of the throttle count.
        """
        if not from_receiver:
            return self._event(LaneEventKind.IGNORED, reason="not a receiver's reply")
        self._advance(now)
        code = code if code is not None else parse_reply_code(reply_text)
        if code is not None and 200 <= code < 300:
            self._set(replace(self.state, sent=self.state.sent + 1), now)
            return self._event(LaneEventKind.NONE)
        found = self.rules.match(reply_text, self.provider)
        if found is not None:
            return self._apply(found, now, stage)
        if code is not None and 400 <= code < 500:
            self._set(replace(self.state, deferred=self.state.deferred + 1), now)
        if stage == "connect" and code == 421:
            return self.on_connect_refused(reply_text, now)
        if code == 421:
            return self._backoff(reply_text, now)
        if code is not None and 400 <= code < 500 and not recipient_scoped:
            if self.meter.unclassified(now):
                return self._backoff(reply_text, now)
        return self._event(LaneEventKind.NONE)

    def on_connect_refused(
        self,
        reply_text: str,
        now: float,
        *,
        rule: str | None = None,
        factor: float | None = None,
        held: int | None = None,
    ) -> LaneEvent:
        """A connection refused, or answered 421 at connect: a connection signal. The lane
        keeps the connections that held (the ones open now) and opens no new one for a probe
        pause; its message rate is left alone. Connections already open keep sending."""
        s = self.state
        if s.connect_until is not None and now < s.connect_until:
            return self._event(
                LaneEventKind.IGNORED, until=s.connect_until, reason="same episode",
                retry_after=s.connect_until - now,
            )  # fmt: skip
        level, pause = probe_pause(s, now, self.aimd, self.rng)
        held = self.meter.open if held is None else held
        text = " ".join(reply_text.split())
        s = cut_connections(s, held, now, factor=factor if held and factor and held > 1 else None)
        s = replace(
            s, connect_until=now + pause, probe_level=level, throttled=s.throttled + 1,
            learned_reason=text, learned_at=now, learned_observed=self.meter.describe(now),
        )  # fmt: skip
        self._set(s, now)
        return self._event(
            LaneEventKind.CONNECTIONS, until=now + pause, reason=text, rule=rule,
            retry_after=pause,
        )  # fmt: skip

    def _throttle(
        self,
        reply_text: str,
        now: float,
        *,
        rule: str | None = None,
        factor: float | None = None,
        pause: float | None = None,
        ceiling: float | None = None,
        kind: LaneEventKind = LaneEventKind.BACKOFF,
    ) -> LaneEvent:
        """A message signal: cut the learned rate from the observed one, then pause (the
        rule's named pause, else a short probe pause that doubles on repeats)."""
        s = self.state
        if (
            s.mode in (LaneMode.SUSPENDED, LaneMode.DISABLED)
            and s.until is not None
            and now < s.until
        ):
            # Replies to messages already in flight when the lane paused: same episode.
            self.pacer.refund()
            return self._event(
                LaneEventKind.IGNORED, until=s.until, reason="lane already paused",
                retry_after=s.until - now,
            )  # fmt: skip
        text = " ".join(reply_text.split())
        observed = self.meter.describe(now)
        falls_back = self.pacer.refused(unpaced=s.learned_rate is None)
        if falls_back and pause is None:
            # A window shorter than one already accepted was refused: back to that window,
            # no pause (the pacer spaces the next message), the bisection narrowed.
            s = replace(
                s, learned_rate=self.pacer.rate() or s.learned_rate,
                learned_peak=self.pacer.peak(), learned_step_at=now, learned_reason=text,
                learned_at=now, learned_observed=observed, throttled=s.throttled + 1,
            )  # fmt: skip
            self._set(s, now)
            retry = max(self.aimd.probe_poll, self.pacer.wait(now, s.learned_rate))
            return self._event(kind, reason=text, rule=rule, retry_after=retry)
        # A pause that ends in the pacer's lone probe needs no jitter (one message).
        level, probe = probe_pause(s, now, self.aimd, self.rng, jitter=self.pacer.burst is None)
        wait = probe if pause is None else pause
        starts = self.pacer.window_starts()
        if pause is None and starts:
            # A receiver counts its window from where it began, not from the refusal that
            # ended it, and many count whole seconds (Postfix's anvil): each probe of the
            # episode goes just after a second turns, as many seconds after the second the
            # window began in as the episode's pauses add up to (2, 6, 14 s ...). Counted
            # from each refusal instead, the probes drift later by the burst's length and
            # the replies' delays, and miss the second the window opens in. Where the
            # window may have begun in either of two seconds, each is tried in turn.
            margin = self.aimd.tick_margin
            opens = min(
                (
                    t
                    for start in starts
                    for reached in range(1, level + 1)
                    if (t := math.floor(start) + probe_offset(reached, self.aimd) + margin) > now
                ),
                default=None,
            )
            if opens is not None and opens < now + wait:
                wait = opens - now
        self._progress_after = now + wait
        if level > 1 and s.learned_at is not None and not self.meter.accepted_since(s.learned_at):
            # A repeat that met the first messages after the pause: the receiver has not
            # recovered yet. Nothing was learned since the last cut (the observed rate is only
            # diluted by the pause), so wait longer (the pause doubles) without cutting again.
            observed = s.learned_observed or observed
        else:
            s = cut_rate(s, self.meter.rate(now), now, self.aimd, factor=factor, ceiling=ceiling)
        s = replace(
            s, probe_level=level, throttled=s.throttled + 1, learned_reason=text,
            learned_at=now, learned_observed=observed,
        )  # fmt: skip
        if s.mode is LaneMode.DISABLED:
            self._set(s, now)
            return self._event(LaneEventKind.IGNORED, until=s.until, reason="lane disabled")
        if s.mode is LaneMode.SLOWED and s.until is not None and s.until > now + wait:
            # Pause, then the slow period a documented rule set goes on.
            s = replace(
                s, mode=LaneMode.SUSPENDED, slow_until=s.until, until=now + wait, probing=False,
            )  # fmt: skip
        else:
            s = replace(
                s, mode=LaneMode.SUSPENDED, until=now + wait, reason=text, rule=rule,
                probing=True, last_change_at=now,
            )  # fmt: skip
        self._set(s, now)
        return self._event(kind, until=now + wait, reason=text, rule=rule, retry_after=wait)

    def _triggered(self, rule: ReplyRule, now: float) -> bool:
        """Record a match of a triggered rule; True when it reaches its count."""
        assert rule.trigger is not None
        hits = dict(self.state.hits)
        recent = [t for t in hits.get(rule.id, ()) if now - t < rule.trigger.window] + [now]
        fired = len(recent) >= rule.trigger.count
        hits[rule.id] = () if fired else tuple(recent)
        kept = tuple(sorted((rid, times) for rid, times in hits.items() if times))
        self._set(replace(self.state, hits=kept), now)
        return fired

    def _apply(self, found: RuleMatch, now: float, stage: str | None = None) -> LaneEvent:
        rule = found.rule
        s = self.state
        if rule.action is Action.DEFER_RECIPIENT:
            self._set(replace(s, deferred=s.deferred + 1), now)
            return self._event(
                LaneEventKind.DEFER_RECIPIENT, rule=rule.id, retry_after=found.retry_after
            )
        if rule.action is Action.BOUNCE_RECIPIENT:
            return self._event(LaneEventKind.BOUNCE_RECIPIENT, rule=rule.id)
        if rule.action is Action.STOP_CAMPAIGN:
            return self._event(
                LaneEventKind.STOP_CAMPAIGN, rule=rule.id, reason=found.reply, alert=True
            )
        if rule.trigger is not None and not self._triggered(rule, now):
            return self._event(LaneEventKind.COUNTED, rule=rule.id, reason=found.reply)
        s = self.state
        s = replace(s, throttled=s.throttled + 1)
        if s.mode is LaneMode.DISABLED:
            # Out of rotation already: nothing short of `lanes resume` brings it back.
            self._set(s, now)
            return self._event(LaneEventKind.IGNORED, until=s.until, reason="lane disabled")
        if rule.action is Action.DISABLE_IP:
            until = now + rule.duration if rule.duration else None
            s = replace(
                s, mode=LaneMode.DISABLED, until=until, reason=found.reply, rule=rule.id,
                alert=rule.alert, slow_limits=None, slow_until=None, ramp_factor=None,
                ramp_connections=None, earlier_factor=self._earlier(s), last_change_at=now,
            )  # fmt: skip
            self._set(s, now)
            return self._event(
                LaneEventKind.DISABLED, until=until, reason=found.reply, rule=rule.id, alert=True
            )
        # Every lane throttle teaches the lane: the cut from the observed rate.
        observed = self.meter.describe(now)
        s = cut_rate(s, self.meter.rate(now), now, self.aimd)
        s = replace(s, learned_reason=found.reply, learned_at=now, learned_observed=observed)
        if rule.action is Action.SUSPEND:
            assert rule.duration is not None
            return self._suspend(s, now + rule.duration, found.reply, rule.id, rule.alert, now)
        assert rule.limits is not None
        if not rule.limits.adaptive:
            # A number the provider documents (Gmail's 10/min, Microsoft's 1/min): it caps.
            return self._slow(s, found, now)
        # Shares ("50%"): of what was observed, not of the configured ceiling.
        rate = rule.limits.per_minute
        conns = rule.limits.connections
        if conns is not None and rate is None:
            if stage == "connect":
                return self.on_connect_refused(found.reply, now, rule=rule.id)
            # Said on an open connection: a share of the connections open (or allowed).
            held = self.meter.open or self._learned_caps(self._limits_of(s), s).connections
            event = self.on_connect_refused(
                found.reply, now, rule=rule.id, factor=conns.value, held=held
            )
            return replace(event, kind=LaneEventKind.SLOWED)
        if conns is not None:
            held = self.meter.open or self._learned_caps(self._limits_of(s), s).connections
            self._set(cut_connections(self.state, held, now, factor=conns.value), now)
        if rate is None:
            return self._event(LaneEventKind.NONE, rule=rule.id)
        return self._throttle(
            found.reply, now, rule=rule.id, factor=rate.value, pause=rule.pause,
            kind=LaneEventKind.SLOWED,
        )  # fmt: skip

    def _earlier(self, s: LaneState) -> float:
        """The pace to recover towards a quarter of: the pace before this episode began."""
        if s.mode in (LaneMode.SUSPENDED, LaneMode.SLOWED, LaneMode.DISABLED):
            return s.earlier_factor  # already paused: keep what it was before
        return self._pace_factor(s)

    def _suspend(
        self, s: LaneState, until: float, reason: str, rule: str | None, alert: bool, now: float
    ) -> LaneEvent:
        if s.mode is LaneMode.SUSPENDED and s.until is not None:
            until = max(until, s.until)
        s = replace(
            s, mode=LaneMode.SUSPENDED, until=until, reason=reason, rule=rule, alert=alert,
            earlier_factor=self._earlier(s), slow_limits=None, slow_until=None,
            ramp_factor=None, ramp_connections=None, last_change_at=now,
        )  # fmt: skip
        self._set(s, now)
        kind = LaneEventKind.SUSPENDED if rule is not None else LaneEventKind.BACKOFF
        return self._event(kind, until=until, reason=reason, rule=rule, alert=alert)

    def _slow(self, s: LaneState, found: RuleMatch, now: float) -> LaneEvent:
        rule = found.rule
        assert rule.limits is not None and rule.duration is not None
        pause = rule.pause or 0.0
        recent = (
            s.rule == rule.id
            and s.last_change_at is not None
            and now - s.last_change_at < self.policy.min_change_interval
        )
        if recent and s.mode in (LaneMode.SLOWED, LaneMode.SUSPENDED):
            # The same rule again within a minute is the same episode (replies of messages
            # already in flight): extend it, do not lower the limits once more.
            end = now + pause + rule.duration
            if s.mode is LaneMode.SLOWED:
                s = replace(s, until=max(s.until or end, end))
            else:
                s = replace(s, slow_until=max(s.slow_until or end, end))
            self._set(s, now)
            until = s.until if s.mode is LaneMode.SLOWED else s.slow_until
            return self._event(LaneEventKind.SLOWED, until=until, reason=found.reply, rule=rule.id)
        if s.mode is LaneMode.SLOWED and s.slow_limits is not None:
            current = s.slow_limits
        elif s.mode is LaneMode.SUSPENDED:
            current = _scaled(self.base, s.earlier_factor, self.base.connections)
        else:
            current = self._limits_of(s)
        slowed = rule.limits.apply(current)
        if slowed.per_minute and current.per_minute and slowed.per_minute < current.per_minute:
            # A burst as big as before would defeat a lower rate.
            share = slowed.per_minute / current.per_minute
            slowed = replace(slowed, burst=max(1, math.floor(current.burst * share)))
        earlier = self._earlier(s)
        paused_until = s.until if s.mode is LaneMode.SUSPENDED and s.until else now
        if pause:
            paused_until = max(paused_until, now + pause)
        if paused_until > now:
            # Pause first (the rule's, or a suspension already running), then slow.
            s = replace(
                s, mode=LaneMode.SUSPENDED, until=paused_until, slow_limits=slowed,
                slow_until=paused_until + rule.duration, reason=found.reply, rule=rule.id,
                alert=rule.alert, earlier_factor=earlier, ramp_factor=None,
                ramp_connections=None, last_change_at=now,
            )  # fmt: skip
            until = paused_until + rule.duration
        else:
            until = now + rule.duration
            s = replace(
                s, mode=LaneMode.SLOWED, until=until, slow_limits=slowed, slow_until=None,
                reason=found.reply, rule=rule.id, alert=rule.alert, earlier_factor=earlier,
                ramp_factor=None, ramp_connections=None, last_change_at=now,
            )  # fmt: skip
        tokens = s.tokens
        if tokens is not None:
            # Lower limits take effect at once: no saved-up burst from the faster pace.
            caps = [b[1] if b else 0.0 for b in self._buckets(slowed)]
            tokens = tuple(min(t, c) for t, c in zip(tokens, caps, strict=True))  # type: ignore[assignment]
        self._set(replace(s, tokens=tokens), now)
        return self._event(
            LaneEventKind.SLOWED, until=until, reason=found.reply, rule=rule.id, alert=rule.alert
        )

    def _backoff(self, reply_text: str, now: float) -> LaneEvent:
        """A throttle no rule names (an unknown 421, a few unclassified 4xx)."""
        self._set(replace(self.state, deferred=self.state.deferred), now)
        return self._throttle(reply_text, now)

    def _backoff_old(self, reply_text: str, now: float) -> LaneEvent:
        s = self.state
        if s.mode in (LaneMode.SUSPENDED, LaneMode.DISABLED):
            # Replies to messages already in flight when the lane paused: same episode.
            return self._event(LaneEventKind.IGNORED, until=s.until, reason="lane already paused")
        level = s.backoff_level
        if s.last_resume_at is not None and now - s.last_resume_at >= self.policy.clean_interval:
            level = 0  # a clean interval since the last backoff ended
        level += 1
        p = self.policy
        delay = p.backoff_initial * 2 ** (level - 1)
        delay *= self.rng.uniform(1 - p.jitter, 1 + p.jitter)
        delay = min(p.backoff_max, delay)
        s = replace(s, backoff_level=level, throttled=s.throttled + 1)
        return self._suspend(s, now + delay, " ".join(reply_text.split()), None, False, now)

    # ---------------------------------------------------------------- manual control

    def suspend(self, now: float, until: float, reason: str = "suspended by hand") -> LaneEvent:
        """``mailctl lanes suspend``: pause until ``until``; recovery ramps as after a throttle."""
        return self._suspend(self.state, until, reason, "manual", False, now)

    def disable(self, now: float, reason: str = "disabled by hand") -> LaneEvent:
        s = self.state
        s = replace(
            s, mode=LaneMode.DISABLED, until=None, reason=reason, rule="manual",
            earlier_factor=self._earlier(s), slow_limits=None, slow_until=None,
            ramp_factor=None, ramp_connections=None, last_change_at=now,
        )  # fmt: skip
        self._set(s, now)
        return self._event(LaneEventKind.DISABLED, reason=reason, rule="manual")

    def resume(self, now: float, *, ramp: bool = True) -> None:
        """``mailctl lanes resume``: end any pause now. ``ramp=False`` returns to full speed
        at once (a deliberate operator decision, never an automatic one)."""
        s = self.state
        if s.mode is LaneMode.NORMAL and (s.ramp_factor is None or ramp):
            return
        if ramp:
            self._set(self._start_ramp(replace(s, mode=LaneMode.SUSPENDED), now), now)
        else:
            self._set(
                replace(
                    s,
                    mode=LaneMode.NORMAL,
                    until=None,
                    reason=None,
                    rule=None,
                    alert=False,
                    slow_limits=None,
                    slow_until=None,
                    ramp_factor=None,
                    ramp_connections=None,
                    backoff_level=0,
                    last_change_at=now,
                ),  # fmt: skip
                now,
            )

    def snapshot(self, now: float) -> LaneSnapshot:
        limits = self.limits(now)
        s = self.state
        return LaneSnapshot(
            ip=s.ip,
            provider=s.provider,
            mode=s.mode,
            until=s.until,
            reason=s.reason,
            rule=s.rule,
            alert=s.alert,
            limits=limits,
            recovering=s.ramp_factor is not None,
            ready_in=self.ready_in(now),
            sent=s.sent,
            deferred=s.deferred,
            throttled=s.throttled,
            learned_rate=s.learned_rate,
            learned_connections=s.learned_connections,
            learned_reason=s.learned_reason,
            learned_at=s.learned_at,
            learned_observed=s.learned_observed,
        )
