"""The MIME walk of a bounce report: its text parts decoded in their real charset, its
delivery-status and feedback fields, the headers of the returned message, and the sender's
own addresses among the headers (`sender_addresses`).

Bounded: a DSN field value or header is cut at MAX_FIELD_CHARS, text parts and lines by
`bounded`, and every regex here runs in linear time. Pure; used by `parse`. Imports the
address finder (`freetext`) and the charset reader (`generic`); never `parse`, the store or
anything that prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from mailctl.bounces.freetext import find_addresses
from mailctl.bounces.generic import decode_bytes

MAX_PART_CHARS = 64_000  # per text part
MAX_LINE_CHARS = 1_000  # RFC 5322 allows 998
MAX_FIELD_CHARS = 2_000  # one DSN field value (a Diagnostic-Code), or a header

# No "<" inside a tag and possessive repeats: each scan stops at the next "<", so a run of
# "<" is read once, not once per "<".
_HTML_TAG = re.compile(r"<(?:[^<>\"']|\"[^<>\"]*+\"|'[^<>']*+')*+>|&nbsp;|&[a-z]+;", re.I)
_ORIGINAL_RCPT_TO = re.compile(r"^Original-Rcpt-To[ \t]*:[ \t]*<?([^\s>]+)>?", re.I | re.M)


def bounded(text: str, limit: int = MAX_PART_CHARS) -> str:
    """At most `limit` characters, each line cut at MAX_LINE_CHARS."""
    text = text[:limit]
    if len(text) <= MAX_LINE_CHARS:
        return text
    lines = text.split("\n")
    if all(len(line) <= MAX_LINE_CHARS for line in lines):
        return text
    return "\n".join(line[:MAX_LINE_CHARS] for line in lines)


_HTML_BREAK = re.compile(r"<(?:br|p|div|tr|li|h\d)\b[^>]*>", re.I)


def clean_text(text: str) -> str:
    """Headers parsed by compat32 keep undecodable bytes as surrogates; make them printable."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def header_text(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    return clean_text(str(value)[:MAX_FIELD_CHARS])


def decode_part(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        raw = part.get_payload()
        return clean_text(raw) if isinstance(raw, str) else ""
    if not isinstance(payload, bytes):
        return ""
    return decode_bytes(payload, part.get_content_charset())


def html_to_text(html: str) -> str:
    text = _HTML_BREAK.sub("\n", html)
    return _HTML_TAG.sub(" ", text)


def field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 field blocks from plain text: unfold, split on blank lines, keep the first value."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            if len(current[last]) < MAX_FIELD_CHARS:
                current[last] = (current[last] + " " + line.strip())[:MAX_FIELD_CHARS]
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name.strip():
            last = name.strip().lower()
            current.setdefault(last, value.strip()[:MAX_FIELD_CHARS])
        else:
            last = None
    if current:
        blocks.append(current)
    return blocks


def blocks_of_dsn_part(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for sub in payload:
            if isinstance(sub, Message):
                block: dict[str, str] = {}
                for name, value in sub.items():
                    value = str(value)[: 2 * MAX_FIELD_CHARS]
                    block.setdefault(
                        name.strip().lower(), clean_text(" ".join(value.split()))[:MAX_FIELD_CHARS]
                    )
                if block:
                    blocks.append(block)
        if blocks:
            return blocks
    return field_blocks(decode_part(part))


def address_of_field(value: str | None) -> str | None:
    if not value:
        return None
    _, sep, rest = value.partition(";")
    candidate = (rest if sep else value).strip().strip("<>").strip()
    if "@" not in candidate:
        return None
    found = find_addresses(candidate)
    if candidate.startswith('"') or not found:
        return candidate.split()[0] if candidate else None
    return found[0]


def without_type(value: str | None) -> str:
    if not value:
        return ""
    kind, sep, rest = value.partition(";")
    if sep and kind.strip().lower() in (
        "smtp",
        "x-unix",
        "x-postfix",
        "x-local",
        "x-smtp",
        "mail",
        "unix",
    ):
        return rest.strip()
    return value.strip()


# ---------------------------------------------------------------------------------------------
# The message walk


@dataclass
class Parts:
    texts: list[str]
    dsn_blocks: list[list[dict[str, str]]]
    feedback: list[dict[str, str]]
    feedback_rcpts: list[str]
    original_headers: list[Message]


def collect_parts(msg: Message, parts: Parts, depth: int = 0) -> None:
    """Walk the MIME tree. A returned message (message/rfc822) is read for headers only,
    unless it is itself a bounce (a forwarded DSN): then its report parts count too."""
    if depth > 8:
        return
    ctype = msg.get_content_type()
    # compat32 gives message/delivery-status (and message/*) list payloads too: type first.
    if msg.is_multipart() and not ctype.startswith("message/"):
        payload = msg.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    collect_parts(sub, parts, depth + 1)
        elif isinstance(payload, str):
            parts.texts.append(clean_text(payload))  # boundary missing: read the body as text
        return
    if ctype.startswith("multipart/"):
        # Declared multipart but its boundary never occurs: the whole body is one text.
        payload = msg.get_payload()
        if isinstance(payload, str):
            parts.texts.append(clean_text(payload))
        return
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        parts.dsn_blocks.append(blocks_of_dsn_part(msg))
    elif ctype == "message/feedback-report":
        blocks = blocks_of_dsn_part(msg)
        merged: dict[str, str] = {}
        for block in blocks:
            for key, value in block.items():
                merged.setdefault(key, value)
        parts.feedback.append(merged)
        # Original-Rcpt-To may repeat (one per complaining recipient); collect every one.
        raw_text = bounded(feedback_text(msg))
        parts.feedback_rcpts.extend(_ORIGINAL_RCPT_TO.findall(raw_text))
    elif ctype in ("message/rfc822", "message/global"):
        payload = msg.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message):
            parts.original_headers.append(inner)
            if inner.get_content_type() == "multipart/report" and depth < 4:
                collect_parts(inner, parts, depth + 1)
    elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
        text = decode_part(msg)
        parts.original_headers.append(
            BytesParser(policy=compat32).parsebytes(
                text.encode("utf-8", "replace"), headersonly=True
            )
        )
    elif ctype.startswith("text/") or ctype == "application/octet-stream" and depth == 0:
        text = decode_part(msg)
        if ctype == "text/html":
            # Only used when no plain-text part exists (checked by the caller).
            parts.texts.append("\x00html\x00" + html_to_text(text))
        else:
            parts.texts.append(text)


def feedback_text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n".join(
            "\n".join(f"{k}: {v}" for k, v in sub.items())
            for sub in payload
            if isinstance(sub, Message)
        )
    return decode_part(part)


