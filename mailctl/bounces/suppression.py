"""What bounce and complaint reports do: correlation to sent messages, suppression, signals.

Reports are read by `mailbox` and `parse`; this module ties each one to the message it is
about (a signed VERP token or tracking id, a Message-ID carrying one, else the recipient and
a recent send to it) and applies its effects: hard bounces and complaints suppress at once,
soft bounces are scored and suppress only after repeated failures on distinct days, delays
never suppress. Anyone can mail a bounce address, so a report that ties no recipient to mail
mailctl sent suppresses no one unless the profile trusts the mailbox (`EvidencePolicy`). A
report read only by the generic path (``Confidence.GENERIC``: no DSN fields, no rule written
for its MTA) is "unsure": it suppresses only on a 5xx reply with a recipient-scoped reason,
and it is counted and listed apart so that the operator can look at it. Unsubscribe mail
(mailto requests, ARF opt-outs, Apple Mail's one-click) unsubscribes only whom it can prove:
a valid token's address, a signed tracking id's recipient, or its own sender mailed recently.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any

from mailctl.bounces.mailbox import iter_messages
from mailctl.bounces.parse import Confidence, FailedRecipient, Kind, Report, parse_message
from mailctl.bounces.remote import RemoteOptions, fetch_remote, is_remote
from mailctl.config.provider_rules import Scope
from mailctl.errors import BounceParseError, InputError, InvalidAddress
from mailctl.files import PrivateCsvWriter, private_text_file
from mailctl.message.tracking import TRACKING_RE, TrackingKeys, is_legacy
from mailctl.recipients.address import address_key, normalise_address, suppression_key
from mailctl.replies.classify import REASON_SCOPE, parse_reply_code
from mailctl.reputation.signals import reported_counts
from mailctl.store.base import IpDayCounts, Store
from mailctl.unsubscribe.apply import Unsubscriber
from mailctl.unsubscribe.tokens import TokenError

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual", "soft_bounce_limit")
DAY = 86400.0


@dataclass(frozen=True)
class SoftBouncePolicy:
    """Suppress after `limit` soft bounces on distinct days within `window_days`."""

    limit: int = 3
    window_days: int = 30
    expire_days: int = 30  # a soft suppression lifts by itself


@dataclass(frozen=True)
class EvidencePolicy:
    """What a report must show before it may suppress anyone.

    A recipient is matched when the report names a message mailctl sent to it (a signed
    VERP token or tracking id, or a Message-ID carrying one; an old unsigned id only by its
    stored value) or when mailctl sent to that address within `recent_days`. Unmatched
    recipients are recorded and counted, and suppress only with `trust_unmatched` (a mailbox
    only a trusted MTA writes to), at most `max_unmatched` of them per report. A wildcard
    (``*@domain``) or an invalid address never suppresses.
    """

    trust_unmatched: bool = False
    max_unmatched: int = 10
    recent_days: int = 30


@dataclass
class ImportResult:
    messages: int = 0
    duplicates: int = 0
    bounces: int = 0
    delays: int = 0
    complaints: int = 0
    autoreplies: int = 0
    delivered: int = 0
    unsubscribes: int = 0  # mailto requests, ARF opt-outs, Apple Mail one-clicks
    unsubscribed: int = 0  # addresses they newly unsubscribed
    unsubscribes_unmatched: int = 0  # tied to no token and no recent recipient: ignored
    not_reports: int = 0
    errors: int = 0
    recipients: int = 0
    suppressed: int = 0
    matched: int = 0
    unmatched: int = 0  # reports that name recipients but no message mailctl sent
    unmatched_recipients: int = 0  # recorded, not suppressed
    rejected: int = 0  # wildcards and invalid addresses a report named
    unsure: int = 0  # reports read only by the generic path
    error_sources: list[str] = field(default_factory=list)
    unmatched_sources: list[str] = field(default_factory=list)
    unsure_sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "already_imported": self.duplicates,
            "bounces": self.bounces,
            "delays": self.delays,
            "complaints": self.complaints,
            "autoreplies": self.autoreplies,
            "delivered": self.delivered,
            "unsubscribes": self.unsubscribes,
            "unsubscribed": self.unsubscribed,
            "unsubscribes_unmatched": self.unsubscribes_unmatched,
            "not_reports": self.not_reports,
            "errors": self.errors,
            "recipients": self.recipients,
            "suppressed": self.suppressed,
            "matched": self.matched,
            "unmatched": self.unmatched,
            "unmatched_recipients": self.unmatched_recipients,
            "rejected": self.rejected,
            "unsure": self.unsure,
            "error_sources": self.error_sources,
            "unmatched_sources": self.unmatched_sources,
            "unsure_sources": self.unsure_sources,
        }


def _report_time(report: Report, now: float) -> float:
    if report.date:
        try:
            return parsedate_to_datetime(report.date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return now


def _day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def _tracking_ids(report: Report) -> list[tuple[str, str]]:
    """(evidence, tracking id) candidates the report carries, strongest first."""
    found: list[tuple[str, str]] = []
    for evidence, candidate in (
        ("verp", report.verp_token),
        ("tracking_id", report.tracking_id),
        ("message_id", report.original_message_id),
    ):
        if candidate and (match := TRACKING_RE.search(candidate[:1000])):
            found.append((evidence, match.group(0)))
    return found


def _sent_message(
    store: Store, report: Report, keys: TrackingKeys | None
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(message, evidence, tracking id): the sent message a report names by a tracking id
    that is genuine, a signed id that verifies or an old unsigned one found in the store."""
    first: str | None = None
    for evidence, tracking_id in _tracking_ids(report):
        first = first or tracking_id
        if not is_legacy(tracking_id) and (keys is None or not keys.verify(tracking_id)):
            continue  # forged, or signed with a key this database does not have
        message = store.message_by_tracking_id(tracking_id)
        if message is not None:
            return message, evidence, tracking_id
    return None, None, first


