"""Lanes controlled by hand: the persistent lane state `mailctl lanes` shows, suspends and
resumes, read from and written back to the store with a lane event for each change.

Domain code: it may import the store, `reputation.lanes` and `replies.rules`; never the CLI,
delivery or anything that prints.
"""

from __future__ import annotations

from mailctl.replies.rules import RuleSet
from mailctl.reputation.lane_state import LaneSnapshot, LaneState
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.base import Store


def stored_scheduler(store: Store, rules: RuleSet) -> Scheduler:
    """A scheduler holding every lane's persisted state."""
    return Scheduler(rules, states=[LaneState.from_row(row) for row in store.lane_rows()])


def lane_snapshots(store: Store, rules: RuleSet, now: float) -> list[LaneSnapshot]:
    """Each known lane's state, limits, counters and reason at `now`."""
    return stored_scheduler(store, rules).snapshot(now)


def suspend_lane(
    store: Store, rules: RuleSet, ip: str, provider: str, *, now: float, until: float, reason: str
) -> None:
    """Pause one lane until `until`; the send loop defers its messages meanwhile."""
    scheduler = stored_scheduler(store, rules)
    scheduler.lane(ip, provider).suspend(now, until, reason)
    store.upsert_lanes([st.to_row() for st in scheduler.changed_states()])
    store.add_lane_event(
        at=now,
        ip=ip,
        provider=provider,
        kind="suspended",
        until=until,
        reason=reason,
        rule="manual",
        campaign_id=None,
    )


def resume_lane(
    store: Store, rules: RuleSet, ip: str, provider: str, *, now: float, ramp: bool
) -> int:
    """End a lane's pause now; returns how many messages waiting for it fall due now."""
    scheduler = stored_scheduler(store, rules)
    scheduler.lane(ip, provider).resume(now, ramp=ramp)
    store.upsert_lanes([st.to_row() for st in scheduler.changed_states()])
    released = store.release_lane_deferrals(ip, provider, now)
    store.add_lane_event(
        at=now,
        ip=ip,
        provider=provider,
        kind="resumed",
        until=None,
        reason="resumed by hand",
        rule="manual",
        campaign_id=None,
    )
    return released
