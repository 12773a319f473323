"""Bounce and complaint reports: one raw message in, one ``Report`` out.

Pure: nothing here touches the database or prints; mailboxes are read by `mailbox`, the MIME
tree by `mime`. Three kinds of evidence, in order of trust, and the report's ``confidence``:

1. RFC 3464 delivery-status fields (also when nested in another multipart, or mislabelled as
   text/plain), completed by the human-readable part when they lack a diagnostic ("dsn");
2. RFC 5965 ARF feedback reports ("dsn"), Microsoft's JMRP and Apple Mail's one-click
   opt-out ("mta-rule");
3. everything else goes through the generic path (`generic`, `freetext`): whether it is a
   delivery report at all, the failed recipients, the nearest SMTP reply and the stage, read
   without knowing the MTA. "generic" unless a rule written from one MTA's or provider's
   format changed the reading ("mta-rule").

``parse_message(..., disabled_families=…)`` turns off every rule written from those corpus
families, for the leave-one-family-out measurement (bench/bounce_accuracy.py).

The sender's own addresses (the bounce's From/To, the envelope sender, MAILER-DAEMON,
postmaster, the returned message's From) are never taken as failed recipients, nor are
Message-IDs or addresses inside URLs.

Hostile input is bounded: every regex here, in `mime`, `generic` and `freetext` runs in
linear time, lines and parts are cut to a size no real report needs, a report names at most
`MAX_RECIPIENTS` recipients, and a message that still takes longer than its time budget is
given up with a `BounceParseError` (counted, never hung on).

Must not import the store, suppression or anything that prints.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from enum import StrEnum
from typing import Any

from mailctl.bounces.freetext import (
    Found,
    appended_headers,
    classify_block,
    diagnostic_of_block,
    excluded,
    find_addresses,
    free_text_recipients,
    split_original,
)
from mailctl.bounces.generic import (
    FailingReplies,
    decode_header_text,
    is_delivery_report,
    near_failure,
    smtp_replies,
)
from mailctl.bounces.mailbox import message_digest, raw_digest
from mailctl.bounces.mime import (
    MAX_FIELD_CHARS,
    Parts,
    address_of_field,
    bounded,
    clean_text,
    collect_parts,
    field_blocks,
    header_text,
    sender_addresses,
    without_type,
)
from mailctl.errors import BounceParseError
from mailctl.message.tracking import (
    TRACKING_HEADER,
    TRACKING_HEADER_IN_TEXT_RE,
    TRACKING_RE,
    TRACKING_RE_BYTES,
    verp_token,
)
from mailctl.replies.classify import (
    RULE_FAMILIES,
    Verdict,
    classify_failure,
    family_rule_decided,
)
from mailctl.replies.stages import smtp_stage

__all__ = ["MAX_RECIPIENTS", "Confidence", "FailedRecipient", "Kind", "Report", "parse_message"]

# Bounds on what one message may make the parser read. A real report's notification is a few
# KB with lines under 1,000 characters and names a handful of recipients; beyond is cut.
MAX_RAW_BYTES = 4_000_000  # the rest of a huge report (a returned attachment) is not read
MAX_RAW_LINES = 20_000  # nor lines past these (the MIME parser's cost is per line)
MAX_TEXT_CHARS = 128_000  # all text parts together (each part: mime.MAX_PART_CHARS)
MAX_NOTIFICATION_CHARS = 20_000  # the prose searched for recipients, one by one
MAX_RECIPIENTS = 100  # per report
MAX_MIME_BOUNDARIES = 64  # more nested multiparts than this: not a report
TIME_BUDGET = 2.0  # seconds per message; the bounds keep real ones under 10 ms


class _Budget:
    """The time one message may take; `check` gives up on it once that is spent."""

    def __init__(self, source: str, seconds: float) -> None:
        self.source = source
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def check(self, stage: str) -> None:
        if time.monotonic() >= self.deadline:
            raise BounceParseError(
                f"{self.source}: gave up after {self.seconds:g}s ({stage}): not a readable report"
            )


class Confidence(StrEnum):
    """How a report was read: its standard machine-readable fields (RFC 3464 / 5965), a rule
    written for one MTA's or provider's format, or only the generic path."""

    DSN = "dsn"
    MTA_RULE = "mta-rule"
    GENERIC = "generic"


class Kind(StrEnum):
    """What a message in a bounce mailbox is."""

    BOUNCE = "bounce"
    DELAY = "delay"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    DELIVERED = "delivered"
    UNSUBSCRIBE = "unsubscribe"  # a mailto request, an ARF opt-out, Apple Mail's one-click
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient named by a report, with what happened to it."""

    address: str
    status: str | None
    action: str | None
    reason: str
    permanent: bool
    suppress: bool
    diagnostic: str
    remote_mta: str | None
    rule: str
    stage: str | None = None  # the SMTP command refused: "connect", "mail", "rcpt", "data"