def _canonical(address: str) -> str | None:
    """The canonical key of the address to suppress, or None for one a report may never
    suppress (a wildcard, an invalid address)."""
    try:
        canonical = normalise_address(address)[0]
    except InvalidAddress:
        return None
    return None if canonical.startswith("*@") else address_key(canonical)


def sure_enough_to_suppress(report: Report, recipient: FailedRecipient) -> bool:
    """Whether a hard bounce may suppress: always from a DSN or an MTA rule; from the generic
    path only with a 5xx reply and a reason that is the recipient's own."""
    if not recipient.suppress:
        return False
    if report.confidence is not Confidence.GENERIC:
        return True
    code = parse_reply_code(recipient.diagnostic)
    five = (recipient.status or "").startswith("5") or (code is not None and 500 <= code < 600)
    return five and REASON_SCOPE.get(recipient.reason) is Scope.RECIPIENT


def apply_report(
    store: Store,
    report: Report,
    *,
    now: float,
    policy: SoftBouncePolicy,
    result: ImportResult,
    evidence: EvidencePolicy | None = None,
    keys: TrackingKeys | None = None,
    unsubscriber: Unsubscriber | None = None,
) -> bool:
    """Store one report (once) and apply its effects, inside the caller's transaction.

    Returns False when the report named recipients of which none could be tied to a message
    mailctl sent (an unmatched report)."""
    evidence = evidence or EvidencePolicy()
    message, how, tracking_id = _sent_message(store, report, keys)
    reported_at = _report_time(report, now)
    event_id = store.add_bounce_event(
        digest=report.digest,
        source=report.source,
        kind=report.kind.value,
        now=now,
        reported_at=reported_at,
        tracking_id=tracking_id,
        original_message_id=report.original_message_id,
        feedback_type=report.feedback_type,
        message_id=message["id"] if message else None,
        aliases=(report.raw_digest,) if report.raw_digest else (),
    )
    if event_id is None:
        result.duplicates += 1
        return True
    counters = {
        Kind.BOUNCE: "bounces",
        Kind.DELAY: "delays",
        Kind.COMPLAINT: "complaints",
        Kind.AUTOREPLY: "autoreplies",
        Kind.DELIVERED: "delivered",
        Kind.UNSUBSCRIBE: "unsubscribes",
        Kind.UNKNOWN: "not_reports",
    }
    setattr(result, counters[report.kind], getattr(result, counters[report.kind]) + 1)
    if report.kind is Kind.UNSUBSCRIBE:
        _apply_unsubscribe(
            store, report, message, now=now, result=result, unsubscriber=unsubscriber
        )
        return True  # counted apart (unsubscribes_unmatched), never suppresses on a guess
    if report.kind not in (Kind.BOUNCE, Kind.DELAY, Kind.COMPLAINT):
        return True
    day = _day(reported_at)
    matched_any = False
    trusted_left = evidence.max_unmatched if evidence.trust_unmatched else 0
    for recipient in report.recipients:
        result.recipients += 1
        address = _canonical(recipient.address)
        target = None
        if address is not None:
            target = message
            if target is None or address_key(target["email"]) != address:
                # No tracking id (or a report about another recipient of it): the most recent
                # message to this address within the retry horizon.
                target = store.latest_message_to(address, reported_at - evidence.recent_days * DAY)
        store.add_bounce_recipient(
            event_id, day, recipient, target["id"] if target else None, address_key=address
        )
        if address is None:
            result.rejected += 1
            continue
        if target is not None:
            matched_any = True
        elif trusted_left > 0:
            trusted_left -= 1
        else:
            result.unmatched_recipients += 1
            continue  # nothing ties this address to mail mailctl sent: never suppress on it
        if report.kind is Kind.COMPLAINT:
            if store.suppress(
                address,
                "complaint",
                source=report.source,
                status=recipient.status,
                diagnostic=report.feedback_type,
                now=now,
            ):
                result.suppressed += 1
            if target is not None:
                store.mark_reported(target["id"], "complained", None, "feedback")
                _signal(store, reported_counts(target, complained=True))
            continue
        if report.kind is Kind.DELAY or recipient.action == "delayed":
            continue  # a warning: the message is still being retried
        if recipient.permanent:
            # The recipient's own failure is a bounce; the sender's (a block, policy,
            # authentication) is a failure of the send that never touches the recipient.
            state = "bounced" if recipient.suppress else "failed"
            if target is not None and store.mark_reported(
                target["id"], state, recipient.diagnostic or recipient.status, recipient.reason
            ):
                _signal(store, reported_counts(target, reason=recipient.reason))
            if sure_enough_to_suppress(report, recipient) and store.suppress(
                address,
                "hard_bounce",
                source=report.source,
                status=recipient.status,
                diagnostic=recipient.diagnostic,
                now=now,
            ):
                result.suppressed += 1
            continue
        # A soft bounce: scored, suppressed (for a while) only when it keeps happening.
        since = _day(reported_at - policy.window_days * DAY)
        if store.soft_bounce_days(address, since, day) >= policy.limit and store.suppress(
            address,
            "soft_bounce_limit",
            source=report.source,
            status=recipient.status,
            diagnostic=recipient.diagnostic,
            expires_at=now + policy.expire_days * DAY,
            now=now,
        ):
            result.suppressed += 1
    if matched_any:
        result.matched += 1
        return True
    if report.recipients:
        result.unmatched += 1
        result.unmatched_sources.append(report.source)
        return False
    return True


