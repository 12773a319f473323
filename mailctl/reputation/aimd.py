"""What a lane learns from its receiver, the way TCP congestion control does (AIMD).

* `Meter` measures a lane in memory: the acceptance rate over a sliding window, the
  connections that were open, and unclassified 4xx replies (a few within a window are a
  throttle).
* `cut_rate` / `cut_connections` are the multiplicative decrease: from the rate the receiver
  actually accepted just before the throttle (never from the configured ceiling), and to the
  number of connections that held when one more was refused.
* `step_up` is the additive increase while clean: quickly back towards the rate that was
  throttled, then slowly above it; one more connection per clean interval.
* `relax` lets a learned rate drift back toward the ceiling over clean hours between runs.
* `probe_pause` is the pause after a throttle that names no delay: short, doubling on repeats.
  `probe_offset` adds an episode's pauses up: the lane sends each probe that long after the
  second the refused window began in, just after a second turns (lanes.py).
* `recent_times` turns the per-second acceptances a lane persisted (`Meter.recent`) back into
  times: a receiver counts per client over its own window, whichever run sent the mail, so a
  run that starts right after another seeds its `Meter` and `Pacer` with them (`seed`).
  Without that, a second campaign sent seconds after a first learns as the receiver's burst
  only what it sent itself before the refusal, and paces a fraction of the receiver's rate.
* `Pacer` meets a receiver that counts per client over a time unit (Postfix's anvil, most
  providers' per-minute counters): at most ``burst`` messages in any ``window`` seconds, the
  burst learned from what the receiver took before its first refusal, the window found by
  bisection between one it refused and one it accepted. Anything faster than a window already
  accepted goes out as one lone probe, so a wrong guess costs one refusal, not one per
  connection. A receiver whose windows open as its whole-second clock turns (anvil's) is
  met just after the second turns, once its probes fit that model. A run's first window may
  have begun with the connection (anvil counts a client from there) rather than with the
  first message: where the two fall in adjacent seconds, the probes try both
  (`Pacer.window_starts`).

Ceilings (configured limits, rule limits, warm-up caps) stay upper bounds: the lane takes the
minimum. Pure and clock-free: every function takes ``now``; jitter from an injected RNG.
Imports only `lane_state`; never the store, delivery or the CLI.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, replace

from mailctl.reputation.lane_state import LaneState

__all__ = [
    "AimdPolicy",
    "Meter",
    "Pacer",
    "cut_connections",
    "cut_rate",
    "probe_offset",
    "probe_pause",
    "recent_times",
    "relax",
    "step_up",
]


@dataclass(frozen=True)
class AimdPolicy:
    """The constants of the learning. Defaults suit both real receivers and slow cron runs."""

    window: float = 60.0  # acceptance rate over the last minute ...
    min_span: float = 1.0  # ... never over less than a second
    cut: float = 0.5  # a throttle halves the observed rate (a rule may name its own share)
    min_rate: float = 1.0  # messages per minute: a learned rate never goes below
    step_interval: float = 10.0  # one additive step per this many seconds of clean sending
    approach: float = 0.1  # step below the throttled rate: 10% of it ...
    plateau: float = 0.9  # ... up to 90% of it,
    probe: float = 0.02  # then 2% of it per step above
    probe_pause: float = 2.0  # first pause after a throttle that names no delay ...
    probe_pause_max: float = 600.0  # ... doubling on repeats up to this
    jitter: float = 0.1
    episode_gap: float = 60.0  # a throttle this soon after the last one is a repeat
    unclassified_count: int = 3  # this many unclassified 4xx (not about a recipient) ...
    unclassified_window: float = 60.0  # ... within this window are a throttle
    slow_start: int = 5  # unlearned: one more connection per this many accepted messages ...
    # ... and beyond two (which nearly every receiver takes), per this many seconds of clean
    # sending on all of them, doubling per connection.
    slow_start_interval: float = 10.0
    connection_step: float = 60.0  # learned: one more connection per clean interval (doubling)
    relax_interval: float = 3600.0  # per clean hour without sending ...
    relax_step: float = 1.25  # ... the learned rate rises 25% toward the ceiling, +1 connection
    window_precision: float = 0.05  # bisection of a receiver's window stops this close
    window_tries: int = 1  # a shorter window is tried once per window
    max_burst: int = 5000  # a learned burst never exceeds this many messages
    probe_timeout: float = 30.0  # a lone probe with no answer after this frees the lane
    probe_poll: float = 0.02  # how often a lane waiting on its lone probe looks again
    # A receiver counting in whole seconds is tried this long after a second turns (its
    # clock may be a little behind ours, the message takes a moment to get there) ...
    tick_margin: float = 0.05
    # ... and a time this close to a whole second says nothing of which second it counted.
    tick_doubt: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.cut < 1:
            raise ValueError("cut must be in (0, 1)")
        if self.window <= 0 or self.step_interval <= 0 or self.probe_pause <= 0:
            raise ValueError("window, step_interval and probe_pause must be positive")


class Meter:
    """In-memory measurements of one lane during a run (never persisted)."""

    def __init__(self, policy: AimdPolicy) -> None:
        self.policy = policy
        self._accepts: deque[float] = deque()
        self._first: float | None = None
        self._unclassified: deque[float] = deque()
        self.accepted_total = 0
        self.open = 0  # connections of this lane open now (the dispatcher reports them)
        self.peak_open = 0  # most connections open at once without a refusal

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window
        while self._accepts and self._accepts[0] <= horizon:
            self._accepts.popleft()

    def seed(self, times: list[float]) -> None:
        """Acceptances of an earlier run (sorted, older than any of this run's)."""
        if not times:
            return
        self._accepts.extendleft(reversed(times))
        self._first = times[0] if self._first is None else min(self._first, times[0])

    def recent(self, now: float) -> tuple[tuple[int, int], ...]:
        """Acceptances over the window, as (epoch second, count), for the lane to persist."""
        self._trim(now)
        counts: dict[int, int] = {}
        for t in self._accepts:
            second = math.floor(t)
            counts[second] = counts.get(second, 0) + 1
        return tuple(counts.items())

    def accepted(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._accepts.append(now)
        self.accepted_total += 1
        self._trim(now)

    def rate(self, now: float) -> float:
        """Messages accepted per minute over the window (or since the first acceptance)."""
        self._trim(now)
        if not self._accepts or self._first is None:
            return 0.0
        start = max(now - self.policy.window, self._first)
        span = max(self.policy.min_span, now - start)
        return len(self._accepts) * 60.0 / span

    def span(self, now: float) -> float:
        if self._first is None:
            return 0.0
        return max(self.policy.min_span, now - max(now - self.policy.window, self._first))

    def accepted_since(self, at: float) -> int:
        """Messages accepted after ``at`` (within the window)."""
        return sum(1 for t in self._accepts if t > at)

    def opened(self, count: int) -> None:
        self.open = count
        self.peak_open = max(self.peak_open, count)

    def unclassified(self, now: float) -> bool:
        """Count an unclassified 4xx; True when it makes a throttle (the count starts over)."""
        p = self.policy
        self._unclassified.append(now)
        while self._unclassified and self._unclassified[0] <= now - p.unclassified_window:
            self._unclassified.popleft()
        if len(self._unclassified) >= p.unclassified_count:
            self._unclassified.clear()
            return True
        return False

    def describe(self, now: float) -> str:
        """What was observed before a throttle, for ``mailctl lanes``."""
        rate = self.rate(now)
        return (
            f"{_fmt(rate)}/min accepted over {_fmt(self.span(now))}s"
            f" on {self.open} connection{'s' if self.open != 1 else ''}"
        )


class Pacer:
    """At most ``burst`` messages in any ``window`` seconds, learned from one receiver during
    a run (in memory; the lane persists the rate it implies, ``burst * 60 / window``).

    * ``burst``: what the receiver accepted, unpaced, before its first refusal.
    * ``hi``: a window after which it accepted the next message; ``lo``: one it refused the
      next message in. Between them the window tried is the midpoint (the additive side of
      AIMD: faster while clean); a refusal falls back to ``hi`` (the cut), with no pause.
    * A permit faster than ``hi`` allows, or the first after a pause, is a lone probe: no
      other permit until its reply.
    * Whole seconds: many receivers (Postfix's anvil among them) count on a clock of whole
      seconds, so a window opens when a second turns, a whole number of seconds after the
      second its first message came in: earlier or later within that second than a span
      measured in fractions can tell. Each probe also tests that model: ``ticks_lo`` the
      most whole seconds after which one was refused, ``ticks_hi`` the fewest after which
      one was accepted. While every probe fits it, the next window is tried just after the
      second it opens in (`_tick_opening`), and the first refusal that contradicts it drops
      it for the run (the spans alone then govern).
    Without a learned burst, a learned rate alone is paced evenly (a second's worth at once).
    """

    def __init__(self, policy: AimdPolicy) -> None:
        self.policy = policy
        self.burst: int | None = None
        self.lo = 0.0
        self.hi: float | None = None
        self.sends: deque[float] = deque(maxlen=policy.max_burst + 1)
        self.cycle = 0  # accepted since the run began or the last refusal
        # (sent at, window it tests, whole seconds it tests or None where a time was too
        # close to a second's turn to tell)
        self.probe: tuple[float, float | None, int | None] | None = None
        self.ticks_lo = 0  # whole seconds after which a probe was refused
        self.ticks_hi: int | None = None  # whole seconds after which one was accepted
        self.ticks_broken = False  # a refusal the whole-second model cannot explain
        self.lone = False  # the next permit goes alone (after a pause)
        self.last_span: float | None = None  # of the last permit: its span over a burst
        self.misses = 0  # refusals since the last acceptance (a window's failed tries)
        # Just learned the burst, no permit since: an acceptance now answers a message that
        # was in flight at the refusal (another connection's), so it was part of the burst.
        self.in_flight_counts = False
        self.first_permit: float | None = None  # the run's first message, unless seeded
        self.contact: float | None = None  # when the connection it went on began

    def seed(self, times: list[float]) -> None:
        """Acceptances of an earlier run (sorted, within the window): the receiver still
        counts them, so they take their places among the sends and in the cycle a first
        refusal learns the burst from."""
        if times and self.burst is None:
            kept = [*times, *self.sends][-(self.policy.max_burst + 1) :]
            self.sends = deque(kept, maxlen=self.policy.max_burst + 1)
            self.cycle += len(times)

    @property
    def learned(self) -> bool:
        """Whether the pacer knows a burst and a window (it then governs the learned rate)."""
        return self.burst is not None and self.hi is not None

    def rate(self) -> float | None:
        """Messages per minute of the window last accepted."""
        if self.burst is None or self.hi is None:
            return None
        return self.burst * 60.0 / max(self.hi, 1e-3)

    def peak(self) -> float | None:
        """Messages per minute of the window last refused."""
        if self.burst is None or self.lo <= 0:
            return None
        return self.burst * 60.0 / self.lo

    def _window(self, rate: float | None) -> tuple[int, float] | None:
        if self.burst is not None and self.hi is not None:
            hi, lo = self.hi, self.lo
            tries = self.misses < self.policy.window_tries
            if tries and hi - lo > self.policy.window_precision * hi:
                return self.burst, (hi + lo) / 2
            return self.burst, hi
        if rate:
            burst = max(1, int(rate // 60))
            return burst, burst * 60.0 / rate
        return None

    def wait(self, now: float, rate: float | None) -> float:
        """Seconds until the next permit (``rate``: the lane's learned rate, if any)."""
        if self.probe is not None:
            if now - self.probe[0] < self.policy.probe_timeout:
                return self.policy.probe_poll
            self.probe = None  # never answered (the message went elsewhere): go on
        window = self._window(rate)
        if window is None or len(self.sends) < window[0]:
            return 0.0
        burst, span = window
        opens = self.sends[-burst] + span
        if span == self.hi:  # no shorter window on trial: the earliest one known to open
            ticked = self._tick_opening(burst)
            if ticked is not None and (self._ticks_pinned() or ticked < opens):
                opens = ticked
        wait = max(0.0, opens - now)
        if self.hi is not None and wait > 0.1 * span:
            # A new window opens after a gap: where it opens is uncertain (receivers count
            # in whole seconds), so its first message goes alone.
            self.lone = True
        return wait

    def _tick_opening(self, burst: int) -> float | None:
        """When the next window opens on a receiver counting whole seconds (just after the
        second turns, ``ticks_hi`` after the one its first message came in), or None while
        that model is unknown, contradicted, or the window's first message came too close to
        a second's turn to tell its second. Used once the whole seconds are pinned down
        (``ticks_lo`` one below ``ticks_hi``); before that, where it is earlier than the span
        last accepted. Shorter windows are tried mid-second (the spans' bisection), which
        also tells a window counted in fractions of a second from one of whole seconds."""
        if self.ticks_broken or self.ticks_hi is None:
            return None
        first = self.sends[-burst]
        if not self._clear_of_turn(first):
            return None
        return math.floor(first) + self.ticks_hi + self.policy.tick_margin

    def _ticks_pinned(self) -> bool:
        """Whether the whole seconds a window lasts are known: refused after one fewer."""
        return self.ticks_hi is not None and self.ticks_hi - self.ticks_lo <= 1

    def _clear_of_turn(self, moment: float) -> bool:
        doubt = self.policy.tick_doubt
        return doubt <= moment % 1.0 <= 1.0 - doubt

    def _ticks(self, now: float, first: float) -> int | None:
        """Whole seconds from a window's first message to ``now``, where both are clear of a
        second's turn."""
        if self._clear_of_turn(now) and self._clear_of_turn(first):
            return math.floor(now) - math.floor(first)
        return None

    def _ticked(self, ticks: int, *, accepted: bool) -> None:
        if accepted:
            self.ticks_hi = ticks if self.ticks_hi is None else min(self.ticks_hi, ticks)
        else:
            self.ticks_lo = max(self.ticks_lo, ticks)
        if self.ticks_hi is not None and self.ticks_lo >= self.ticks_hi:
            self.ticks_broken = True  # refused after as many seconds as one accepted

    def permit(self, now: float, rate: float | None) -> None:
        self.in_flight_counts = False
        span: float | None = None
        ticks: int | None = None
        burst = self.burst
        if burst is not None and len(self.sends) >= burst:
            span = now - self.sends[-burst]
            ticks = self._ticks(now, self.sends[-burst])
        below = span is not None and self.hi is not None and span < self.hi
        if self.lone or below:
            self.probe = (now, span, ticks)
            self.lone = False
        self.last_span = span
        if self.first_permit is None and not self.sends:
            self.first_permit = now
        self.sends.append(now)

    def accepted(self) -> bool:
        """A message taken; True when it taught a shorter window (the rate rises)."""
        self.cycle += 1
        self.misses = 0
        if self.in_flight_counts and self.burst is not None:
            self.burst = min(self.policy.max_burst, self.burst + 1)
        if self.probe is None:
            return False
        _, tested, ticks = self.probe
        self.probe = None
        if ticks is not None:
            self._ticked(ticks, accepted=True)
        if tested is not None and (self.hi is None or tested < self.hi):
            self.hi = max(tested, self.lo)
            return True
        return False

    def contacted(self, at: float) -> None:
        """A connection to the receiver began at ``at``: kept if it precedes the run's first
        message (and no earlier run's acceptances count)."""
        if self.contact is None and not self.sends:
            self.contact = at

    def window_starts(self) -> list[float]:
        """Where the window a refusal ended may have begun, earliest first: its first
        accepted message, and for the run's first window the moment the connection it went
        on began, where that was in the second before. A receiver may count a client's
        window from its first message or from its connection (Postfix's anvil counts every
        rate of a client from its first connection)."""
        start = self.window_start()
        if start is None:
            return []
        contact = self.contact
        if (
            contact is not None
            and start == self.first_permit
            and math.floor(start) - math.floor(contact) == 1
        ):
            return [contact, start]
        return [start]

    def window_start(self) -> float | None:
        """When the window a refusal ended began (its first accepted message), once the burst
        is learned."""
        if self.burst is None or len(self.sends) < self.burst:
            return None
        return self.sends[-self.burst]

    def refund(self) -> None:
        """A refused message in flight when the lane paused: it took no place either."""
        if self.sends:
            self.sends.pop()

    def refused(self, unpaced: bool) -> bool:
        """A message-rate refusal. True when the pacer falls back to a longer window (no
        pause needed: it spaces the next message); False when the lane must pause and probe
        (nothing accepted is known yet)."""
        self.refund()  # the refused message took nothing of the receiver's count
        self.misses += 1
        probe, self.probe = self.probe, None
        span = probe[1] if probe is not None else self.last_span
        if probe is not None and probe[2] is not None and self.burst is not None:
            self._ticked(probe[2], accepted=False)
        if self.burst is None and unpaced and self.cycle > 0:
            self.burst = min(self.policy.max_burst, self.cycle)
            self.in_flight_counts = True
        elif span is not None and self.burst is not None:
            self.lo = max(self.lo, span)
        self.cycle = 0
        self.lone = True  # the next try goes alone too
        if self.hi is not None and self.lo >= self.hi:
            # A window taken before was refused now (the receiver's clock is coarse, or it
            # got stricter): a longer one, tried by one message first.
            self.hi = self.lo * (1 + 4 * self.policy.window_precision)
            self.lone = True
        if self.hi is None:
            self.lone = True
            return False
        return True


def recent_times(
    recent: tuple[tuple[int, int], ...], now: float, policy: AimdPolicy
) -> list[float]:
    """Per-second acceptances (`Meter.recent`) back as times within ``policy.window`` of
    ``now``, each second's spread evenly over it, oldest first, at most ``max_burst``."""
    times: list[float] = []
    for second, count in sorted(recent):
        count = min(max(0, count), policy.max_burst)
        times.extend(second + (i + 0.5) / count for i in range(count))
    horizon = now - policy.window
    return [t for t in times if horizon < t <= now][-policy.max_burst :]


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


def cut_rate(
    s: LaneState,
    observed: float,
    now: float,
    policy: AimdPolicy,
    *,
    factor: float | None = None,
    ceiling: float | None = None,
) -> LaneState:
    """The multiplicative decrease: ``factor`` (default `AimdPolicy.cut`) of the rate the
    receiver accepted just before the throttle. Without any observation this run, of the
    learned rate; with neither, the rate stays unlearned (the pause still applies)."""
    share = policy.cut if factor is None else factor
    base = observed if observed > 0 else s.learned_rate
    if base is None:
        return replace(s, learned_step_at=now)
    new = max(policy.min_rate, share * base)
    if s.learned_rate is not None:
        new = min(new, max(policy.min_rate, s.learned_rate))
    if ceiling is not None:
        new = min(new, ceiling)
    peak = observed if observed > 0 else (s.learned_peak or base)
    return replace(s, learned_rate=new, learned_peak=peak, learned_step_at=now)


def cut_connections(
    s: LaneState, held: int, now: float, *, factor: float | None = None
) -> LaneState:
    """Connections down to the number that held (``factor`` of the open ones when the signal
    came on an open connection), at least one. The message rate is left alone."""
    count = max(1, math.floor(held * factor) if factor is not None else held)
    if s.learned_connections is not None:
        count = min(count, s.learned_connections)
    return replace(s, learned_connections=count, learned_conn_at=now)


def step_up(
    s: LaneState,
    now: float,
    policy: AimdPolicy,
    *,
    ceiling_rate: float | None,
    ceiling_connections: int,
    connections_due: bool,
) -> LaneState:
    """One additive step after a clean interval of sending, if one is due. A learned value
    that reaches its ceiling is forgotten (the ceiling governs again)."""
    if s.learned_rate is not None and now - (s.learned_step_at or now) >= policy.step_interval:
        peak = s.learned_peak or s.learned_rate
        rate = s.learned_rate
        if rate < policy.plateau * peak:
            rate = min(policy.plateau * peak, rate + max(policy.min_rate, policy.approach * peak))
        else:
            rate = rate + max(policy.min_rate, policy.probe * peak)
        if ceiling_rate is not None and rate >= ceiling_rate:
            s = replace(s, learned_rate=None, learned_peak=None, learned_step_at=now)
        else:
            s = replace(s, learned_rate=rate, learned_step_at=now)
    if s.learned_connections is not None and connections_due:
        wait = policy.connection_step * 2 ** min(6, max(0, s.probe_level - 1))
        if now - (s.learned_conn_at or now) >= wait:
            count = s.learned_connections + 1
            s = replace(
                s,
                learned_connections=None if count >= ceiling_connections else count,
                learned_conn_at=now,
            )
    return s


def relax(
    s: LaneState,
    now: float,
    policy: AimdPolicy,
    *,
    ceiling_rate: float | None,
    ceiling_connections: int,
) -> LaneState:
    """Between runs: per clean hour since the last change, the learned rate rises by
    `AimdPolicy.relax_step` and the learned connections by one, toward the ceilings."""
    last = max(s.learned_step_at or 0.0, s.learned_conn_at or 0.0, s.learned_at or 0.0)
    hours = int((now - last) // policy.relax_interval) if last else 0
    if hours <= 0 or (s.learned_rate is None and s.learned_connections is None):
        return s
    rate = s.learned_rate
    if rate is not None:
        rate *= policy.relax_step ** min(hours, 100)
        if ceiling_rate is not None and rate >= ceiling_rate:
            rate = None
    conns = s.learned_connections
    if conns is not None:
        conns += hours
        if conns >= ceiling_connections:
            conns = None
    at = last + hours * policy.relax_interval
    return replace(
        s,
        learned_rate=rate,
        learned_peak=None if rate is None else s.learned_peak,
        learned_connections=conns,
        learned_step_at=at,
        learned_conn_at=at,
        probe_level=0,
    )


def probe_pause(
    s: LaneState, now: float, policy: AimdPolicy, rng: random.Random, *, jitter: bool = True
) -> tuple[int, float]:
    """(level, seconds) of the pause after a throttle that names no delay: the first is short,
    a repeat within `AimdPolicy.episode_gap` of the last throttle doubles it. Jitter keeps
    many senders' retries apart; ``jitter=False`` for a pause that ends in one lone probe."""
    level = 1
    if s.learned_at is not None and now - s.learned_at < policy.episode_gap + _last_pause(
        s, policy
    ):
        level = s.probe_level + 1
    pause = policy.probe_pause * 2 ** min(20, level - 1)
    if jitter:
        pause *= rng.uniform(1 - policy.jitter, 1 + policy.jitter)
    return level, min(policy.probe_pause_max, pause)


def probe_offset(level: int, policy: AimdPolicy) -> float:
    """Seconds from the start of the window a throttle ended to the probe after the
    episode's ``level``th pause: the pauses so far, added up (2, 6, 14 s … for pauses of 2,
    4, 8 s …)."""
    return sum(
        min(policy.probe_pause_max, policy.probe_pause * 2 ** min(20, i)) for i in range(level)
    )


def _last_pause(s: LaneState, policy: AimdPolicy) -> float:
    if s.probe_level <= 0:
        return 0.0
    return min(policy.probe_pause_max, policy.probe_pause * 2 ** min(20, s.probe_level - 1))