@dataclass(frozen=True)
class Report:
    """One parsed message from a bounce mailbox."""

    source: str
    kind: Kind
    recipients: tuple[FailedRecipient, ...]
    tracking_id: str | None
    original_message_id: str | None
    verp_token: str | None
    feedback_type: str | None
    date: str | None
    digest: str
    confidence: Confidence | None = None  # None: no recipient was read
    # Signed unsubscribe tokens the message carries (the mailto subject, a t= link); only
    # checked, by the importer, for unsubscribe requests.
    unsubscribe_tokens: tuple[str, ...] = ()
    raw_digest: str | None = None  # the digest earlier versions stored (of the raw bytes)

    def to_json(self) -> dict[str, Any]:
        """The stable public shape (``mailctl bounces parse --json``); do not change keys."""
        return {
            "source": self.source,
            "kind": str(self.kind),
            "recipients": [
                {
                    "address": r.address,
                    "status": r.status,
                    "action": r.action,
                    "reason": r.reason,
                    "permanent": r.permanent,
                    "suppress": r.suppress,
                    "diagnostic": r.diagnostic,
                    "stage": r.stage,
                }
                for r in self.recipients
            ],
            "tracking_id": self.tracking_id,
            "original_message_id": self.original_message_id,
            "confidence": str(self.confidence) if self.confidence else None,
        }


# ---------------------------------------------------------------------------------------------
# Patterns (compiled once: parsing must stay well above 1,000 messages/s)

