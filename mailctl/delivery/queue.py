"""The queue as an operator sees it: what waits, per campaign, lane or domain, and why;
retry-now and drop by hand.

Every waiting message carries its reason (set where `route`, `outcome` and `record` defer
it). This module turns the operator's filters into a `QueueFilter` (a campaign by name, a
domain IDNA-encoded, an address by its canonical key) and calls the store. Imports the
store's interface and the recipients' address key; never the CLI, and it never prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailctl.errors import InvalidAddress, MailctlError, UsageError
from mailctl.recipients.address import address_key, normalise_address
from mailctl.store.base import QueueFilter, QueueGroup, Store

# Stored as the last reply of a message dropped from the queue (state `cancelled`, reason
# `dropped`): the report counts it with the cancelled ones and says who did it.
DROPPED_BY_HAND = "dropped by hand (mailctl queue drop)"


@dataclass(frozen=True)
class QueueQuery:
    """The operator's filters as typed."""

    campaign: str | None = None
    domain: str | None = None
    provider: str | None = None
    address: str | None = None
    reason: str | None = None


def queue_filter(store: Store, query: QueueQuery) -> QueueFilter:
    """Filters as the store compares them; an unknown campaign or a bad address is an error."""
    campaign_id = None
    if query.campaign is not None:
        row = store.get_campaign(query.campaign)
        if row is None:
            raise MailctlError(f"no campaign named '{query.campaign}'")
        campaign_id = int(row["id"])
    domain = None
    if query.domain is not None:
        try:
            domain = normalise_address("x@" + query.domain.strip())[1]
        except InvalidAddress:
            raise UsageError(f"--domain: '{query.domain}' is not a domain") from None
    key = None
    if query.address is not None:
        try:
            key = address_key(normalise_address(query.address)[0])
        except InvalidAddress as exc:
            raise UsageError(f"--address: {exc}") from None
    return QueueFilter(
        campaign_id=campaign_id,
        domain=domain,
        provider=query.provider.strip().lower() if query.provider else None,
        address_key=key,
        reason=query.reason.strip() if query.reason else None,
    )


def summary(store: Store, query: QueueQuery, by: QueueGroup = "lane") -> list[dict[str, Any]]:
    """Waiting messages per campaign x lane (or domain) x reason, most first."""
    return store.queue_summary(by, queue_filter(store, query))


def waiting(store: Store, query: QueueQuery, limit: int | None = None) -> list[dict[str, Any]]:
    """The waiting messages themselves, the next due first."""
    return store.queue_list(queue_filter(store, query), limit)


def retry_now(store: Store, query: QueueQuery, now: float) -> int:
    """Matching deferred messages fall due now; the next `send` tries them (lanes, warm-up
    caps and pauses still apply: deliverability before throughput)."""
    with store.transaction():
        return store.retry_deferred(queue_filter(store, query), now)


def drop(store: Store, query: QueueQuery, now: float) -> int:
    """Matching waiting messages are cancelled by hand; they are never sent."""
    if all(
        value is None for value in (query.campaign, query.domain, query.provider, query.address)
    ):
        raise UsageError("queue drop needs --campaign, --domain, --provider or --address")
    with store.transaction():
        return store.drop_waiting(queue_filter(store, query), now, DROPPED_BY_HAND)
