"""The generic path: delivery reports from MTAs nobody here has described.

Nothing in this module knows an MTA. It decides whether a message is a delivery report at
all (the envelope sender, ``Auto-Submitted``, subject stems in several languages, a returned
original or a "headers follow" separator, SMTP replies in the text), finds the SMTP replies a
report quotes (multi-line ``550-`` replies joined into one), picks the reply nearest to a
failed recipient, and tells which recipients a free-text report names: addresses next to a
failure phrase or an SMTP reply, or inside angle brackets. It also decodes text in the
charset it really is in (a part labelled ISO-2022-JP that holds EUC-JP or UTF-8 bytes, a
misspelt charset name).

Used by `parse`; must not import it, the store, or anything that prints.
"""

from __future__ import annotations

import codecs
import re
from bisect import bisect_left
from dataclasses import dataclass
from email.header import decode_header

__all__ = [
    "FailingReplies",
    "SmtpReply",
    "decode_bytes",
    "decode_header_text",
    "is_delivery_report",
    "near_failure",
    "smtp_replies",
]

# Subject stems of delivery reports: English, German, French, Portuguese, Spanish, Italian,
# Dutch, Japanese, Russian.
REPORT_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|return(?:ed)? to sender|failure notice|"
    r"delivery (?:status )?notification|delivery (?:has )?failed|delivery failure|failed delivery|"
    r"mail delivery|could not (?:be )?deliver|not (?:be )?delivered|delivery problem|"
    r"nondeliverable|non-delivery|delivery (?:status|report|error)|mail (?:system )?error|"
    r"mail failure|message (?:was )?(?:not delivered|blocked|rejected|undeliverable)|"
    # German
    r"unzustellbar|nicht zugestellt|zustellung (?:fehlgeschlagen|gescheitert)|"
    r"unzustellbare|fehlgeschlagene (?:zustellung|nachricht)|übermittlungsfehler|"
    # French
    r"non remis|non distribu|échec de (?:la )?(?:remise|distribution|livraison)|"
    r"message (?:non )?(?:remis|délivré)|impossible de (?:remettre|distribuer)|"
    # Portuguese / Spanish / Italian / Dutch
    r"não (?:entregue|foi possível entregar)|falha (?:na|de) entrega|mensagem não entregue|"
    r"no entregado|no se pudo entregar|non recapitabile|mancato recapito|"
    r"onbestelbaar|niet afgeleverd|"
    # Japanese
    r"配信エラー|配送エラー|送信エラー|エラー通知|配信不能|配信できません|返送|不達|"
    r"送信できませんでした|配信失敗|"
    # Russian
    r"не доставлено|недоставлен",
    re.I,
)

# Phrases saying that delivery to someone failed (or is delayed), in the same languages.
FAILURE_PHRASE = re.compile(
    r"could ?n[o']t be (?:delivered|passed|sent|transferred|forwarded|handed)|"
    r"(?:was|were|has|have) (?:been )?not (?:be(?:en)? )?(?:delivered|accepted|sent)|"
    r"could not (?:deliver|be delivered|send|hand|pass)|unable to (?:deliver|send|reach)|"
    r"(?:delivery|transmission|forwarding|sending) (?:to .{0,80}?)?(?:has )?(?:failed|was refused|was rejected)|"  # noqa: E501
    r"failed (?:to deliver|recipient|address|permanently)|permanent(?:ly)? (?:error|failure|failed)|"  # noqa: E501
    r"undeliverable|not deliverable|rejected|refused|bounced|no such|unknown (?:user|recipient)|"
    r"does not exist|doesn'?t exist|not found|delivery (?:is |has been )?delayed|"
    r"(?:did not|didn'?t|does not|doesn'?t) like|error|failure|"
    # German
    r"konnte nicht (?:zugestellt|übermittelt)|nicht zugestellt|unzustellbar|"
    r"zustellung .{0,40}fehlgeschlagen|fehler|"
    # French
    r"n'a pas (?:pu )?être (?:remis|distribué|délivré)|échec de (?:la )?remise|"
    r"impossible de (?:remettre|distribuer)|introuvable|n'existe pas|"
    # Portuguese / Spanish / Italian
    r"não (?:foi possível|pôde ser) entreg|não (?:foi )?entregue|não existe|falha|"
    r"no (?:se )?(?:pudo|ha podido) (?:ser )?entreg|no existe|"
    r"non (?:è riuscito|recapitabile)|non esiste|"
    # Japanese
    r"送信できません|配信できません|届きません|送信に失敗|配信に失敗|見つかりません|存在しません|"
    r"エラー|宛先不明|"
    # Russian
    r"не может быть доставлено|не доставлено",
    re.I,
)