_BOUNCE_SENDER = re.compile(
    r"mailer-daemon|post_?master|mail[ -]delivery|maildelivery|mdaemon|mail administrator|microsoftexchange|mailer_daemon|bounce",  # noqa: E501
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|return(?:ed)? to sender|failure notice|delivery (?:status )?notification|"  # noqa: E501
    r"delivery (?:has )?failed|delivery failure|failed delivery|mail delivery|could not (?:be )?deliver|"  # noqa: E501
    r"not (?:be )?delivered|delivery problem|non[- ]?remis|nondeliverable|non-delivery|mail system error|"  # noqa: E501
    r"warning: (?:could not|message)|delayed mail|delivery delayed|delivery (?:status|report)|"
    r"message (?:was )?(?:not delivered|blocked|rejected|undeliverable|could not)|rejected|bounced|"
    r"unzustellbar|no entregado|unable to deliver|delivery error|error sending|problem delivering|"
    r"permanent (?:error|failure)|returned",
    re.I,
)
_BOUNCE_BODY = re.compile(
    r"could not be delivered|couldn'?t be delivered|wasn'?t able to deliver|was not delivered|"
    r"delivery (?:to the following .{0,40})?(?:has )?failed|undeliverable|permanent (?:error|failure)|"  # noqa: E501
    r"following (?:address|recipient)s?\b.{0,40}(?:failed|rejected|undeliverable|unknown|delayed|not)|"  # noqa: E501
    r"unable to deliver|delivery (?:has been )?delayed|has been delayed|returned to sender|"
    r"transcript of session follows|remote (?:host|server) said|smtp error|said: [245]\d\d|"
    r"(?:user|host|domain) unknown|not be delivered|delivery failure|unrouteable address|"
    r"your message .{0,60}(?:rejected|blocked|bounced|not be delivered)|message delivery failed|mail delivery failed",  # noqa: E501
    re.I,
)
_DELAY_BODY = re.compile(
    r"warning message only|has been delayed|delivery (?:has been |is )?delayed|will (?:be )?(?:retried|retry|keep trying|continue)|"  # noqa: E501
    r"still (?:trying|retrying|queued)|not yet been delivered|you do not need to resend|delayed mail|"  # noqa: E501
    r"temporarily (?:deferred|delayed)|delivery .{0,30} delayed",
    re.I,
)
_PERMANENT_BODY = re.compile(
    r"permanent(?:ly)? (?:error|failure|failed|fatal)|failed permanently|i'?ve given up|has given up|giving up|"  # noqa: E501
    r"will not be (?:retried|delivered)|could not be delivered|couldn'?t be delivered|undeliverable|"  # noqa: E501
    r"delivery failed|delivery has failed|were not delivered|was not delivered|could not deliver|"
    r"unable to deliver|cannot be delivered|was undeliverable",
    re.I,
)
# A recipient's own words saying its delivery is over: the time it could spend in the queue
# ran out, or the MTA gave up (RFC 3463 X.4.7). OpenSMTPD writes "Envelope expired" under
# "Action: delayed" and a template that says the message stays queued; the message is gone.
_QUEUE_GAVE_UP = re.compile(
    r"\b(?:envelope|message|delivery(?: time)?|queue (?:life)?time|time[ -]to[ -]live) "
    r"(?:has )?expired\b|\bexpired (?:in|from) (?:the )?queue\b|\bgiv(?:ing|en) up\b|"
    r"\bgave up\b|\bwill (?:not|no longer) be retried\b|"
    r"\b(?:deleted|removed) from (?:the )?queue\b",
    re.I,
)
_TEMPORARY_BODY = re.compile(
    r"temporary (?:error|failure|problem)|transient|will (?:be )?(?:retried|retry|keep trying)",
    re.I,
)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ _-]?(?:reply|response|antwort|réponse|respuesta|risposta)|auto:|autoreply|"  # noqa: E501
    r"out of (?:the )?office|vacation|abwesenheit|absence|congés|fuera de la oficina|away from|i am away|on leave)",  # noqa: E501
    re.I,
)
_DSN_FIELDS = re.compile(r"^(?:Final-Recipient|Original-Recipient)\s*:", re.I | re.M)
_SMTP_CODE_IN_BLOCK = re.compile(r"\b[245][0-5]\d[ -]|#[245]\.\d\.\d|\b[245]\.\d{1,3}\.\d{1,3}\b")
# Structural rules written from one corpus family (see parse_message's disabled_families).
_STRUCTURE_FAMILIES = {"jmrp": "arf", "apple-unsubscribe": "arf"}
_MESSAGE_ID_IN_TEXT = re.compile(r"^[ \t>]*+Message-ID[ \t]*:[ \t]*(<[^>\s]+>|\S+)", re.I | re.M)
_FEEDBACK_COMPLAINT = frozenset({"abuse", "fraud", "virus"})
_DELIVERED_ACTIONS = frozenset({"delivered", "relayed", "expanded", "deliverable"})


# ---------------------------------------------------------------------------------------------
# Tracking


def _tracking(
    msg: Message, originals: list[Message], tail: str, raw: bytes
) -> tuple[str | None, str | None, str | None]:
    """(tracking_id, original_message_id, verp_token)."""
    verp = None
    for name in (
        "To",
        "Delivered-To",
        "X-Original-To",
        "Envelope-To",
        "X-Envelope-To",
        "Return-Path",
    ):
        for value in msg.get_all(name) or []:
            verp = verp_token(str(value))
            if verp:
                break
        if verp:
            break
    original_id = None
    tracking = None
    for original in originals:
        mailctl_id = original.get(TRACKING_HEADER)
        if mailctl_id and not tracking:
            found = TRACKING_RE.search(str(mailctl_id))
            tracking = found.group(0) if found else None
        message_id = original.get("Message-ID")
        if message_id and not original_id:
            original_id = clean_text(" ".join(str(message_id).split()))
    if original_id is None and tail:
        found = _MESSAGE_ID_IN_TEXT.search(tail)
        if found:
            original_id = found.group(1)
    if tracking is None and original_id:
        found = TRACKING_RE.search(original_id)
        tracking = found.group(0) if found else None
    if tracking is None and tail:
        found = TRACKING_HEADER_IN_TEXT_RE.search(tail)
        tracking = found.group(1) if found else None
    if tracking is None:
        tracking = verp
    if tracking is None:
        found_bytes = TRACKING_RE_BYTES.search(raw)
        tracking = found_bytes.group(0).decode() if found_bytes else None
    return tracking, original_id, verp


