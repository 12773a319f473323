"""Free-text bounces: the failed recipients and the remote server's words in the prose that
qmail, Exim, Sendmail, Exchange, Gmail, Yahoo … write, read with general rules (address
lines, transcript lines, "Remote host said: …"), never per-MTA templates.

Also where a notification ends and the returned message begins (`split_original`), the
returned message's headers pasted as text (`appended_headers`), and the verdict for one
recipient's block of text (`classify_block`). The sender's own addresses, Message-IDs,
addresses inside URLs and mailctl's own tracking addresses are never taken as recipients.

Used by `parse`; must not import it (nor the mailbox readers, the store or anything that
prints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from mailctl.message.tracking import TRACKING_RE, VERP_LOCAL_PREFIX
from mailctl.replies.classify import Verdict, classify_failure

__all__ = [
    "ADDRESS",
    "Found",
    "appended_headers",
    "classify_block",
    "diagnostic_of_block",
    "excluded",
    "find_addresses",
    "free_text_recipients",
    "split_original",
]

# Patterns (compiled once: parsing must stay well above 1,000 messages/s)

ADDRESS = re.compile(
    r"""(?<![\w.!#$%&'*+/=?^`{|}~@-])"""
    r"""([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.+[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\.*"""
    r"""@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)"""
)
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I)
_MESSAGE_ID_LINE = re.compile(
    r"^[ \t>]*(?:message-id|in-reply-to|references|x-ms-exchange-\S+|thread-\S+)\s*:.*$",
    re.I | re.M,
)
_SYSTEM_LOCALPART = re.compile(
    r"^(?:mailer-daemon|postmaster|mail-daemon|maildaemon|mailerdaemon|root|bounces?|noreply|no-reply|nobody|abuse)$",
    re.I,
)
_ORIGINAL_MARKER = re.compile(
    # The line's prefix is possessive (``*+``): a 10,000-dash line is read once, not once per
    # dash. A title after a rule is found by looking back at the rule.
    r"^[ \t>-]*+(?:"
    r"below this line is a copy of the message|this is a copy of the message|"
    r"(?:the )?original message (?:follows|headers?|text|below|is attached|was attached|as attachment)|unsent message (?:below|follows)|"  # noqa: E501
    r"(?:-+ )?original message(?: -+)?\s*$|(?:a )?copy of (?:the|your) (?:original )?message|"
    r"returned message (?:below|follows)|message (?:headers? )?follows|headers? of (?:the )?(?:original|returned) message|"  # noqa: E501
    r"included is the original message|your message (?:reads|was)[^.]{0,30}:\s*$|"
    r"(?:-+ )?(?:message|original) (?:headers|header) (?:follow|of the returned)|"
    r"content-type: (?:message/rfc822|text/rfc822-headers)|"
    r"(?<=------)this is a copy|(?<=------ )this is a copy|"
    r"(?<=---)below this line|(?<=--- )below this line|"
    # A title framed by a rule, "------- Returned Message --------", "===== Original Message
    # Headers =====", or saying where the message is, "--- Undelivered message follows ---"
    # (Postfix without DSN); a bare "Undeliverable message" heading is not a separator.
    r"(?:(?<=[-=*_]{2})|(?<=[-=*_]{2}[ \t])|(?<=[-=*_]{2}[ \t]{2})|[=*_][-=*_]++[ \t]*+|"
    r"(?=\S+ (?:e-?mail|mail|message)(?: headers?| text| content)? "
    r"(?:follows?|below|attached)))"
    r"(?:returned|rejected|undelivered|undeliverable|unsent|bounced|original|failed) "
    r"(?:e-?mail|mail|message)(?: headers?| text| content)?(?: (?:follows?|below|attached))?"
    r"[ \t.:]*[-=*_]*[ \t\r]*$|"
    r"(?:enclosed|attached|included|appended|below) (?:is|are) (?:a copy of )?(?:the |your )?"
    r"(?:original |returned )?(?:message|headers)"
    r")",
    re.I | re.M,
)
_HEADER_START = re.compile(
    r"^(?:Return-Path|Received|X-Received|DKIM-Signature|ARC-Seal|Authentication-Results|Delivered-To):[ \t]",  # noqa: E501
    re.M,
)
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:[ \t]")
_DIAG_LINE = re.compile(
    r"(?:remote (?:host|server) (?:said|replied|returned)|said:|<<<|smtp (?:error|response)|"
    r"diagnostic[- ]code|error (?:code|message)|reason|\b[245]\d\d[ -][245]\.\d|\b[245][0-5]\d\b)",
    re.I,
)


