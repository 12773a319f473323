"""The scheduler: all lanes of a run, which pool IP sends next, when the next paused lane wakes.

Imports the lanes and the rules; never the store or delivery.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

from mailctl.replies.rules import RuleSet, default_rules
from mailctl.reputation.lane_state import LaneSnapshot, LaneState, RecoveryPolicy
from mailctl.reputation.lanes import Lane

# --------------------------------------------------------------------------------------------
# The scheduler


CapacityFn = Callable[[str, str], "int | None"]
"""(ip, provider) -> messages the IP may still send to the provider now (warm-up), None = no cap."""


class Scheduler:
    """All lanes of a run. Lanes are created on first use from the rules' limits."""

    def __init__(
        self,
        rules: RuleSet | None = None,
        *,
        policy: RecoveryPolicy | None = None,
        rng: random.Random | None = None,
        states: Iterable[LaneState] = (),
    ) -> None:
        self.rules = rules or default_rules()
        self.policy = policy or RecoveryPolicy()
        self.rng = rng or random.Random()
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._picks: dict[tuple[str, str], int] = {}
        for state in states:
            self._lanes[(state.ip, state.provider)] = self._make(state)

    def _make(self, state: LaneState) -> Lane:
        return Lane(state, self.rules, policy=self.policy, rng=self.rng)

    def lane(self, ip: str, provider: str) -> Lane:
        key = (ip, provider)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = self._make(LaneState(ip=ip, provider=provider))
        return lane

    def lanes(self) -> list[Lane]:
        return [self._lanes[key] for key in sorted(self._lanes)]

    def changed_states(self) -> list[LaneState]:
        """States changed since the last call: what to upsert into the ``lanes`` table."""
        changed = []
        for lane in self.lanes():
            if lane.changed:
                lane.changed = False
                changed.append(lane.state)
        return changed

    def next_wake(self, now: float, busy: Iterable[tuple[str, str]] | None = None) -> float | None:
        """When the first of the lanes with work (``busy``; all lanes when None) may send
        again: ``now`` if one may send now, None if none ever will (all disabled)."""
        keys = list(busy) if busy is not None else list(self._lanes)
        waits = [self.lane(ip, provider).ready_in(now) for ip, provider in keys]
        finite = [w for w in waits if not math.isinf(w)]
        return now + min(finite) if finite else None

    def snapshot(self, now: float) -> list[LaneSnapshot]:
        return [lane.snapshot(now) for lane in self.lanes()]

    def pick_ip(
        self,
        pool_ips: Iterable[str],
        provider: str,
        now: float,
        capacity_fn: CapacityFn | None = None,
        prefer: str | None = None,
    ) -> str | None:
        """The pool IP to send the next message for ``provider`` from, or None if none may.

        Only IPs of ``pool_ips`` are ever returned (traffic never moves to another pool).
        Skipped: IPs whose lane to the provider is suspended or disabled, and IPs whose
        warm-up capacity is used up (spill-over to the pool's other IPs). IPs with a cap
        (still warming) come first, the one with the most capacity left, so cold IPs get the
        volume their schedule needs; uncapped IPs take the rest in turn. ``prefer`` (an IP
        the receiver asked to hear from again: greylisting keys on the client's address) wins
        whenever it may send.
        """
        candidates: list[tuple[str, int | None]] = []
        for ip in dict.fromkeys(pool_ips):
            if self.lane(ip, provider).pause_wait(now) > 0:
                continue
            capacity = capacity_fn(ip, provider) if capacity_fn is not None else None
            if capacity is not None and capacity <= 0:
                continue
            candidates.append((ip, capacity))
        if not candidates:
            return None
        capped = [c for c in candidates if c[1] is not None]
        if prefer is not None and any(c[0] == prefer for c in candidates):
            ip = prefer
        elif capped:
            ip = max(
                capped,
                key=lambda c: (c[1], -self._picks.get((c[0], provider), 0)),
            )[0]
        else:
            ip = min(candidates, key=lambda c: self._picks.get((c[0], provider), 0))[0]
        self._picks[(ip, provider)] = self._picks.get((ip, provider), 0) + 1
        return ip