# ---------------------------------------------------------------------------------------------
# Classification helpers


def _recipient(
    address: str,
    verdict: Verdict,
    action: str | None,
    diagnostic: str,
    remote_mta: str | None,
    stage: str | None = None,
) -> FailedRecipient:
    return FailedRecipient(
        address=clean_text(address),
        status=verdict.status,
        action=action,
        reason=verdict.reason,
        permanent=verdict.permanent,
        suppress=verdict.suppress,
        diagnostic=clean_text(diagnostic),
        remote_mta=remote_mta,
        rule=verdict.rule,
        stage=stage,
    )


_FEEDBACK_OPT_OUT = frozenset({"opt-out", "unsubscribe"})
# A token where mailctl puts one: the mailto subject ("unsubscribe TOKEN") or a link's t=.
# Anchored on a literal prefix, so the scan stays linear on hostile input.
_TOKEN_IN_TEXT = re.compile(
    rb"(?:[?&;]t=|unsubscribe(?:%20|\+|[ \t]+))"
    rb"([A-Za-z0-9_-]{16,1400}\.[A-Za-z0-9_-]{22})(?![A-Za-z0-9_-])",
    re.I,
)
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|fwd?)\s*:\s*)*unsubscribe\b", re.I)


def _unsubscribe_tokens(raw: bytes) -> tuple[str, ...]:
    """Up to five candidate tokens from the first 256 KiB of the message."""
    found: list[str] = []
    for match in _TOKEN_IN_TEXT.finditer(raw[:262144]):
        token = match.group(1).decode("ascii")
        if token not in found:
            found.append(token)
        if len(found) == 5:
            break
    return tuple(found)


def _is_unsubscribe_request(msg: Message, subject: str, text: str) -> bool:
    """A person's message asking to unsubscribe: subject "unsubscribe…", or an empty or
    "unsubscribe" subject with a body that says just that. Never a report or auto-reply."""
    if msg.get_content_type() == "multipart/report":
        return False
    if (header_text(msg, "Auto-Submitted") or "no").lower() != "no":
        return False
    if _UNSUBSCRIBE_SUBJECT.match(subject):
        return True
    first = next((line.strip().lower() for line in text[:2000].splitlines() if line.strip()), "")
    return not subject.strip() and first.rstrip(".!") in ("unsubscribe", "stop")