def find_addresses(text: str) -> list[str]:
    """Every e-mail address in ``text``, in order, without trailing dots."""
    return [m.group(1).strip(".") for m in ADDRESS.finditer(text)]


# Any template's separator: a title framed by rule characters that speaks of a message or its
# headers ("===== headers of your message =====", "--- Ursprüngliche Nachricht ---"), or a bare
# rule line right above a header block.
_FRAMED_TITLE = re.compile(
    r"^[ \t]*[-=*_#~]{3,}[ \t]*([^\n]{3,70}?)[ \t]*[-=*_#~]{3,}[ \t]*$", re.M
)
_FRAMED_WORDS = re.compile(
    r"message|header|original|nachricht|kopfzeilen|en-têtes|mensagem|cabeçalhos|mensaje|"
    r"messaggio|メッセージ|ヘッダ|原文",
    re.I,
)
_BARE_RULE = re.compile(
    r"^[ \t]*[-=*_#~]{10,}[ \t]*\n(?:[ \t]*\n)?(?=[A-Za-z][A-Za-z0-9-]*:[ \t])", re.M
)


def _generic_separator(text: str, cut: int) -> int:
    for framed in _FRAMED_TITLE.finditer(text, 0, cut):
        if _FRAMED_WORDS.search(framed.group(1)):
            return framed.start()
    for rule in _BARE_RULE.finditer(text, 0, cut):
        following = text[rule.end() : rule.end() + 600].splitlines()[:3]
        if (
            len(following) >= 2
            and _OPENING_HEADER.match(following[0])
            and (_HEADER_LINE.match(following[1]) or following[1][:1] in " \t")
        ):
            return rule.start()
    return cut


def split_original(text: str) -> tuple[str, str]:
    """(notification, returned message) from a bounce body that carries both in one text."""
    cut = len(text)
    marker = _ORIGINAL_MARKER.search(text)
    if marker:
        cut = marker.start()
    cut = _generic_separator(text, cut)
    header = _HEADER_START.search(text)
    if header and header.start() < cut and header.start() > 0:
        # A header block only counts when a second header line follows it closely.
        following = text[header.end() : header.end() + 400].splitlines()[1:4]
        if any(_HEADER_LINE.match(line) or line[:1] in " \t" for line in following):
            cut = header.start()
    return text[:cut], text[cut:]


# Header names that open a returned message's header block (Content-* and MIME-Version do
# not: after "Content-Type: message/rfc822" pasted as text they head the MIME part instead).
_OPENING_HEADER = re.compile(
    r"^(?:return-path|received|x-[a-z0-9-]+|dkim-signature|arc-[a-z-]+|authentication-results|"
    r"delivered-to|from|to|cc|subject|date|message-id|sender|reply-to|errors-to|in-reply-to|"
    r"references|list-[a-z-]+|precedence|importance|user-agent)[ \t]*:",
    re.I,
)
_FIELD_LINE = re.compile(r"^[!-9;-~]+:")
_RULE_LINE = re.compile(r"^[\s\-=_*#~+.:|<>\[\]()]*$")
_QUOTE_PREFIX = re.compile(r"^[ \t]*(?:>[ \t]?)*")