# "The original message's headers follow" in words, in several languages.
HEADERS_FOLLOW = re.compile(
    r"(?:original|returned|undelivered|unsent|your) message|headers? (?:of|follow)|"
    r"message d'origine|en-têtes|ursprüngliche nachricht|originalnachricht|"
    r"mensagem original|mensaje original|messaggio originale|元のメッセージ|原文",
    re.I,
)

_NULL_SENDER = re.compile(
    r"^\s*<?\s*>?\s*$|mailer[-_]?daemon|post_?master|mail delivery (?:system|subsystem)",
    re.I,
)

# One line of an SMTP reply: at a line start (perhaps quoted or after "<<<"), or after
# "said:", "replied:", "response:", "reply:", "error:". The code, its separator ("-" means
# more lines follow), the enhanced status if any, and the text.
_REPLY_LINE = re.compile(
    r"(?:^[ \t>]*(?:<<<[ \t]*)?|"
    r"(?:said|replied|response|reply|returned|error|answer)\W{0,3}:?[ \t]*)"
    r"([245][0-5]\d)([ -]|$)[ \t]*(?:#?([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d))?([^\n]*)",
    re.I | re.M,
)


def is_delivery_report(
    *,
    envelope_sender: str,
    from_header: str,
    auto_submitted: str,
    subject: str,
    notification: str,
    has_original: bool,
) -> bool:
    """Whether a message reads as a delivery report, from several weak signals together."""
    evidence = 0
    if _NULL_SENDER.search(envelope_sender) or _NULL_SENDER.search(from_header):
        evidence += 2
    if auto_submitted.lower().startswith(("auto-generated", "auto-replied")):
        evidence += 1
    if REPORT_SUBJECT.search(subject):
        evidence += 2
    head = notification[:6000]
    if has_original or HEADERS_FOLLOW.search(head):
        evidence += 1
    replies = _REPLY_LINE.search(head)
    if replies and replies.group(1)[0] in "45":
        evidence += 1
    if FAILURE_PHRASE.search(head):
        evidence += 1
    return evidence >= 4


@dataclass(frozen=True)
class SmtpReply:
    """One (possibly multi-line) SMTP reply quoted in a report."""

    start: int
    end: int
    code: int
    status: str | None
    text: str  # "550 5.1.1 the whole reply on one line", continuation codes removed


def smtp_replies(text: str) -> list[SmtpReply]:
    """Every SMTP reply in ``text``; ``550-`` continuation lines (and indented lines that
    wrap a reply) are joined to the reply they continue."""
    replies: list[SmtpReply] = []
    code = ""
    status: str | None = None
    words: list[str] = []
    start = end = 0
    open_ = False
    wrapped = 0

    def close() -> None:
        nonlocal code
        if code:
            head = f"{code} {status} " if status else f"{code} "
            replies.append(SmtpReply(start, end, int(code), status, head + " ".join(words)))
        code = ""

    offset = 0
    for line in text.splitlines(keepends=True):
        match = _REPLY_LINE.search(line)
        if match and code and open_ and match.group(1) == code and match.start() < 8:
            words.append(match.group(4).strip())
            status = status or match.group(3)
            open_ = match.group(2) == "-"
            end = offset + len(line)
        elif match:
            close()
            code, status = match.group(1), match.group(3)
            words = [match.group(4).strip()]
            start, end = offset + match.start(), offset + len(line)
            open_, wrapped = match.group(2) == "-", 0
        elif code and line[:1] in " \t" and line.strip() and wrapped < 3 and end == offset:
            words.append(line.strip())  # a long reply wrapped onto an indented line
            end = offset + len(line)
            wrapped += 1
        else:
            close()
        offset += len(line)
    close()
    return replies


