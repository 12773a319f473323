"""The store's interface: what the rest of mailctl may ask of persistent state.

`Store` (and the `ReportQueries` it composes) is the whole API a backend implements: SQLite
(`mailctl.store.sqlite`, the embedded default) and PostgreSQL (`mailctl.store.postgres`,
shared by many sending hosts); `mailctl.store.factory.open_store` picks one from `--db`.
Callers type against these protocols and never see a dialect. The store only stores: the
rows it receives are already decided (what counts as a throttle, whom to suppress);
deciding is the domain's job.

Imports nothing from mailctl but the bottom module mailctl.model: every other package may
import this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mailctl.model import MessageState

MESSAGE_STATES = tuple(state.value for state in MessageState)

# The per IP, day and provider counters the warm-up reads (the `ip_days` record).
IP_DAY_COUNTERS = ("sent", "deferred", "bounced", "complained", "throttles", "blocks")

# `Store.database_key`: (name, generate) -> the key kept in a shared database, or None.
StoredKey = Callable[[str, Callable[[], str]], "str | None"]

# How `mailctl queue` groups waiting messages besides campaign and kind.
QueueGroup = Literal["lane", "domain"]

# How report rows are keyed; the key of each result row is the group's value.
ReportGroup = Literal["all", "campaign", "ip", "provider"]


@dataclass(frozen=True)
class StagedCounts:
    """What merging one staged recipient import did."""

    imported: int
    updated: int
    unchanged: int
    suppressed: int


@dataclass(frozen=True)
class IpDayCounts:
    """Counts to add to what one IP did toward one provider on one (UTC or local) day."""

    ip: str
    day: str
    provider: str
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    complained: int = 0
    throttles: int = 0
    blocks: int = 0

    def counts(self) -> dict[str, int]:
        """The counters this adds to, by column name (those it leaves alone left out)."""
        return {name: getattr(self, name) for name in IP_DAY_COUNTERS if getattr(self, name)}


@dataclass(frozen=True)
class QueueFilter:
    """Which waiting (queued or deferred) messages a queue command is about; unset fields
    match everything. ``reason`` is a case-insensitive part of the wait kind or reason."""

    campaign_id: int | None = None
    domain: str | None = None
    provider: str | None = None
    address_key: str | None = None
    reason: str | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


@dataclass(frozen=True)
class SuppressionEntry:
    """An address (or ``*@domain``) to suppress, with why and from where."""

    address: str
    reason: str
    at: float
    source: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    expires_at: float | None = None


class DeliveryRecord(Protocol):
    """One delivery outcome as the store records it (the engine's `Outcome` is one)."""

    @property
    def message_id(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def attempted(self) -> bool: ...
    @property
    def at(self) -> float: ...
    @property
    def next_attempt_at(self) -> float: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def code(self) -> int | None: ...
    @property
    def reply(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def rule(self) -> str | None: ...
    @property
    def scope(self) -> str | None: ...
    @property
    def possible_duplicate(self) -> bool: ...
    @property
    def wait_kind(self) -> str | None:
        """Deferred only: why it waits, in words that group (no times)."""
        ...

    @property
    def wait_reason(self) -> str | None:
        """Deferred only: the full reason, with when it will be tried again."""
        ...


class BounceRecipientRecord(Protocol):
    """One recipient of a bounce or complaint report (the parser's `FailedRecipient`)."""

    @property
    def address(self) -> str: ...
    @property
    def status(self) -> str | None: ...
    @property
    def action(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def permanent(self) -> bool: ...
    @property
    def suppress(self) -> bool: ...
    @property
    def diagnostic(self) -> str: ...


class ReportQueries(Protocol):
    """Read-only aggregates for `mailctl report` (`Store.reports`).

    Every query takes a `group` naming how rows are keyed and an optional campaign id. A
    message's lane is the one of its last attempt; a reply's is the lane that answered it.
    """

    def campaigns(self, name: str | None = None) -> list[dict[str, Any]]:
        """Campaign identities, newest first (creation time, then id for ties)."""
        ...

    def message_counts(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, dict[str, int]]]:
        """key -> state -> {messages, attempted, hard, soft, complaint}."""
        ...

    def delivery_times(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> dict[Any, dict[str, Any]]:
        """key -> {count, p50, p90, p99, max} of sent_at - queued_at (nearest rank)."""
        ...

    def top_replies(
        self, group: ReportGroup, campaign_id: int | None = None, limit: int = 10
    ) -> dict[Any, list[dict[str, Any]]]:
        """key -> the most frequent (code, text) replies, most frequent first."""
        ...

    def reply_rules(
        self, group: ReportGroup, campaign_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Non-2xx replies counted per (key, rule, reason, scope, outcome), with first and
        last time."""
        ...

    def sends_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 3600
    ) -> list[dict[str, Any]]:
        """Accepted messages per time bucket (by sent_at) and provider, in time order."""
        ...

    def answer_span(self, campaign_id: int | None = None) -> tuple[float | None, float | None]:
        """First and last time a receiver answered one of these messages."""
        ...

    def rates_per_bucket(
        self, campaign_id: int | None = None, bucket: int = 86400
    ) -> list[dict[str, Any]]:
        """Answered messages, hard bounces and complaints per bucket of the answer time."""
        ...

    def lane_events(self, campaign_id: int | None = None) -> list[dict[str, Any]]:
        """Lane pauses per lane, kind and rule: how many, the last one's time, end, reason."""
        ...

    def lane_rows(self) -> list[dict[str, Any]]:
        """Lanes not at normal speed."""
        ...

    def unsubscribe_sources(self) -> list[str]:
        """The source of every recorded unsubscribe (suppressions with reason
        ``unsubscribe`` and list-scoped ones), e.g. ``one-click:news``, ``mail:news``."""

    def report_counts(self) -> dict[str, int]:
        """Imported bounce and complaint reports: ``reports`` (that name recipients) and
        ``unmatched`` (of those, the ones tied to no message mailctl sent)."""
        ...


class Store(Protocol):
    """One open database: everything mailctl keeps between runs."""

    @property
    def location(self) -> str:
        """Where the data lives (a file, a server), for messages."""
        ...

    @property
    def reports(self) -> ReportQueries: ...

    # lifecycle, schema and transactions
    @property
    def schema_version(self) -> int:
        """How many migrations the database has (the same numbers on every backend)."""
        ...

    def migrate(self) -> None:
        """Apply the migrations the database lacks."""
        ...

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing: commits at the end, rolls back on any exception."""
        ...

    def batched_transaction(self) -> AbstractContextManager[Callable[[], None]]:
        """A long write in batches. The yielded `commit()` makes what was applied so far
        durable and goes on; an exception keeps what was applied (each step is whole)."""
        ...

    def send_lock(self, host: str | None = None) -> AbstractContextManager[None]:
        """One send run per database (SQLite) or per sending host (PostgreSQL, where hosts
        share the queue); raises `LockedError` when another run holds it."""
        ...

    def side_connection(self) -> Store | None:
        """A second handle on the same database, on its own connection, for the send loop's
        claims and outcome commits to run in a thread while this one serves the rest of the
        run (`delivery.store_thread`); None where that gains nothing. PostgreSQL: each claim
        and commit waits a round trip to the server, which the event loop, and with it every
        SMTP session, would otherwise sit out. SQLite: that work is the sender's own CPU, and a
        second writer would only wait on the file's lock. Opened after `send_lock`: the
        handle recovers what earlier runs of this host left, as its claims do."""
        ...

    # recipients import: staged, then merged in one transaction
    def begin_import(self) -> None: ...
    def stage_recipients(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """(email as written, its canonical key, domain, fields_json); keyed on the key."""
        ...

    def staged_count(self) -> int: ...
    def finish_import(
        self, list_name: str | None, *, skip_existing: bool, source: str | None = None
    ) -> StagedCounts:
        """Merge what was staged, in one transaction. ``source`` (a digest of the file and
        how it was read) is recorded on the list as the version it took in; an import that
        changed recipients' fields forgets the other lists' versions (they share those
        recipients, so re-importing their files is no longer a no-op)."""
        ...

    def abort_import(self) -> None: ...
    def list_source(self, name: str) -> str | None:
        """The file version the list last took in (`finish_import`'s ``source``), if known."""
        ...

    # recipients and lists
    def list_exists(self, name: str) -> bool: ...
    def iter_recipients(
        self, list_name: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]: ...
    def count_recipients(self, list_name: str | None = None) -> int: ...
    def list_counts(self) -> list[tuple[str, int]]: ...
    def recipient_missing_field(self, list_name: str, field_name: str) -> str | None: ...

    # suppression: every address given is a canonical key (mailctl.recipients.address)
    def suppress(
        self,
        address: str,
        reason: str,
        *,
        source: str | None = None,
        status: str | None = None,
        diagnostic: str | None = None,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> bool: ...
    def unsuppress(self, address: str) -> bool: ...
    def suppression_for(
        self, address: str, *, now: float | None = None, exact: bool = False
    ) -> dict[str, Any] | None: ...
    def suppressed_set(self, addresses: Iterable[str], now: float | None = None) -> set[str]: ...
    def iter_suppression(
        self, reason: str | None = None, *, include_expired: bool = False
    ) -> Iterator[dict[str, Any]]: ...

    def unsubscribe(self, address: str, *, list_name: str | None, source: str, now: float) -> bool:
        """Record an unsubscribe of an address key (`mailctl.recipients.address.address_key`)
        with reason ``unsubscribe``: from `list_name` only, or from
        everything (a suppression row) when it is None. True when it is new; an address
        already unsubscribed (or suppressed) is left as it is."""
        ...

    def unsubscribed(self, address: str, list_name: str | None) -> bool:
        """Whether this address key is already unsubscribed from the list (or suppressed)."""
        ...

    def list_unsubscribes(self, list_name: str | None = None) -> list[dict[str, Any]]:
        """Unsubscribes scoped to one list: list_name, address, reason, source, at."""
        ...

    # remote mailboxes: how far each has been imported
    def remote_mark(self, mailbox: str) -> tuple[int | None, int] | None:
        """(UIDVALIDITY, highest imported UID) of an IMAP mailbox, None before the first run."""
        ...

    def set_remote_mark(
        self, mailbox: str, uidvalidity: int | None, last_uid: int, now: float
    ) -> None: ...

    def remote_seen(self, mailbox: str, uids: Iterable[str]) -> set[str]:
        """Which of these POP3 UIDLs were already imported from this mailbox."""
        ...

    def add_remote_seen(self, mailbox: str, uids: Iterable[str], now: float) -> None: ...

    # campaigns
    def get_campaign(self, name: str) -> dict[str, Any] | None: ...
    def list_campaigns(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]: ...
    def create_campaign(
        self,
        *,
        name: str,
        path: str,
        profile: str,
        traffic_class: str,
        pool: str,
        list_name: str,
        content: dict[str, Any],
        content_hash: str,
        now: float,
    ) -> int: ...
    def update_campaign(
        self,
        campaign_id: int,
        *,
        content: dict[str, Any],
        content_hash: str,
        path: str,
        profile: str,
        traffic_class: str,
        pool: str,
        now: float,
    ) -> int: ...
    def set_campaign_status(
        self, campaign_id: int, status: str, reason: str | None = None, now: float | None = None
    ) -> None: ...
    def cancel_unsent(self, campaign_id: int) -> int: ...
    def message_counts(self, campaign_id: int) -> dict[str, int]: ...
    def top_replies(self, campaign_id: int, limit: int = 10) -> list[tuple[str, int]]: ...

    # messages
    def queue_messages(
        self, campaign_id: int, list_name: str, now: float, make_tracking_id: Callable[[], str]
    ) -> tuple[int, int]: ...
    def claim_due(
        self, campaign_ids: Sequence[int], now: float, run_id: int, limit: int
    ) -> list[dict[str, Any]]: ...
    def release(self, message_ids: Sequence[int]) -> None: ...
    def record_outcomes(
        self,
        outcomes: Sequence[DeliveryRecord],
        ip_days: Sequence[IpDayCounts] = (),
        suppressions: Sequence[SuppressionEntry] = (),
    ) -> None:
        """Commit a batch of outcomes, with the signals and suppressions they were judged to
        carry, in one transaction."""
        ...

    def requeue_failed(
        self,
        campaign_id: int,
        failed_reasons: Sequence[str],
        expired_reasons: Sequence[str],
        now: float,
    ) -> int:
        """Failed/expired messages with these stored reasons back to `queued`, due now."""
        ...

    def mark_possible_duplicates(self, message_ids: Sequence[int]) -> None: ...
    def recover_interrupted(self) -> int: ...
    def next_due_at(self, campaign_ids: Sequence[int]) -> float | None: ...
    def remaining(self, campaign_id: int) -> int: ...
    def first_notice(self, key: str, now: float) -> bool:
        """Record notice `key`; True only the first time it is recorded (warnings that must be
        given once per cause, not once per run)."""
        ...

    def database_key(self, name: str, generate: Callable[[], str]) -> str | None:
        """A secret kept in the database itself, so every host sharing the database signs
        and verifies with the same one (created by `generate` on first use; the first
        writer wins). None where keys live in files beside the database (SQLite)."""
        ...

    def campaign_recipient_keys(self, campaign_name: str) -> set[str]:
        """The address keys that already have a message in campaign `campaign_name` (empty
        when there is no such campaign): what a real run would not queue again."""
        ...

    # the queue as operators steer it (waiting = queued or deferred)
    def queue_summary(self, by: QueueGroup, where: QueueFilter) -> list[dict[str, Any]]:
        """Per campaign, lane or domain, and wait kind: count, oldest, next_attempt_at,
        example (the next due message's full reason)."""
        ...

    def queue_list(self, where: QueueFilter, limit: int | None = None) -> list[dict[str, Any]]:
        """Waiting messages, the next due first."""
        ...

    def retry_deferred(self, where: QueueFilter, now: float) -> int:
        """Matching deferred messages fall due now; returns how many."""
        ...

    def drop_waiting(self, where: QueueFilter, now: float, note: str) -> int:
        """Matching waiting messages become `cancelled` (reason ``dropped``, ``note`` as
        their last reply); returns how many."""
        ...

    def top_wait_kinds(
        self, campaign_id: int | None = None, limit: int = 5
    ) -> list[tuple[str, int]]:
        """Why deferred messages wait now, most common first."""
        ...

    # runs
    def start_run(self, pid: int, host: str, now: float) -> int: ...
    def heartbeat(self, run_id: int, now: float) -> None: ...
    def finish_run(self, run_id: int, now: float, stop_reason: str, recovered: int) -> None: ...

    # bounce and complaint reports
    def add_bounce_event(
        self,
        *,
        digest: str,
        source: str,
        kind: str,
        now: float,
        reported_at: float | None,
        tracking_id: str | None,
        original_message_id: str | None,
        feedback_type: str | None,
        message_id: int | None,
        aliases: Sequence[str] = (),
    ) -> int | None:
        """Store a report once; None when its digest or one of its aliases is stored."""
        ...

    def add_bounce_recipient(
        self,
        event_id: int,
        day: str,
        recipient: BounceRecipientRecord,
        message_id: int | None,
        address_key: str | None = None,
    ) -> None: ...
    def soft_bounce_days(self, address: str, since_day: str, until_day: str) -> int: ...
    def message_by_tracking_id(self, tracking_id: str) -> dict[str, Any] | None: ...
    def latest_message_to(self, address_key: str, since: float) -> dict[str, Any] | None: ...
    def mark_reported(
        self, message_id: int, state: str, reply: str | None, reason: str | None
    ) -> bool: ...

    # warm-up records
    def bump_ip_day(self, ip: str, day: str, provider: str, **counts: int) -> None: ...
    def ip_days(self, ip: str | None = None) -> list[dict[str, Any]]: ...
    def take_send_quota(
        self, ip: str, day: str, provider: str, want: int, ip_cap: int, lane_cap: int | None
    ) -> tuple[int, int, int]:
        """Grant up to `want` more of `ip`'s sends to `provider` in period `day`, atomically
        among all runs, so the IP's total stays within `ip_cap` and the provider's within
        `lane_cap`. Returns (granted, the IP's total, the provider's total) after the grant;
        a total counts what was granted or, where more, what `ip_days` says was sent. A warm-up
        grant is per IP and its local day; a provider-wide one has `ip` ``*`` (every IP) and
        a UTC hour as `day` (``2027-01-15T08``)."""
        ...

    def return_send_quota(self, ip: str, day: str, provider: str, unused: int) -> None:
        """Give back granted sends a run did not use."""
        ...

    def add_warmup_event(
        self, ip: str, day: str, kind: str, preset: str | None, now: float
    ) -> None: ...
    def warmup_events(self, ip: str) -> list[tuple[str, str, str | None]]: ...

    # lanes and routes
    def lane_rows(self) -> list[dict[str, Any]]: ...
    def upsert_lanes(self, rows: Sequence[dict[str, Any]]) -> None: ...
    def release_lane_deferrals(self, ip: str, provider: str, now: float) -> int: ...
    def add_lane_event(
        self,
        *,
        at: float,
        ip: str,
        provider: str,
        kind: str,
        until: float | None,
        reason: str | None,
        rule: str | None,
        campaign_id: int | None,
    ) -> None: ...
    def cached_route(self, domain: str, now: float) -> dict[str, Any] | None: ...
    def cache_route(self, row: dict[str, Any]) -> None: ...