def appended_headers(tail: str) -> Message | None:
    """The header block of an original message appended as plain text after a separator.

    ``tail`` starts at the separator line ("----- Unsent message follows -----", "--- Below
    this line is a copy of the message.", "------ This is a copy of the message, including all
    the headers. ------", …) or directly at the first header line. The block may follow a
    few rule lines, blank lines or short notes ("The body of the message is 5000 characters
    long; only the first …"), and may be indented or quoted ("> "); that prefix is removed.
    It ends at the first blank line or the first line that is neither a field nor a
    continuation. None when no block with a real message header opens near the top.
    """
    lines = tail[:40000].splitlines()
    start = None
    prefix = ""
    for index, line in enumerate(lines[:16]):
        if _RULE_LINE.match(line):
            continue
        quote = _QUOTE_PREFIX.match(line)
        prefix = quote.group(0) if quote else ""
        if _OPENING_HEADER.match(line[len(prefix) :]):
            start = index
            break
    if start is None:
        return None
    block: list[str] = []
    for line in lines[start : start + 400]:
        if prefix:
            if not line.startswith(prefix.rstrip()):
                break
            line = line[len(prefix) :] if line.startswith(prefix) else line[len(prefix.rstrip()) :]
        if not line.strip():
            break
        if not (_FIELD_LINE.match(line) or (block and line[:1] in " \t")):
            break
        block.append(line)
    if not block:
        return None
    text = "\n".join(block) + "\n\n"
    return BytesParser(policy=compat32).parsebytes(
        text.encode("utf-8", "surrogateescape"), headersonly=True
    )


_SESSION_BREAK = re.compile(
    r"^\s*(?:\.\.\.\s*)?while talking to\b|^\s*[245]\d\d [^\s@]+ \(\w+\)\.\.\. ", re.I
)


@dataclass(frozen=True)
class Found:
    address: str
    block: str


def excluded(address: str, own: set[str], *, system_ok: bool = False) -> bool:
    lowered = address.lower()
    if lowered in own:
        return True
    local, _, domain = lowered.rpartition("@")
    if not system_ok and (
        _SYSTEM_LOCALPART.match(local)
        or local.startswith(("mailer-daemon", "postmaster", VERP_LOCAL_PREFIX))
    ):
        return True
    if TRACKING_RE.search(local):
        return True  # a mailctl Message-ID or VERP address, never a recipient
    return not domain or "." not in domain


_CONTACT_BEFORE = re.compile(
    r"(?:contact|send (?:an? )?(?:e-?mail|mail|message)s? to|write to|e-?mail|reach|questions?|help|assistance|abuse desk|"  # noqa: E501
    r"administrator|from|sender|reply-to|return-path|envelope|mail from:?|sent by)\W{0,6}(?:us\W+)?(?:at\W+)?[<(\[\"']*$",  # noqa: E501
    re.I,
)
_STRONG_LINE = re.compile(
    r"^[ \t>*-]*+<?([^\s<>@]++@[^\s<>]+?)>?[ \t]*:?[ \t]*$|rcpt to:[ \t]*<([^>\s]+)>|final-recipient:[ \t]*rfc822;[ \t]*<?([^\s>]+)",  # noqa: E501
    re.I | re.M,
)


def free_text_recipients(
    notification: str, own: set[str], hint: set[str], *, system_ok: bool = False
) -> list[Found]:
    found = _scan_recipients(notification, own, hint, system_ok=system_ok)
    if found or not own:
        return found
    # Nothing left after removing the sender's addresses: a message someone sent to himself
    # (or the bounce went to the failed address) names it on a line of its own, "<addr>:".
    strong = {
        next(g for g in m.groups() if g).strip("<>").lower()
        for m in _STRONG_LINE.finditer(notification)
    }
    allowed = {a for a in own if a in strong}
    return _scan_recipients(notification, own - allowed, hint) if allowed else []


