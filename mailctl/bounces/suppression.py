"""What bounce and complaint reports do: correlation to sent messages, suppression, signals.

Reports are read by `mailbox` and `parse`; this module ties each one to the message it is
about (VERP token, tracking id, Message-ID, else recipient and recent sends) and applies its
effects: hard bounces and complaints suppress at once, soft bounces are scored and suppress
only after repeated failures on distinct days, delays never suppress. A report read only by
the generic path (``Confidence.GENERIC``: no DSN fields, no rule written for its MTA) is
"unsure": it suppresses only on a 5xx reply with a recipient-scoped reason, and it is counted
and listed apart so that the operator can look at it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from mailctl.bounces.mailbox import iter_messages
from mailctl.bounces.parse import Confidence, FailedRecipient, Kind, Report, parse_message
from mailctl.config.provider_rules import Scope
from mailctl.errors import BounceParseError, InputError, InvalidAddress
from mailctl.message.tracking import TRACKING_RE
from mailctl.recipients.csv_import import normalise_address
from mailctl.replies.classify import REASON_SCOPE, parse_reply_code
from mailctl.reputation.signals import reported_counts
from mailctl.store.base import IpDayCounts, Store

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual", "soft_bounce_limit")
DAY = 86400.0


@dataclass(frozen=True)
class SoftBouncePolicy:
    """Suppress after `limit` soft bounces on distinct days within `window_days`."""

    limit: int = 3
    window_days: int = 30
    expire_days: int = 30  # a soft suppression lifts by itself


@dataclass
class ImportResult:
    messages: int = 0
    duplicates: int = 0
    bounces: int = 0
    delays: int = 0
    complaints: int = 0
    autoreplies: int = 0
    delivered: int = 0
    not_reports: int = 0
    errors: int = 0
    recipients: int = 0
    suppressed: int = 0
    matched: int = 0
    unsure: int = 0  # reports read only by the generic path
    error_sources: list[str] = field(default_factory=list)
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
            "not_reports": self.not_reports,
            "errors": self.errors,
            "recipients": self.recipients,
            "suppressed": self.suppressed,
            "matched": self.matched,
            "unsure": self.unsure,
            "error_sources": self.error_sources,
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


def _tracking_id(report: Report) -> str | None:
    for candidate in (report.verp_token, report.tracking_id, report.original_message_id):
        if candidate and (match := TRACKING_RE.search(candidate)):
            return match.group(0)
    return None


def _normalised(address: str) -> str:
    try:
        return normalise_address(address)[0]
    except InvalidAddress:
        return address.strip().lower()


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
    store: Store, report: Report, *, now: float, policy: SoftBouncePolicy, result: ImportResult
) -> None:
    """Store one report (once) and apply its effects, inside the caller's transaction."""
    tracking_id = _tracking_id(report)
    message = store.message_by_tracking_id(tracking_id) if tracking_id else None
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
    )
    if event_id is None:
        result.duplicates += 1
        return
    counters = {
        Kind.BOUNCE: "bounces",
        Kind.DELAY: "delays",
        Kind.COMPLAINT: "complaints",
        Kind.AUTOREPLY: "autoreplies",
        Kind.DELIVERED: "delivered",
        Kind.UNKNOWN: "not_reports",
    }
    setattr(result, counters[report.kind], getattr(result, counters[report.kind]) + 1)
    if report.kind not in (Kind.BOUNCE, Kind.DELAY, Kind.COMPLAINT):
        return
    day = _day(reported_at)
    matched_any = False
    for recipient in report.recipients:
        address = _normalised(recipient.address)
        result.recipients += 1
        target = message
        if target is None or target["email"].lower() != address.lower():
            # No tracking id (or a report about another recipient of it): the most recent
            # message to this address within the retry horizon.
            target = store.latest_message_to(address, reported_at - 30 * DAY)
        store.add_bounce_recipient(event_id, day, recipient, target["id"] if target else None)
        if target is not None:
            matched_any = True
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


def _signal(store: Store, counts: IpDayCounts | None) -> None:
    if counts is not None:
        store.bump_ip_day(counts.ip, counts.day, counts.provider, **counts.counts())


def import_reports(
    store: Store,
    paths: Iterable[str],
    *,
    now: float | None = None,
    policy: SoftBouncePolicy | None = None,
    on_message: Callable[[ImportResult], None] | None = None,
    on_error: Callable[[str, bytes, str], None] | None = None,
    on_unsure: Callable[[str, bytes, str], None] | None = None,
    batch: int = 500,
) -> ImportResult:
    """Import mailboxes (mbox, Maildir, .eml, "-"): idempotent, streaming, never stopped by
    one bad message. ``on_unsure`` hears of each new report read only by the generic path."""
    now = time.time() if now is None else now
    policy = policy or SoftBouncePolicy()
    result = ImportResult()
    pending = 0
    with store.batched_transaction() as commit:
        for path in paths:
            if path != "-" and not Path(path).exists():
                raise InputError(f"{path}: no such file or directory")
            for source, raw in iter_messages(path):
                result.messages += 1
                try:
                    report = parse_message(raw, source)
                except BounceParseError as exc:
                    result.errors += 1
                    result.error_sources.append(source)
                    if on_error:
                        on_error(source, raw, str(exc))
                    continue
                duplicates = result.duplicates
                apply_report(store, report, now=now, policy=policy, result=result)
                if report.confidence is Confidence.GENERIC and result.duplicates == duplicates:
                    result.unsure += 1
                    result.unsure_sources.append(source)
                    if on_unsure:
                        on_unsure(source, raw, "read by the generic path only")
                pending += 1
                if pending >= batch:
                    commit()
                    pending = 0
                if on_message:
                    on_message(result)
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
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
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
    """An address, or `*@domain` for a whole domain; normalised like recipients."""
    value = value.strip()
    if value.startswith("*@"):
        _, domain = normalise_address("x@" + value[2:])
        return "*@" + domain
    return normalise_address(value)[0]