# The report's own header fields that name the sender's side, and the returned message's.
_SENDER_FIELDS = (
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Sender",
    "Return-Path",
    "Errors-To",
    "Delivered-To",
)
_ORIGINAL_SENDER_FIELDS = ("From", "Return-Path", "Sender", "Reply-To", "Errors-To")


def _addresses(msg: Message, names: tuple[str, ...]) -> set[str]:
    return {
        a.lower()
        for name in names
        for value in msg.get_all(name) or []
        for a in find_addresses(clean_text(str(value)[:MAX_FIELD_CHARS]))
    }


def sender_addresses(msg: Message, originals: list[Message]) -> set[str]:
    """The sender's own addresses, lower-cased: the report's From/To/… and delivery trace,
    and the returned message's From/Return-Path/…; never a failed recipient."""
    own = _addresses(msg, _SENDER_FIELDS)
    original_senders: set[str] = set()
    for original in originals:
        original_senders |= _addresses(original, _ORIGINAL_SENDER_FIELDS)
    return own | _delivery_trace(msg, own, original_senders) | original_senders


def _delivery_trace(msg: Message, own: set[str], original_senders: set[str]) -> set[str]:
    """The report's X-Original-To addresses that name its own envelope recipient.

    X-Original-To is a trace field the delivering MTA adds (beside Delivered-To) with the
    envelope recipient of the message it delivers: on a delivered report, the original's
    sender. Written by the report's author instead, it is about the original message: dma
    puts the failed recipient there. So it counts as the sender's own address when it sits
    with a Delivered-To, or names the report's addressee, or when the report is not one
    addressed to the original's sender (then nothing tells whose address it is). It never
    makes an address a recipient by itself: the report's text must still name it as failed.
    """
    if not msg.get_all("X-Original-To"):
        return set()
    named = _addresses(msg, ("X-Original-To",))
    addressees = _addresses(msg, ("To", "Cc"))
    to_sender = bool(addressees) and addressees <= original_senders
    if msg.get("Delivered-To") is not None or not to_sender:
        return named
    return {a for a in named if a in own}
