"""The store only stores: the domain decides warm-up signals and suppressions; the store's
transactions behave as the interface says."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mailctl.reputation.signals import ip_day_counts, reported_counts, smtp_suppressions
from mailctl.store.base import IpDayCounts, SuppressionEntry
from mailctl.store.factory import open_store

AT = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@dataclass
class Outcome:
    email: str = "a@example.com"
    state: str = "sent"
    attempted: bool = True
    at: float = AT
    ip: str | None = "192.0.2.1"
    provider: str | None = "google"
    day: str | None = None
    code: int | None = 250
    reply: str | None = "250 ok"
    reason: str | None = None
    status: str | None = None
    scope: str | None = None
    suppress: bool = False


def test_outcomes_count_per_ip_day_and_provider_with_throttles_and_blocks() -> None:
    outcomes = [
        Outcome(),
        Outcome(state="deferred", code=421, reason="toomanyconn", scope="lane"),
        Outcome(state="deferred", code=554, reason="blocked", scope="lane", day="2027-01-14"),
        Outcome(state="bounced", code=550, reason="userunknown", scope="recipient"),
        Outcome(state="deferred", attempted=False, reason="mailctl"),  # mailctl's own
        Outcome(state="deferred", provider="yahoo", code=None, scope="lane"),  # no reply
    ]
    assert ip_day_counts(outcomes) == [
        IpDayCounts(
            "192.0.2.1", "2027-01-15", "google", sent=1, deferred=1, bounced=1, throttles=1
        ),
        IpDayCounts("192.0.2.1", "2027-01-14", "google", deferred=1, blocks=1),
        IpDayCounts("192.0.2.1", "2027-01-15", "yahoo", deferred=1),
    ]


def test_only_outcomes_judged_to_suppress_become_hard_bounce_suppressions() -> None:
    outcomes = [
        Outcome(state="bounced", code=550, reply="550 5.1.1 no such user", status="5.1.1",
                suppress=True),
        Outcome(state="failed", code=554, reason="blocked", scope="lane"),
    ]  # fmt: skip
    assert smtp_suppressions(outcomes) == [
        SuppressionEntry(
            "a@example.com",
            "hard_bounce",
            at=AT,
            source="smtp:192.0.2.1",
            status="5.1.1",
            diagnostic="550 5.1.1 no such user",
        )
    ]


def test_a_later_report_counts_against_the_day_its_message_went_out() -> None:
    message = {"ip": "192.0.2.1", "provider": "google", "sent_at": AT - 86400}
    assert reported_counts(message, complained=True) == IpDayCounts(
        "192.0.2.1", "2027-01-14", "google", complained=1
    )
    assert reported_counts(message, reason="blocked") == IpDayCounts(
        "192.0.2.1", "2027-01-14", "google", bounced=1, blocks=1
    )
    assert reported_counts({**message, "ip": None}, reason="userunknown") is None


def test_a_batched_transaction_keeps_what_was_applied_when_it_fails(store_url: str) -> None:
    with open_store(store_url) as store:
        with pytest.raises(RuntimeError), store.batched_transaction() as commit:
            store.suppress("a@example.com", "manual", now=AT)
            commit()
            store.suppress("b@example.com", "manual", now=AT)
            raise RuntimeError("interrupted")
        with pytest.raises(RuntimeError), store.transaction():
            store.suppress("c@example.com", "manual", now=AT)
            raise RuntimeError("interrupted")
        kept = [row["address"] for row in store.iter_suppression(include_expired=True)]
    assert kept == ["a@example.com", "b@example.com"]


def test_record_outcomes_writes_the_rows_it_is_given(store_url: str) -> None:
    with open_store(store_url) as store:
        store.record_outcomes(
            [],
            [IpDayCounts("192.0.2.1", "2027-01-15", "google", sent=2, throttles=1)],
            [SuppressionEntry("a@example.com", "hard_bounce", at=AT, source="smtp:192.0.2.1")],
        )
        assert store.ip_days() == [
            {
                "ip": "192.0.2.1",
                "day": "2027-01-15",
                "provider": "google",
                "sent": 2,
                "deferred": 0,
                "bounced": 0,
                "complained": 0,
                "throttles": 1,
                "blocks": 0,
            }
        ]
        entry = store.suppression_for("a@example.com", now=AT)
    assert entry is not None and (entry["reason"], entry["source"]) == (
        "hard_bounce",
        "smtp:192.0.2.1",
    )