def _apply_unsubscribe(
    store: Store,
    report: Report,
    message: dict[str, Any] | None,
    *,
    now: float,
    result: ImportResult,
    unsubscriber: Unsubscriber | None,
) -> None:
    """Unsubscribe whom an opt-out may name, and no one else: the address of a valid signed
    token it carries; else the recipient of the message its (verified) tracking id names,
    when the report is about that recipient; else the sender, when mailctl mailed them
    recently. Every address is written and compared by its canonical key."""
    reported = [key for r in report.recipients if (key := _canonical(r.address)) is not None]
    address: str | None = None
    list_name: str | None = None
    source = f"{report.feedback_type or 'unsubscribe'}-mail:{report.source}"
    if unsubscriber is not None:
        for candidate in report.unsubscribe_tokens:
            try:
                token = unsubscriber.verify(candidate, now)
            except TokenError:
                continue
            address = address_key(token.address)
            list_name = unsubscriber.list_for(store, token)
            source = f"mail:{token.campaign}"
            break
    from_sender = bool(report.recipients) and report.recipients[0].rule == "unsubscribe"
    if address is None and message is not None:
        # A request's To: tag or In-Reply-To names the message (a signed tracking id, like a
        # token); an ARF report must also be about that message's recipient.
        if from_sender or address_key(message["email"]) in reported:
            address = address_key(message["email"])
    if address is None and reported and from_sender:
        # The sender's own address (a mailto request, Apple Mail), and only if mailctl
        # mailed it recently. An ARF report names someone else: it needs a token or a
        # tracking id, or anyone could forge one about anybody.
        sent = store.latest_message_to(reported[0], now - 60 * DAY)
        if sent is not None:
            address = reported[0]
    if address is None:
        result.unsubscribes_unmatched += 1
        return
    result.matched += 1
    if store.unsubscribe(address, list_name=list_name, source=source[:200], now=now):
        result.unsubscribed += 1


