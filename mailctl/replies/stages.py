"""Which SMTP command a refusal answered ("data", "mail", "connect", "rcpt"), from a report's
or a reply's words.

It matters more than the words: "user unknown" in reply to DATA is a content filter speaking
(the recipient was accepted at RCPT), and any refusal of MAIL FROM or of the connection is
about the sender, not the recipient. Stage phrases written from one MTA's template are tagged
with their corpus family (``phrases.FAMILY_STAGE_PHRASES``) and can be left out.

Pure: imports only the phrase data (`mailctl.replies.phrases`); used by `classify`.
"""

from __future__ import annotations

import re

from mailctl.replies.phrases import FAMILY_STAGE_PHRASES

__all__ = ["names_family_stage", "smtp_stage"]

# The SMTP command a rejection answered. It matters more than the words: "user unknown" in
# reply to DATA is a content filter speaking (the recipient was accepted at RCPT), and any
# rejection of MAIL FROM or of the connection is about the sender, not the recipient.
_STAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "data",
        re.compile(
            r"in reply to end of data|after end of data|after data\b|in reply to data command|"
            # Linear on hostile text: a run of dashes starts one match, not one per dash; white
            # space before the line break cannot also be the white space after it.
            r">>> data[\t\r\x20]*+\n\s*+<<<\s*5|"
            r"command:\s*data\b|(?<!-)-++\s*+smtp command[\t\r\x20]*+\n\s*+data\b",
            re.I,
        ),
    ),
    (
        "mail",
        re.compile(
            r"in reply to mail from|after mail from|>>> mail from:[^\n]*\n\s*<<<\s*5",
            re.I,
        ),
    ),
    (
        "connect",
        re.compile(
            r"in reply to (?:the )?initial greeting|during greeting|greeting wait|"
            r"in reply to (?:ehlo|helo) command|>>> (?:ehlo|helo)[^\n]*\n\s*<<<\s*5",
            re.I,
        ),
    ),
    (
        # Postfix "in reply to RCPT TO command", Exim "after RCPT TO:<a>", a Sendmail
        # transcript (one family's own words: phrases.FAMILY_STAGE_PHRASES).
        "rcpt",
        re.compile(
            r"in reply to rcpt to|after rcpt to|>>> rcpt to:[^\n]*\n\s*<<<\s*[45]|"
            r"rcpt to:?\s*+<[^>\s]*+>\s*+:?\s*+[45]\d\d\b|"
            r"smtp command:?\s*+rcpt\b|command:\s*rcpt\b",
            re.I,
        ),
    ),
)


# Reports wrap lines anywhere ("(in reply to\n    RCPT TO command)"): any run of white space
# between the words of a stage phrase will do.
# Any template's own words for the stage, in plain English: "did not like our final DATA",
# "does not like recipient", "during the MAIL FROM phase", "RCPT TO response", "response to
# DATA", or the command named as a label next to the failing reply ("SMTP RCPT host: 553 …",
# "550 5.1.1 …" then "[RCPT TO]").
_DISLIKE = r"(?:did not|didn'?t|does not|doesn'?t) like (?:our |the |your )?(?:final )?"
_DURING = r"(?:at|during|after) (?:the )?"
_ANSWER = r"(?:response|reply|answer)"
_STAGE_WORDS: dict[str, str] = {
    "data": rf"{_DISLIKE}data\b|{_DURING}(?:end of )?data (?:stage|phase)|"
    rf"\bdata (?:command )?{_ANSWER}\b|{_ANSWER} to (?:the )?(?:end of )?data\b",
    "mail": rf"{_DISLIKE}(?:mail from|sender)\b|{_DURING}mail from (?:stage|phase)|"
    rf"\bmail from (?:command )?{_ANSWER}\b|{_ANSWER} to (?:the )?mail from\b",
    "rcpt": rf"{_DISLIKE}(?:recipient|rcpt)|{_DURING}rcpt(?: to)? (?:stage|phase)|"
    rf"\brcpt(?: to)? (?:command )?{_ANSWER}\b|{_ANSWER} to (?:the )?rcpt\b|"
    r"\brcpt(?:[ _]?to)?\b[^\n]{0,60}\b[45]\d\d\b|"
    # One start per line (not per reply code on a long line): the line holds a code.
    r"^(?=[^\n]*\b[45]\d\d\b)[^\n]*+\n[ \t]*\[?rcpt(?:[ _]?to)?\]?[ \t]*$",
}
# Every stage pattern contains one of its stage's key words: a pattern only runs on a text
# that has one (parsing must stay fast).
_STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "mail": ("mail", "sender"),
    "connect": ("greeting", "ehlo", "helo", "connect"),
    "rcpt": ("rcpt", "recipient"),
}
_STAGE_TABLES: dict[frozenset[str], tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...]] = {}


def _stage_table(
    disabled: frozenset[str],
) -> tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...]:
    """Per stage, in order: its key words and one pattern (general phrases, any template's
    words, and the phrases of families not in ``disabled``) over lower-cased text."""
    table = _STAGE_TABLES.get(disabled)
    if table is None:
        extra: dict[str, list[str]] = {}
        for family, pairs in FAMILY_STAGE_PHRASES.items():
            if family not in disabled:
                for stage, phrase in pairs:
                    extra.setdefault(stage, []).append(phrase)
        table = tuple(
            (
                stage,
                _STAGE_KEYS[stage],
                re.compile(
                    "|".join(
                        [p.pattern, *extra.get(stage, ()), *filter(None, [_STAGE_WORDS.get(stage)])]
                    ).replace(" ", r"\s+"),
                    re.M,
                ),
            )
            for stage, p in _GENERAL_STAGES
        )
        if len(_STAGE_TABLES) > 64:
            _STAGE_TABLES.clear()
        _STAGE_TABLES[disabled] = table
    return table


_GENERAL_STAGES = _STAGES
_STAGE_TABLE = _stage_table(frozenset())
_STAGE_FAMILIES = frozenset(FAMILY_STAGE_PHRASES)


def smtp_stage(text: str | None, disabled_families: frozenset[str] = frozenset()) -> str | None:
    """Which command a rejection answered: "data", "mail", "connect", "rcpt" or None.

    ``disabled_families``: leave out the stage phrases written from those corpus families."""
    if not text:
        return None
    lowered = text.lower()
    disabled = disabled_families & _STAGE_FAMILIES
    for stage, keys, pattern in _stage_table(disabled) if disabled else _STAGE_TABLE:
        if any(key in lowered for key in keys) and pattern.search(lowered):
            return stage
    return None


_TAGGED_STAGES = re.compile(
    "|".join(p for pairs in FAMILY_STAGE_PHRASES.values() for _, p in pairs).replace(" ", r"\s+"),
    re.I,
)


def names_family_stage(text: str) -> bool:
    """Whether ``text`` holds a stage phrase of one family's template."""
    return _TAGGED_STAGES.search(text) is not None