class FailingReplies:
    """The failing (4xx/5xx) replies of a text, for finding the one nearest to a position in
    logarithmic time (a report may list thousands of recipients)."""

    def __init__(self, replies: list[SmtpReply]) -> None:
        self.replies = [reply for reply in replies if reply.code >= 400]
        self.starts = [reply.start for reply in self.replies]

    def nearest(self, position: int, limit: int = 1500) -> SmtpReply | None:
        """The reply nearest to ``position``, within ``limit`` characters; one after the
        position wins a tie (reports name the recipient, then what the server said)."""
        index = bisect_left(self.starts, position)
        best: tuple[int, int, SmtpReply] | None = None
        if index < len(self.replies):
            best = (self.replies[index].start - position, 0, self.replies[index])
        if index > 0:
            before = self.replies[index - 1]
            candidate = (max(0, position - before.end), 1, before)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return best[2] if best and best[0] <= limit else None


def near_failure(lines: list[str], index: int, address: str) -> bool:
    """Whether the address on ``lines[index]`` sits in angle brackets, or next to a failure
    phrase or an SMTP reply (its own line, or two lines either side)."""
    line = lines[index]
    if f"<{address}>".lower() in line.lower():
        return True
    window = "\n".join(lines[max(0, index - 2) : index + 3])
    return bool(FAILURE_PHRASE.search(window) or _REPLY_LINE.search(window))


# ---------------------------------------------------------------------------------------------
# Charsets

# Names seen on real reports that Python does not know, or knows as a narrower charset.
_CHARSET_ALIASES = {
    "uft-8": "utf-8",
    "utf8": "utf-8",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "shift-jis": "cp932",
    "shift_jis": "cp932",
    "windows-31j": "cp932",
    "x-euc-jp": "euc-jp",
    "unicode-1-1-utf-7": "utf-7",
    "iso-8859-8-i": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}
_JAPANESE = ("iso-2022-jp", "euc-jp", "cp932")


def _known(charset: str | None) -> str | None:
    if not charset:
        return None
    name = _CHARSET_ALIASES.get(charset.strip().strip('"').lower(), charset.strip().lower())
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_bytes(payload: bytes, charset: str | None) -> str:
    """Text of ``payload``: the declared charset when the bytes really are in it, else UTF-8,
    else the Japanese charsets (a part labelled ISO-2022-JP often holds EUC-JP or Shift_JIS
    bytes), else the declared charset with replacement characters, else Latin-1."""
    declared = _known(charset)
    tried: list[str] = []
    for name in (declared, "utf-8", *(_JAPANESE if _looks_japanese(payload, declared) else ())):
        if name is None or name in tried:
            continue
        tried.append(name)
        try:
            return payload.decode(name)
        except UnicodeError:
            continue
    if declared:
        return payload.decode(declared, "replace")
    return payload.decode("latin-1")


def _looks_japanese(payload: bytes, declared: str | None) -> bool:
    return (declared or "").startswith(("iso2022_jp", "euc_jp", "cp932", "shift_jis")) or (
        b"\x1b$B" in payload or b"\x1b$@" in payload
    )


def decode_header_text(value: str) -> str:
    """A header's text with RFC 2047 encoded words decoded and raw 8-bit bytes (kept as
    surrogates by the compat32 parser) read as UTF-8 or a Japanese charset."""
    if "=?" not in value:
        if any("\udc80" <= char <= "\udcff" for char in value):
            return decode_bytes(value.encode("utf-8", "surrogateescape"), None)
        return value
    out: list[str] = []
    try:
        for chunk, charset in decode_header(value):
            if isinstance(chunk, bytes):
                out.append(decode_bytes(chunk, charset))
            else:
                out.append(chunk)
    except (ValueError, LookupError, UnicodeError):
        return value
    return "".join(out)