def _signal(store: Store, counts: IpDayCounts | None) -> None:
    if counts is not None:
        store.bump_ip_day(counts.ip, counts.day, counts.provider, **counts.counts())


# A batch commits in one short write transaction: parsing happens before it, outside any
# transaction, so a concurrent `send` waits for a few milliseconds at most.
BATCH_REPORTS = 50
BATCH_BYTES = 8_000_000


def import_reports(
    store: Store,
    paths: Iterable[str],
    *,
    now: float | None = None,
    policy: SoftBouncePolicy | None = None,
    evidence: EvidencePolicy | None = None,
    keys: TrackingKeys | None = None,
    on_message: Callable[[ImportResult], None] | None = None,
    on_error: Callable[[str, bytes, str], None] | None = None,
    on_unmatched: Callable[[str, bytes], None] | None = None,
    on_unsure: Callable[[str, bytes, str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    remote: RemoteOptions | None = None,
    unsubscriber: Unsubscriber | None = None,
    batch: int = BATCH_REPORTS,
) -> ImportResult:
    """Import mailboxes (mbox, Maildir, .eml, "-", or imap(s):// and pop3(s):// URLs):
    idempotent, streaming, never stopped by one bad message.

    Each report's event, recipients, suppressions and signals commit together with the rest
    of its batch or not at all, so an import interrupted anywhere and run again ends in the
    same state as one that was never interrupted. `keys` verify signed tracking ids (None:
    only old unsigned ids found in the store count as evidence). ``on_unmatched`` and
    ``on_unsure`` hear, after their batch commits, of each new report tied to no sent
    message, and of each new report read by the generic path only. A remote mailbox's batch
    commits with its mark (IMAP UID, POP3 UIDLs) in the same transaction."""
    now = time.time() if now is None else now
    policy = policy or SoftBouncePolicy()
    evidence = evidence or EvidencePolicy()
    result = ImportResult()
    pending: list[tuple[Report, bytes]] = []
    pending_bytes = 0

    def flush(mark: Callable[[], None] | None = None) -> None:
        """Commit the pending reports (and a remote mailbox's mark) in one transaction."""
        nonlocal pending_bytes
        if not pending and mark is None:
            return
        unmatched: list[tuple[str, bytes]] = []
        unsure: list[tuple[str, bytes]] = []
        with store.transaction():
            if mark is not None:
                mark()
            for report, raw in pending:
                duplicates = result.duplicates
                if not apply_report(
                    store,
                    report,
                    now=now,
                    policy=policy,
                    result=result,
                    evidence=evidence,
                    keys=keys,
                    unsubscriber=unsubscriber,
                ):
                    unmatched.append((report.source, raw))
                if report.confidence is Confidence.GENERIC and result.duplicates == duplicates:
                    unsure.append((report.source, raw))
        # Counted once the batch is durable: an interrupted batch is counted by its re-import.
        result.unsure += len(unsure)
        result.unsure_sources.extend(source for source, _ in unsure)
        pending.clear()
        pending_bytes = 0
        if on_unmatched:
            for source, raw in unmatched:
                on_unmatched(source, raw)
        if on_unsure:
            for source, raw in unsure:
                on_unsure(source, raw, "read by the generic path only")

    def read(source: str, raw: bytes, *, may_flush: bool = True) -> None:
        """Parse one message (outside any transaction) and queue its report."""
        result.messages += 1
        try:
            report = parse_message(raw, source)
        except BounceParseError as exc:
            result.errors += 1
            result.error_sources.append(source)
            if on_error:
                on_error(source, raw, str(exc))
            return
        nonlocal pending_bytes
        keep = on_unmatched is not None or on_unsure is not None
        pending.append((report, raw if keep else b""))
        pending_bytes += len(raw) if keep else 0
        if may_flush and (len(pending) >= batch or pending_bytes >= BATCH_BYTES):
            flush()
        if on_message:
            on_message(result)

    for path in paths:
        if is_remote(path):
            flush()
            # A remote batch (bounded by RemoteOptions.batch) commits only with its mark.
            fetch_remote(
                store,
                path,
                remote or RemoteOptions(),
                handle=partial(read, may_flush=False),
                commit=flush,
                now=now,
                on_total=on_total,
            )
            continue
        if path != "-" and not Path(path).exists():
            raise InputError(f"{path}: no such file or directory")
        for source, raw in iter_messages(path):
            read(source, raw)
    flush()
    return result


# --------------------------------------------------------------------------- CSV in and out


def import_suppression_csv(store: Store, path: Path, *, reason: str, now: float) -> tuple[int, int]:
    """Rows with an `address` (or `email`) column, optionally `reason`; returns (added, invalid)."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    added = invalid = 0
    with handle:
        reader = csv.DictReader(handle)
        columns = {c.lower(): c for c in reader.fieldnames or []}
        column = columns.get("address") or columns.get("email")
        if column is None:
            raise InputError(f"{path}:1: no 'address' or 'email' column")
        with store.transaction():
            for row in reader:
                value = (row.get(column) or "").strip()
                row_reason = (row.get(columns.get("reason", ""), "") or reason).strip() or reason
                if row_reason not in REASONS:
                    invalid += 1
                    continue
                try:
                    address = parse_suppression_target(value)
                except InvalidAddress:
                    invalid += 1
                    continue
                added += store.suppress(address, row_reason, source=f"import:{path.name}", now=now)
    return added, invalid


def export_suppression_csv(store: Store, path: Path, reason: str | None = None) -> int:
    count = 0
    with private_text_file(path) as handle:  # 0600, atomic: it holds addresses
        writer = PrivateCsvWriter(handle)  # cells escaped against spreadsheet formulas
        writer.writerow(
            [
                "address",
                "reason",
                "source",
                "status",
                "first_seen",
                "last_seen",
                "count",
                "expires_at",
            ]
        )
        for row in store.iter_suppression(reason):
            writer.writerow(
                [
                    row["address"],
                    row["reason"],
                    row["source"],
                    row["status"],
                    _iso(row["first_seen"]),
                    _iso(row["last_seen"]),
                    row["count"],
                    _iso(row["expires_at"]),
                ]
            )
            count += 1
    return count


def _iso(timestamp: float | None) -> str:
    return "" if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def parse_suppression_target(value: str) -> str:
    """An address, or `*@domain` for a whole domain, as its canonical key."""
    return suppression_key(value)