def _scan_recipients(
    notification: str, own: set[str], hint: set[str], *, system_ok: bool = False
) -> list[Found]:
    """Failed addresses in a human-readable notification, each with its text block.

    Every address the notification names, minus the sender's own, Message-IDs and URLs. Its
    block runs from the line naming it to the line naming the next one; lines of an SMTP
    transcript just above it (``<<< 550 …``) belong to it too.
    """
    scrubbed = _MESSAGE_ID_LINE.sub("", notification)
    scrubbed = _URL.sub(" ", scrubbed)
    lines = scrubbed.splitlines()
    first_line: dict[str, int] = {}
    order: list[str] = []
    for index, line in enumerate(lines):
        if "@" not in line:
            continue
        for match in ADDRESS.finditer(line):
            address = match.group(1).strip(".")
            key = address.lower()
            if key in first_line or excluded(address, own, system_ok=system_ok):
                continue
            if _CONTACT_BEFORE.search(line[max(0, match.start() - 60) : match.start()]):
                continue  # "please contact <support@…>", "from <sender>": not a recipient
            first_line[key] = index
            order.append(address)
    if not order:
        return []
    if hint:
        # Exim's X-Failed-Recipients (or DSN addresses) are the authority when present.
        kept = [a for a in order if a.lower() in hint]
        if kept:
            order = kept
    starts = sorted(first_line[a.lower()] for a in order)
    wanted = {a.lower() for a in order}
    # Every line naming a found address (not only the first): a report that lists its
    # recipients twice (in two languages, or a summary then details) must not lend one
    # recipient's reply to the one listed before it.
    naming: dict[int, set[str]] = {}
    for index, line in enumerate(lines):
        if "@" in line:
            keys = {m.group(1).strip(".").lower() for m in ADDRESS.finditer(line)} & wanted
            if keys:
                naming[index] = keys
    found = []
    for address in order:
        key = address.lower()
        start = first_line[key]
        end = min(len(lines), start + 25)
        summarised = "..." in lines[start]
        for index in range(start + 1, end):
            others = naming.get(index)
            if others and key not in others:
                end = index
                break
            line = lines[index]
            if summarised and _SESSION_BREAK.match(line):
                # Sendmail: after this recipient's "<addr>... reason" line, a new "While
                # talking to host:" or a "421 host (smtp)... Deferred" line is another session.
                end = index
                break
            if others and key in others and "..." in line:
                summarised = True
        begin = start
        # Pull in transcript lines directly above (Sendmail: "<<< 550 …" then "550 <addr>…").
        while (
            begin > 0
            and begin - 1 not in starts
            and lines[begin - 1].lstrip().startswith(("<<<", ">>>"))
            and start - begin < 6
        ):
            begin -= 1
        block = "\n".join(lines[begin:end]).strip()
        found.append(Found(address, block))
    return found


def diagnostic_of_block(block: str, address: str) -> str:
    """The part of a block that is the remote server's words, for the report."""
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    if not lines:
        return ""
    picked = [line for line in lines if _DIAG_LINE.search(line)]
    text = " ".join(picked or lines)
    return text[:1000]


_REPLY_START = re.compile(
    r"\b[245][0-5]\d[ -]|\b[245]\.\d{1,3}\.\d{1,3}\b|said:|<<<|error (?:that the other server )?returned",  # noqa: E501
    re.I,
)

_POSITIVE_REPLY = re.compile(r"(?:<<<|said:)?[ \t]*+(?:2[0-5]\d[ -]|2\.\d{1,3}\.\d{1,3}\b)", re.I)


def classify_block(
    block: str,
    preamble: str,
    subject: str,
    action: str | None,
    default_permanent: bool,
    disabled_families: frozenset[str] = frozenset(),
) -> Verdict:
    """The remote server's own reply decides first; the MTA's prose around it only when the
    reply says nothing recognisable (prose like "rejected by the recipient domain" is vaguer)."""
    # A transcript's "<<< 250 … Sender ok" before the failing reply is not the verdict.
    start = next(
        (m for m in _REPLY_START.finditer(block) if not _POSITIVE_REPLY.match(block, m.start())),
        None,
    ) or _REPLY_START.search(block)
    candidates = [block[start.start() :]] if start else []
    candidates += [block, block + "\n" + preamble + "\n" + subject]
    fallback: Verdict | None = None
    for text in candidates:
        verdict = classify_failure(
            None,
            text,
            action,
            default_permanent=default_permanent,
            context=block,
            disabled_families=disabled_families,
        )
        if not verdict.rule.startswith(("class.", "status.")):
            return verdict
        if fallback is None or (
            fallback.rule.startswith("class.") and verdict.rule.startswith("status.")
        ):
            fallback = verdict
    assert fallback is not None
    return fallback