def _is_autoreply(msg: Message, subject: str) -> bool:
    auto = header_text(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied") or auto.startswith("auto-notified"):
        return True
    if (
        msg.get("X-Autoreply")
        or msg.get("X-Autorespond")
        or msg.get("X-Autoresponder")
        or msg.get("X-Vacation")
    ):
        return True
    if header_text(msg, "Precedence").lower() == "auto_reply":
        return True
    if header_text(msg, "X-Auto-Response-Suppress") and subject.lower().startswith(
        ("automatic reply", "auto:", "autoreply")
    ):
        return True
    return bool(_AUTOREPLY_SUBJECT.search(subject))


# ---------------------------------------------------------------------------------------------
# Public API


def parse_message(
    raw: bytes,
    source: str,
    *,
    disabled_families: frozenset[str] = frozenset(),
    time_budget: float = TIME_BUDGET,
) -> Report:
    """Parse one message. Never raises on malformed content; BounceParseError if unreadable,
    or when it takes longer than `time_budget` seconds.

    ``disabled_families`` turns off every rule written from those corpus families (rules
    tagged in `mailctl.replies.phrases` and ``_STRUCTURE_FAMILIES``): for measuring how the
    parser does on formats it was not taught.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise BounceParseError(f"{source}: not bytes")
    raw = bytes(raw)
    if not raw.strip():
        raise BounceParseError(f"{source}: empty message")
    budget = _Budget(source, time_budget)
    digest = message_digest(raw)
    legacy_digest = raw_digest(raw)
    raw = raw[:MAX_RAW_BYTES]
    lines = raw.split(b"\n", MAX_RAW_LINES)
    if len(lines) > MAX_RAW_LINES:
        raw = b"\n".join(lines[:MAX_RAW_LINES]) + b"\n"
    del lines
    if raw.lower().count(b"boundary=") > MAX_MIME_BOUNDARIES:
        raise BounceParseError(
            f"{source}: more than {MAX_MIME_BOUNDARIES} nested MIME parts: not a report"
        )
    try:
        msg = BytesParser(policy=compat32).parsebytes(raw)
        budget.check("MIME")
        parsed = _parse(msg, raw, source, digest, disabled_families, budget)
        return replace(parsed, raw_digest=legacy_digest)
    except BounceParseError:
        raise
    except Exception:  # noqa: BLE001 - malformed MIME must not stop an import of millions
        return Report(
            source,
            Kind.UNKNOWN,
            (),
            None,
            None,
            None,
            None,
            None,
            digest,
            None,
            raw_digest=legacy_digest,
        )


def _parse(
    msg: Message,
    raw: bytes,
    source: str,
    digest: str,
    disabled: frozenset[str],
    budget: _Budget,
) -> Report:
    parts = Parts([], [], [], [], [])
    collect_parts(msg, parts)
    budget.check("parts")
    subject = clean_text(decode_header_text(str(msg.get("Subject") or "")[:MAX_FIELD_CHARS]))
    date = header_text(msg, "Date") or None
    from_header = header_text(msg, "From")

    plain = [t for t in parts.texts if not t.startswith("\x00html\x00")]
    texts = plain or [t[6:] for t in parts.texts]
    full_text = bounded("\n".join(bounded(t) for t in texts), MAX_TEXT_CHARS)
    notification, tail = split_original(full_text) if full_text else ("", "")
    budget.check("text")
    if not parts.original_headers and tail:
        appended = appended_headers(tail)
        if appended is not None:
            parts.original_headers.append(appended)

    tracking, original_id, verp = _tracking(msg, parts.original_headers, tail, raw)

    def report(
        kind: Kind,
        recipients: list[FailedRecipient],
        feedback_type: str | None = None,
        *,
        confidence: Confidence = Confidence.DSN,
    ) -> Report:
        return Report(
            source,
            kind,
            tuple(recipients),
            tracking,
            original_id,
            verp,
            feedback_type,
            date,
            digest,
            confidence if recipients else None,
            _unsubscribe_tokens(raw) if kind is Kind.UNSUBSCRIBE else (),
        )

    # The sender's own addresses: never failed recipients.
    own = sender_addresses(msg, parts.original_headers)
    if raw.startswith(b"From "):
        envelope = raw[5 : raw.find(b"\n")].split(b" ", 1)[0].decode("latin-1")
        own.add(envelope.lower())

    # 1. ARF feedback report.
    if parts.feedback:
        feedback = parts.feedback[0]
        feedback_type = (feedback.get("feedback-type") or "").strip().lower() or None
        addresses = parts.feedback_rcpts or [
            a
            for key in ("original-rcpt-to", "removal-recipient")
            if (a := address_of_field(feedback.get(key)))
        ]
        if not addresses:
            for original in parts.original_headers:
                addresses = [
                    a
                    for a in find_addresses(header_text(original, "To"))
                    if a.lower() not in own or True
                ]
                if addresses:
                    break
        complaint = feedback_type in _FEEDBACK_COMPLAINT
        opt_out = feedback_type in _FEEDBACK_OPT_OUT
        seen: set[str] = set()
        recipients = []
        for address in addresses:
            if address.lower() in seen:
                continue
            seen.add(address.lower())
            recipients.append(
                FailedRecipient(
                    address,
                    None,
                    None,
                    "feedback",
                    True,
                    complaint,
                    f"feedback-type: {feedback_type}",
                    None,
                    "arf",
                )
            )
        kind = Kind.COMPLAINT if complaint else Kind.UNSUBSCRIBE if opt_out else Kind.UNKNOWN
        return report(kind, recipients, feedback_type)

    # 1b. Microsoft's JMRP complaints: no ARF part, the complained-about message is attached
    # with X-HmXmrOriginalRecipient naming the complaining recipient.
    for original in parts.original_headers if _STRUCTURE_FAMILIES["jmrp"] not in disabled else ():
        complainer = header_text(original, "X-HmXmrOriginalRecipient")
        if complainer:
            addresses = find_addresses(complainer)[:1]
            return report(
                Kind.COMPLAINT,
                [
                    FailedRecipient(
                        a, None, None, "feedback", True, True, "feedback-type: abuse", None, "jmrp"
                    )
                    for a in addresses
                ],
                "abuse",
                confidence=Confidence.MTA_RULE,
            )
    # 1c. A mail client's one-click unsubscribe (Apple Mail sends X-Apple-Unsubscribe: true
    # from the user's own account to the List-Unsubscribe mailto), and 1d. a person's
    # "unsubscribe" sent to that mailto: opt-outs, not complaints. The importer decides whom
    # they may unsubscribe (a valid token's address, or the sender's own).
    apple = (
        header_text(msg, "X-Apple-Unsubscribe").lower() == "true"
        and _STRUCTURE_FAMILIES["apple-unsubscribe"] not in disabled
    )
    if apple or _is_unsubscribe_request(msg, subject, full_text):
        request = report(
            Kind.UNSUBSCRIBE,
            [
                FailedRecipient(
                    a,
                    None,
                    None,
                    "feedback",
                    True,
                    False,
                    "feedback-type: opt-out",
                    None,
                    "unsubscribe",
                )
                for a in find_addresses(from_header)[:1]
            ],
            "opt-out" if apple else "unsubscribe",
            confidence=Confidence.MTA_RULE,
        )
        if request.tracking_id is None:
            # A tag in the address it was sent to (unsubscribe+<tracking id>@…), or the
            # message it replies to: either names the recipient mailctl wrote to.
            for name in ("To", "Delivered-To", "X-Original-To", "In-Reply-To", "References"):
                found = TRACKING_RE.search(header_text(msg, name))
                if found:
                    return replace(request, tracking_id=found.group(0))
        return request

    # 2. RFC 3464 fields: a delivery-status part, or fields pasted into a text part.
    blocks = [block for group in parts.dsn_blocks for block in group]
    if not any(
        "final-recipient" in b or "original-recipient" in b for b in blocks
    ) and _DSN_FIELDS.search(full_text):
        blocks = field_blocks(full_text)
    recipient_blocks = [b for b in blocks if "final-recipient" in b or "original-recipient" in b]
    recipient_blocks = recipient_blocks[:MAX_RECIPIENTS]
    budget.check("fields")
    if recipient_blocks:
        dsn_report: Report = _from_dsn(recipient_blocks, notification, own, report, disabled)
        if dsn_report.recipients:
            return dsn_report
        # Only non-address recipients (Exim's "save to /mail/spool/…"): read the text.

    # 3. Auto-replies (after DSNs: Postfix marks its own bounces "Auto-Submitted: auto-replied").
    bounce_like = bool(
        _BOUNCE_SENDER.search(from_header)
        or _BOUNCE_SUBJECT.search(subject)
        or msg.get("X-Failed-Recipients")
        or msg.get_content_type() == "multipart/report"
        or _BOUNCE_BODY.search(notification[:5000])
        or is_delivery_report(
            envelope_sender=header_text(msg, "Return-Path")
            or (raw[5 : raw.find(b" ", 5)].decode("latin-1") if raw.startswith(b"From ") else ""),
            from_header=from_header,
            auto_submitted=header_text(msg, "Auto-Submitted"),
            subject=subject,
            notification=notification,
            has_original=bool(parts.original_headers),
        )
    )
    if _is_autoreply(msg, subject) and not (
        _BOUNCE_SENDER.search(from_header) or msg.get("X-Failed-Recipients")
    ):
        return report(Kind.AUTOREPLY, [])
    if not bounce_like:
        return report(Kind.UNKNOWN, [])

    # 4. Free text, read by the generic path (`generic`, `freetext`): no MTA template needed.
    hint = {
        a.lower()
        for v in msg.get_all("X-Failed-Recipients") or []
        for a in find_addresses(str(v)[:MAX_FIELD_CHARS])
    }
    budget.check("classification")
    recipients, kind, claimed = _from_free_text(
        notification, own, hint, parts.original_headers, subject, disabled, budget
    )
    if not recipients:
        return report(Kind.UNKNOWN, [])
    confidence = Confidence.MTA_RULE if claimed else Confidence.GENERIC
    return report(kind, recipients, confidence=confidence)


def _from_free_text(
    notification: str,
    own: set[str],
    hint: set[str],
    originals: list[Message],
    subject: str,
    disabled: frozenset[str],
    budget: _Budget,
) -> tuple[list[FailedRecipient], Kind, bool]:
    """The failed recipients of a free-text report, whether it is a bounce or a delay, and
    whether an MTA-specific rule claimed it (its reading differs from the generic rules')."""
    found = free_text_recipients(notification[:MAX_NOTIFICATION_CHARS], own, hint)
    found = found[: 2 * MAX_RECIPIENTS]  # the failure-phrase filter below reads each one's lines
    budget.check("recipients")
    if not found and hint:
        found = [Found(a, notification) for a in sorted(hint)]
    if len(found) > 1:
        # Several addresses: keep those a failure phrase, an SMTP reply or angle brackets
        # point at ("<a@b>: 550 …", "delivery to a@b failed"), when that leaves any.
        near_lines = _lines_naming(notification, {item.address.lower() for item in found})
        lines = notification.splitlines()
        near = [
            item
            for item in found
            if any(
                near_failure(lines, index, item.address)
                for index in near_lines.get(item.address.lower(), ())
            )
        ]
        if near:
            found = near
    if not found:
        # The report names nobody ("Delivery report unavailable", a bare transcript): the
        # returned message's single To address is the one that failed.
        for original in originals[:1]:
            to = [a for a in find_addresses(header_text(original, "To")) if not excluded(a, own)]
            if len(to) == 1:
                found = [Found(to[0], notification)]
    if not found:
        return [], Kind.UNKNOWN, False
    found = found[:MAX_RECIPIENTS]
    delay = bool(_DELAY_BODY.search(subject + "\n" + notification)) and not (
        _PERMANENT_BODY.search(notification) or _QUEUE_GAVE_UP.search(notification)
    )
    default_permanent = not delay and not (
        _TEMPORARY_BODY.search(notification) and not _PERMANENT_BODY.search(notification)
    )
    preamble = notification[: notification.find(found[0].address)] if found else notification
    replies = FailingReplies(smtp_replies(notification) if notification else [])
    recipients = []
    claimed = False
    verdicts: dict[str, Verdict] = {}  # one reading per block (many addresses may share one)
    for item in found:
        action = "delayed" if delay else "failed"
        block, diagnostic = item.block, diagnostic_of_block(item.block, item.address)
        position = notification.find(item.address)
        reply = replies.nearest(max(position, 0))
        if reply is not None and not _SMTP_CODE_IN_BLOCK.search(block):
            # The recipient's lines quote no reply: the nearest one in the report is its.
            block = block + "\n" + notification[reply.start : reply.end]
            diagnostic = reply.text
        elif (
            reply is not None
            and reply.text.count(" ") > 4
            and "-" in notification[reply.start : reply.end].split(None, 1)[0]
        ):
            diagnostic = reply.text  # a multi-line "550-…" reply: its words, once
        # Prose states no Action field: only a DSN's "Action: failed" says the MTA gave up
        # retrying (a free-text report of a 4xx may be a live session's, never queued).
        stated = action if delay else None
        verdict = verdicts.get(block)
        if verdict is None:
            verdict = verdicts[block] = classify_block(
                block, preamble, subject, stated, default_permanent, disabled
            )
            budget.check("verdicts")
        if (
            not claimed
            and disabled != RULE_FAMILIES
            and family_rule_decided(verdict, block + "\n" + preamble + "\n" + subject)
        ):
            claimed = verdict != classify_block(
                block, preamble, subject, stated, default_permanent, RULE_FAMILIES
            )
        stage = smtp_stage(block, disabled)
        recipients.append(_recipient(item.address, verdict, action, diagnostic, None, stage))
    return recipients, Kind.DELAY if delay else Kind.BOUNCE, claimed


def _lines_naming(text: str, wanted: set[str]) -> dict[str, list[int]]:
    """The first few line numbers naming each wanted address, in one pass (linear time)."""
    naming: dict[str, list[int]] = {}
    for index, line in enumerate(text.splitlines()):
        if "@" in line:
            for address in find_addresses(line):
                key = address.lower()
                if key in wanted and len(naming.setdefault(key, [])) < 4:
                    naming[key].append(index)
    return naming


def _from_dsn(
    blocks: list[dict[str, str]],
    notification: str,
    own: set[str],
    report: Any,
    disabled: frozenset[str],
) -> Report:
    per_text = (
        {
            f.address.lower(): f.block
            # The DSN names its recipients: a postmaster@ there is a real recipient.
            for f in free_text_recipients(notification, set(), set(), system_ok=True)
        }
        if notification
        else {}
    )
    recipients: list[FailedRecipient] = []
    seen: set[str] = set()
    actions: list[str] = []
    named = {(address_of_field(b.get("original-recipient")) or "").lower() for b in blocks} | {
        (address_of_field(b.get("final-recipient")) or "").lower() for b in blocks
    }
    for block in blocks:
        final = address_of_field(block.get("final-recipient"))
        original = address_of_field(block.get("original-recipient"))
        # Report the address we sent to: Original-Recipient is that, Final-Recipient may be
        # the result of forwarding or aliasing on the receiving side.
        address = original or final
        if address and address.startswith("@") and per_text:
            # "Final-Recipient: rfc822; @mx.example.org" (no local part): the report's text
            # names the address; take it when exactly one text address is left unclaimed.
            unclaimed = [a for a in per_text if a not in seen and a not in named]
            address = unclaimed[0] if len(unclaimed) == 1 else None
        if not address or address.lower() in seen:
            continue
        seen.add(address.lower())
        action = (
            (block.get("action") or "").strip().lower().split()[0] if block.get("action") else None
        )
        status = block.get("status") or None
        diagnostic = without_type(block.get("diagnostic-code"))
        remote_mta = without_type(block.get("remote-mta")) or None
        text_block = per_text.get((final or "").lower()) or per_text.get(address.lower()) or ""
        if text_block and (not diagnostic or not _SMTP_CODE_IN_BLOCK.search(diagnostic)):
            diagnostic = (diagnostic + " " + text_block).strip() if diagnostic else text_block
        if action == "deliverable" or action is None and status and status.startswith("2."):
            action = "delivered"  # "deliverable" answers a verify request (non-standard wording)
        if action is None:
            action = "failed" if status and status[:1] in "45" else None
        if action == "delayed" and _QUEUE_GAVE_UP.search(diagnostic):
            action = "failed"  # the delivery is over, whatever the template goes on to say
        verdict = classify_failure(
            status, diagnostic, action, context=text_block, disabled_families=disabled
        )
        actions.append(action or "")
        recipients.append(
            _recipient(
                address,
                verdict,
                action,
                " ".join(diagnostic.split())[:1000],
                remote_mta,
                smtp_stage(diagnostic, disabled) or smtp_stage(text_block, disabled),
            )
        )
    if any(a == "failed" or a == "" for a in actions):
        kind = Kind.BOUNCE
    elif any(a == "delayed" for a in actions):
        kind = Kind.DELAY
    elif actions and all(a in _DELIVERED_ACTIONS for a in actions):
        kind = Kind.DELIVERED
    else:
        kind = Kind.BOUNCE
    result: Report = report(kind, recipients)
    return result
