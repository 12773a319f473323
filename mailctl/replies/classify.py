"""One classifier for live SMTP replies and for failed recipients in bounce reports.

Decision order (first match wins):

1. ``RULES``: the providers' own replies (the one provider rules table,
   ``mailctl/data/provider_rules.yaml``, which the lanes act on too), then the general
   phrases used across MTAs (`mailctl.replies.phrases`).
2. The RFC 3463 enhanced status code (``X.Y.Z``), detail first, then subject (``X.Y``).
3. The basic SMTP reply class (2xx, 4xx, 5xx) and a few well-known basic codes.

Reasons use Sisimai's vocabulary so that figures compare with the shared bounce corpus.
Suppression is only ever decided for the recipient's own fault (it does not exist, its domain
does not exist or accepts no mail, it has moved) and for complaints: a block, a policy, an
authentication or a reputation problem is the sender's, and suppressing the recipient for it
would silently shrink the list while the real problem stays.

Every rule written from one family of the shared bounce corpus is tagged (`phrases`);
``rules_without`` and ``classify_failure(disabled_families=…)`` leave those families out, for
the leave-one-family-out measurement and for telling when a report was read by the generic
rules alone (``family_rule_decided``).

Imports config (the rules table), replies.phrases and replies.stages (which SMTP command a
refusal answered); never the lanes, the engine or the CLI.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from re import _constants as _sre_constants  # type: ignore[attr-defined]
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any

from mailctl.config.provider_rules import ReplyRule, Scope, shipped_rules
from mailctl.replies.phrases import (
    FAMILY_PHRASES,
    FAMILY_STAGE_PHRASES,
    PHRASE_RULES,
    PROVIDER_FAMILIES,
)
from mailctl.replies.stages import names_family_stage, smtp_stage


@dataclass(frozen=True)
class Verdict:
    """What a reply or a failed DSN recipient means for mailctl."""

    scope: Scope
    permanent: bool
    reason: str
    suppress: bool
    status: str | None
    rule: str


@dataclass(frozen=True)
class Rule:
    """One text rule. ``permanent=None`` takes it from the reply's class (4xx/5xx).

    The pattern is compiled when first used (`regex`), not at import: every run imports the
    classifier, and most never read a refusal."""

    id: str
    pattern: str
    scope: Scope
    permanent: bool | None
    reason: str
    suppress: bool
    providers: tuple[str, ...] = ()  # when set, only applies if the caller names one of them
    flags: int = re.I

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, self.flags)


# Reasons that are the recipient's own, permanent fault; the only bounce reasons that suppress.
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

# Default scope of each reason when a general rule or a status code decided it.
REASON_SCOPE: dict[str, Scope] = {
    "userunknown": Scope.RECIPIENT,
    "hostunknown": Scope.RECIPIENT,
    "hasmoved": Scope.RECIPIENT,
    "notaccept": Scope.RECIPIENT,
    "mailboxfull": Scope.RECIPIENT,
    "suspend": Scope.RECIPIENT,
    "filtered": Scope.RECIPIENT,
    "exceedlimit": Scope.RECIPIENT,
    "vacation": Scope.RECIPIENT,
    "feedback": Scope.RECIPIENT,
    "delivered": Scope.RECIPIENT,
    "onhold": Scope.RECIPIENT,
    "blocked": Scope.LANE,
    "badreputation": Scope.LANE,
    "requireptr": Scope.LANE,
    "toomanyconn": Scope.LANE,
    "failedstarttls": Scope.LANE,
    "speeding": Scope.TRANSIENT,
    "expired": Scope.TRANSIENT,
    "networkerror": Scope.TRANSIENT,
    "systemerror": Scope.TRANSIENT,
    "systemfull": Scope.TRANSIENT,
    "mailererror": Scope.TRANSIENT,
    "undefined": Scope.TRANSIENT,
    "authfailure": Scope.CAMPAIGN,
    "policyviolation": Scope.CAMPAIGN,
    "spamdetected": Scope.CAMPAIGN,
    "virusdetected": Scope.CAMPAIGN,
    "contenterror": Scope.CAMPAIGN,
    "mesgtoobig": Scope.CAMPAIGN,
    "notcompliantrfc": Scope.CAMPAIGN,
    "securityerror": Scope.CAMPAIGN,
    "rejected": Scope.CAMPAIGN,
    "norelaying": Scope.CAMPAIGN,
    "syntaxerror": Scope.CAMPAIGN,
}

R, L, C, T = Scope.RECIPIENT, Scope.LANE, Scope.CAMPAIGN, Scope.TRANSIENT


def _rule(
    rule_id: str,
    pattern: str,
    scope: Scope,
    permanent: bool | None,
    reason: str,
    suppress: bool,
    providers: tuple[str, ...] = (),
) -> Rule:
    return Rule(rule_id, pattern, scope, permanent, reason, suppress, providers)


def _provider_rule(rule: ReplyRule) -> Rule:
    """The classifier's reading of one shipped provider rule (all of them carry a verdict)."""
    if rule.scope is None or rule.reason is None:
        raise ValueError(f"provider rule {rule.id} has no scope or reason")
    return Rule(
        rule.id,
        rule.pattern.pattern,
        rule.scope,
        rule.permanent,
        rule.reason,
        rule.suppress,
        rule.providers,
        rule.pattern.flags,
    )


# Provider replies from PROVIDERS.md: the shipped provider rules table
# (mailctl/data/provider_rules.yaml), the same rows the lanes act on, in the same order.
PROVIDER_RULES: tuple[Rule, ...] = tuple(_provider_rule(rule) for rule in shipped_rules())

# The general phrases across MTAs (replies/phrases.py), after the providers' own replies.
GENERAL_RULES: tuple[Rule, ...] = tuple(
    _rule(p.id, "|".join(p.phrases), Scope(p.scope), p.permanent, p.reason, p.suppress)
    for p in PHRASE_RULES
)

RULES: tuple[Rule, ...] = PROVIDER_RULES + GENERAL_RULES

# Every family a rule is tagged with (phrases.FAMILY_PHRASES, phrases.PROVIDER_FAMILIES).
RULE_FAMILIES: frozenset[str] = (
    frozenset(FAMILY_PHRASES)
    | frozenset(FAMILY_STAGE_PHRASES)
    | frozenset(family for families in PROVIDER_FAMILIES.values() for family in families)
)
_WITHOUT: dict[frozenset[str], tuple[Rule, ...]] = {}


def rules_without(families: frozenset[str]) -> tuple[Rule, ...] | None:
    """The rule table with every rule and phrase written from ``families`` left out (None:
    nothing is left out, use the default table). For measuring how the classifier does on a
    family whose own phrasing it was not taught."""
    families = families & RULE_FAMILIES
    if not families:
        return None
    table = _WITHOUT.get(families)
    if table is not None:
        return table
    off = {pair for family in families for pair in FAMILY_PHRASES.get(family, ())}
    providers = {name for name, tags in PROVIDER_FAMILIES.items() if families.intersection(tags)}
    general = []
    for phrase_rule in PHRASE_RULES:
        kept = [p for p in phrase_rule.phrases if (phrase_rule.id, p) not in off]
        if kept:
            general.append(
                _rule(
                    phrase_rule.id,
                    "|".join(kept),
                    Scope(phrase_rule.scope),
                    phrase_rule.permanent,
                    phrase_rule.reason,
                    phrase_rule.suppress,
                )
            )
    table = tuple(r for r in PROVIDER_RULES if r.id.partition(".")[0] not in providers) + tuple(
        general
    )
    if len(_WITHOUT) > 64:
        _WITHOUT.clear()
    _WITHOUT[families] = table
    return table


_LITERAL = _sre_constants.LITERAL
_BRANCH = _sre_constants.BRANCH
_SUBPATTERN = _sre_constants.SUBPATTERN
_MAX_REPEAT = _sre_constants.MAX_REPEAT
_MIN_REPEAT = _sre_constants.MIN_REPEAT
_sre_parse = _sre_parser.parse


def _lowered_pattern(pattern: str) -> str:
    """A rule's pattern for lower-cased text: literals lower-cased, escapes (``\\S``) kept."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(pattern[index : index + 2])
            index += 2
            continue
        out.append(char.lower())
        index += 1
    return "".join(out)


def _required_literals(items: Any) -> list[str] | None:
    """Literals of which at least one must occur for a parsed pattern to match, or None."""
    best: list[str] | None = None
    run: list[str] = []

    def consider(option: list[str] | None) -> None:
        nonlocal best
        if option and (best is None or min(map(len, option)) > min(map(len, best))):
            best = option

    for op, arg in list(items) + [(None, None)]:
        if op is _LITERAL:
            run.append(chr(arg))
            continue
        consider(["".join(run)] if run else None)
        run = []
        if op is _BRANCH:
            options = [_required_literals(branch) for branch in arg[1]]
            if all(options):
                consider([lit for option in options if option for lit in option])
        elif op is _SUBPATTERN:
            consider(_required_literals(arg[-1]))
        elif op in (_MAX_REPEAT, _MIN_REPEAT) and arg[0] >= 1:
            consider(_required_literals(arg[2]))
    return best


class _RuleMatcher:
    """A rule table with a cheap pre-filter: one pass over the lower-cased text finds which
    rules' key phrases occur at all, and only those rules' regexes run, in table order."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.regexes = [re.compile(_lowered_pattern(rule.pattern)) for rule in rules]
        self.always: list[int] = []
        self.short: list[tuple[str, int]] = []  # key phrases shorter than an index key
        self.index: dict[str, list[tuple[str, int]]] = {}
        for number, regex in enumerate(self.regexes):
            literals = _required_literals(_sre_parse(regex.pattern))
            if not literals or min(map(len, literals)) < 2:
                self.always.append(number)
                continue
            for literal in set(literals):
                if len(literal) < _KEY:
                    self.short.append((literal, number))
                else:
                    self.index.setdefault(literal[:_KEY], []).append((literal, number))

    def first(self, lowered: str) -> Rule | None:
        candidates = set(self.always)
        for literal, number in self.short:
            if literal in lowered:
                candidates.add(number)
        get = self.index.get
        startswith = lowered.startswith
        for position in range(len(lowered) - _KEY + 1):
            entries = get(lowered[position : position + _KEY])
            if entries:
                for literal, number in entries:
                    if startswith(literal, position):
                        candidates.add(number)
        regexes = self.regexes
        for number in sorted(candidates):
            if regexes[number].search(lowered):
                return self.rules[number]
        return None


_KEY = 3
# The most of a reply or diagnostic the classifier reads: SMTP lines are at most 512
# characters and a multi-line reply a few of them; a hostile server's 100 KB is cut here.
MAX_TEXT_CHARS = 16_000
_MATCHERS: dict[tuple[Rule, ...], _RuleMatcher] = {}
_DEFAULT_MATCHER: list[_RuleMatcher] = []


def _matcher(rules: tuple[Rule, ...] | None) -> _RuleMatcher:
    if rules is None:
        if not _DEFAULT_MATCHER:
            _DEFAULT_MATCHER.append(_RuleMatcher(RULES))
        return _DEFAULT_MATCHER[0]
    matcher = _MATCHERS.get(rules)
    if matcher is None:
        if len(_MATCHERS) > 64:
            _MATCHERS.clear()  # callers passing ever-new tables must not grow memory
        matcher = _MATCHERS[rules] = _RuleMatcher(rules)
    return matcher


def _first_rule(flat: str, provider: str | None, rules: Iterable[Rule] | None) -> Rule | None:
    if rules is None and not _PROVIDER_SPECIFIC:
        return _matcher(None).first(flat.lower())
    table = RULES if rules is None else tuple(rules)
    if provider is not None:
        table = tuple(r for r in table if not r.providers or provider in r.providers)
    return _matcher(table).first(flat.lower())


_PROVIDER_SPECIFIC = any(rule.providers for rule in RULES)


# RFC 3463 (and the IANA registry) codes, mapped to a reason. Detail "Y.Z" first, then subject "Y".
STATUS_DETAIL: dict[str, str] = {
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "userunknown",
    "1.5": "delivered",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.9": "systemerror",
    "1.10": "notaccept",
    "2.0": "suspend",
    "2.1": "suspend",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "systemerror",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "systemerror",
    "3.3": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",
    "4.5": "systemfull",
    "4.6": "networkerror",
    "4.7": "expired",
    "5.0": "syntaxerror",
    "5.1": "syntaxerror",
    "5.2": "syntaxerror",
    "5.3": "toomanyconn",
    "5.4": "syntaxerror",
    "5.5": "syntaxerror",
    "5.6": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.4": "contenterror",
    "6.5": "contenterror",
    "6.6": "contenterror",
    "6.7": "contenterror",
    "6.8": "contenterror",
    "6.9": "contenterror",
    "6.10": "contenterror",
    "7.0": "securityerror",
    "7.1": "rejected",
    "7.2": "rejected",
    "7.3": "securityerror",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.6": "securityerror",
    "7.7": "securityerror",
    "7.8": "securityerror",
    "7.9": "securityerror",
    "7.10": "failedstarttls",
    "7.11": "failedstarttls",
    "7.12": "securityerror",
    "7.13": "suspend",
    "7.14": "securityerror",
    "7.15": "securityerror",
    "7.16": "mailboxfull",
    "7.17": "hasmoved",
    "7.18": "suspend",
    "7.19": "suspend",
    "7.20": "authfailure",
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
    "7.28": "badreputation",
    "7.29": "authfailure",
    "7.30": "authfailure",
}
STATUS_SUBJECT: dict[str, str] = {
    "0": "undefined",
    "1": "userunknown",
    "2": "mailboxfull",
    "3": "systemerror",
    "4": "networkerror",
    "5": "syntaxerror",
    "6": "contenterror",
    "7": "securityerror",
}

_ENHANCED_AFTER_CODE = re.compile(r"\b[245]\d\d[ -]#?([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d)")
_ENHANCED_ANY = re.compile(r"(?<![\w.])#?([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_REPLY_CODE = re.compile(r"(?<![\w.\-/:])([245][0-5]\d)(?:[ -]|$)(?!\d+(?:[^.\d]|$))", re.M)
_DELAY = re.compile(
    r"(?:try(?:ing)? again|retry|greylisted|graylisted|wait|come back|deferred|delayed)\D{0,40}?"
    r"(?:in|for|after|within)?\s*(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hrs?|hours?)\b",
    re.I,
)
_DELAY_UNIT = {"s": 1, "m": 60, "h": 3600}


def parse_enhanced_status(text: str | None) -> str | None:
    """The RFC 3463 code in a reply or diagnostic ("5.1.1"), or None.

    A code right after the basic reply code wins over one found elsewhere in the text, and
    dotted numbers that are parts of IP addresses or versions are not taken.
    """
    if not text:
        return None
    found = _ENHANCED_AFTER_CODE.search(text) or _ENHANCED_ANY.search(text)
    return found.group(1) if found else None


def parse_reply_code(text: str | None) -> int | None:
    """The first basic SMTP reply code (250, 421, 550 …) in a text, or None."""
    if not text:
        return None
    found = _REPLY_CODE.search(text)
    return int(found.group(1)) if found else None


def parse_reply_delay(text: str | None) -> int | None:
    """Seconds the receiver asked us to wait ("try again in 5 minutes"), or None."""
    if not text:
        return None
    found = _DELAY.search(text)
    if not found:
        return None
    return int(found.group(1)) * _DELAY_UNIT[found.group(2)[0].lower()]


_CONTINUATION = re.compile(r"\b[245]\d\d[- ](?:#?[245]\.\d{1,3}\.\d{1,3}\b)?")


def _flatten(text: str) -> str:
    """One line, with the repeated reply codes of a multi-line reply removed after the first
    ("550-5.7.1 Messages with multiple 550-5.7.1 addresses" -> one sentence)."""
    flat = " ".join(text.split())
    first = _CONTINUATION.search(flat)
    if not first:
        return flat
    head, tail = flat[: first.end()], flat[first.end() :]
    code = first.group(0).strip()
    for variant in {code, code.replace("-", " ", 1), code.replace(" ", "-", 1)}:
        tail = tail.replace(variant + " ", "")
    return head + tail


def _refine(verdict: Verdict, cls: str | None) -> Verdict:
    """Adjustments that need both the words and the code class."""
    if cls == "4" and verdict.reason == "hostunknown":
        # A temporary DNS failure is not proof the domain does not exist.
        return Verdict(
            Scope.TRANSIENT, False, "networkerror", False, verdict.status, verdict.rule + "@4xx"
        )
    if verdict.reason == "mesgtoobig" and verdict.status and verdict.status[1:] == ".2.3":
        return Verdict(
            Scope.RECIPIENT, verdict.permanent, "exceedlimit", False, verdict.status, verdict.rule
        )
    return verdict


def _scope_for(reason: str, permanent: bool) -> Scope:
    return REASON_SCOPE.get(reason, Scope.TRANSIENT)


_LOOKUP_RULES = frozenset({"text.userunknown-lookup"})
# A mailbox-level enhanced code (X.1.1 bad mailbox, X.1.2 bad system, X.1.3 bad syntax) that
# the reporting MTA wrote beside this recipient: with pipelining Sendmail shows the DATA reply
# first ("<<< 550 5.5.0 … Invalid recipient") and its own verdict "550 5.1.1 <a>... User
# unknown" after it.
_MAILBOX_STATUS = re.compile(r"(?<![\w.])[45]\.1\.[123](?![\d.])")


def _at_stage(
    verdict: Verdict,
    stage: str | None,
    *,
    rcpt_evidence: bool = False,
    mailbox_proof: bool = False,
) -> Verdict:
    """Re-read a recipient-sounding verdict given the SMTP command it answered.

    With ``rcpt_evidence`` (bounce reports), a general "user unknown" phrase only proves a
    missing mailbox when the status says X.1.x or the report shows the RCPT command was
    refused: security appliances and content filters answer "user unknown" after DATA to hide
    a filtering decision, and a bounce that does not say which command failed cannot tell the
    two apart (Sisimai reads it the same way: "filtered"). Providers' own documented replies
    (Gmail NoSuchUser, Yahoo "doesn't have a … account") are RCPT replies by construction;
    with pipelining a Sendmail transcript may show them after DATA.
    """
    if verdict.reason not in HARD_REASONS:
        return verdict
    status_subject = verdict.status[2:4] if verdict.status else ""
    # A policy code (X.7.x) with "user unknown" is a filter's answer whatever else is said.
    explicit = status_subject == "1." or (mailbox_proof and status_subject != "7.")
    general = verdict.rule.startswith("text.") and verdict.rule not in _LOOKUP_RULES
    if stage == "data" and not explicit and general and verdict.reason == "userunknown":
        reason, scope = "filtered", Scope.RECIPIENT
    elif stage == "mail":
        reason, scope = "rejected", Scope.CAMPAIGN
    elif stage == "connect":
        reason, scope = "blocked", Scope.LANE
    elif (
        rcpt_evidence
        and verdict.reason == "userunknown"
        and general
        and not explicit
        and stage != "rcpt"
    ):
        reason, scope, stage = "filtered", Scope.RECIPIENT, "no-rcpt"
    else:
        return verdict
    return Verdict(
        scope, verdict.permanent, reason, False, verdict.status, f"{verdict.rule}@{stage}"
    )


def _verdict(
    reason: str,
    scope: Scope,
    permanent: bool,
    rule_suppress: bool,
    status: str | None,
    rule_id: str,
) -> Verdict:
    # Only a permanent failure can suppress, and only for the recipient's own fault.
    suppress = rule_suppress and permanent and scope is Scope.RECIPIENT
    return Verdict(scope, permanent, reason, suppress, status, rule_id)


def _class_of(code: int | None, status: str | None) -> str | None:
    if status:
        return status[0]
    if code:
        return str(code)[0]
    return None


def decide(
    code: int | None,
    status: str | None,
    text: str,
    provider: str | None = None,
    *,
    default_permanent: bool = True,
    rules: Iterable[Rule] | None = None,
    stage: str | None = None,
    rcpt_evidence: bool = False,
    mailbox_proof: bool = False,
    disabled_families: frozenset[str] = frozenset(),
) -> Verdict:
    """The shared decision: text rules, then the enhanced status, then the reply class.

    ``default_permanent`` applies when neither a code nor a status says 4xx or 5xx (free-text
    bounces without any code).
    """
    cls = _class_of(code, status)
    if cls == "2":
        return Verdict(Scope.RECIPIENT, False, "delivered", False, status, "class.2xx")
    class_permanent = cls == "5" if cls in ("4", "5") else default_permanent
    flat = _flatten(text) if text else ""
    rule = _first_rule(flat, provider, rules) if flat else None
    if rule is not None:
        permanent = class_permanent if rule.permanent is None else rule.permanent
        verdict = _verdict(rule.reason, rule.scope, permanent, rule.suppress, status, rule.id)
        return _at_stage(
            _refine(verdict, cls),
            stage or smtp_stage(text, disabled_families),
            rcpt_evidence=rcpt_evidence,
            mailbox_proof=mailbox_proof,
        )
    if status and status[0] in "45":
        _, _, rest = status.partition(".")
        subject = rest.partition(".")[0]
        reason = STATUS_DETAIL.get(rest) or STATUS_SUBJECT.get(subject, "undefined")
        permanent = status[0] == "5"
        scope = _scope_for(reason, permanent)
        if not permanent and scope is Scope.RECIPIENT and reason not in ("mailboxfull", "speeding"):
            scope = Scope.TRANSIENT  # a 4xx "user unknown" is a temporary lookup problem
        verdict = _verdict(
            reason, scope, permanent, reason in HARD_REASONS, status, f"status.{status}"
        )
        return _at_stage(
            _refine(verdict, cls),
            stage or smtp_stage(text, disabled_families),
            rcpt_evidence=rcpt_evidence,
            mailbox_proof=mailbox_proof,
        )
    return _by_basic_code(code, class_permanent, status)


def _by_basic_code(code: int | None, permanent: bool, status: str | None) -> Verdict:
    if code == 421:
        # RFC 5321: the service is closing the channel; in bulk mail this is a throttle.
        return Verdict(Scope.LANE, False, "toomanyconn", False, status, "class.421")
    if code in (500, 501, 502, 503, 504, 555):
        return Verdict(Scope.CAMPAIGN, True, "syntaxerror", False, status, f"class.{code}")
    if code == 552:
        return Verdict(Scope.RECIPIENT, True, "mailboxfull", False, status, "class.552")
    if code == 452:
        return Verdict(Scope.TRANSIENT, False, "systemfull", False, status, "class.452")
    if code is not None and 400 <= code < 500:
        return Verdict(Scope.TRANSIENT, False, "undefined", False, status, "class.4xx")
    if code is not None and 500 <= code < 600:
        return Verdict(Scope.RECIPIENT, True, "onhold", False, status, "class.5xx")
    # No code at all: nothing says whose fault it is, so never suppress on it.
    return Verdict(
        Scope.TRANSIENT if not permanent else Scope.RECIPIENT,
        permanent,
        "undefined",
        False,
        status,
        "class.none",
    )


def classify_reply(
    code: int | None,
    text: str,
    provider: str | None = None,
    rules: Iterable[Rule] | None = None,
    *,
    stage: str | None = None,
) -> Verdict:
    """Classify a live SMTP reply: its basic code and full text (with the enhanced code).

    ``stage`` is the command it answered ("connect", "mail", "rcpt", "data"): "user
    unknown" refusing MAIL FROM is about the sender, and after DATA it is a filter's answer;
    only at RCPT does it say the recipient's mailbox does not exist.
    """
    text = (text or "")[:MAX_TEXT_CHARS]
    if code is None:
        code = parse_reply_code(text)
    verdict = decide(code, parse_enhanced_status(text), text, provider, rules=rules, stage=stage)
    return _message_scoped(verdict, stage)


# Refusals of one message's form at DATA (a line too long, too big, malformed headers):
# the sender's content error for that message, never the receiver refusing the sender.
_MESSAGE_FORM_REASONS = frozenset({"contenterror", "mesgtoobig", "notcompliantrfc", "syntaxerror"})


def _message_scoped(verdict: Verdict, stage: str | None) -> Verdict:
    if (
        stage == "data"
        and verdict.scope is Scope.CAMPAIGN
        and verdict.reason in _MESSAGE_FORM_REASONS
        and not (verdict.status or "").startswith(("5.7", "4.7"))
    ):
        return replace(verdict, scope=Scope.MESSAGE)
    return verdict


def classify_failure(
    status: str | None,
    diagnostic: str,
    action: str | None = None,
    code: int | None = None,
    *,
    default_permanent: bool = True,
    rules: Iterable[Rule] | None = None,
    context: str = "",
    disabled_families: frozenset[str] = frozenset(),
) -> Verdict:
    """Classify one failed recipient of a bounce (DSN fields, or what a free-text bounce said).

    ``context`` is the human-readable text around the recipient; only the SMTP command it
    names (RCPT, DATA, MAIL FROM …) is taken from it. ``disabled_families`` leaves out every
    rule and stage phrase written from those corpus families (`rules_without`). ``action`` is
    the DSN's Action field: "delayed", or "failed" with a transient status, is a message that
    spent its time in the queue (`_queued_too_long`); None when the report states none.
    """
    diagnostic = (diagnostic or "")[:MAX_TEXT_CHARS]
    context = context[:MAX_TEXT_CHARS]
    if disabled_families and rules is None:
        rules = rules_without(disabled_families)
    stage = smtp_stage(diagnostic, disabled_families) or smtp_stage(context, disabled_families)
    mailbox_proof = bool(_MAILBOX_STATUS.search(context) or _MAILBOX_STATUS.search(diagnostic))
    if status is not None:
        status = parse_enhanced_status(status) or None
    diag_status = parse_enhanced_status(diagnostic)
    # The DSN's Status is the reporting MTA's summary; a more specific code in the remote
    # server's own words is better evidence (e.g. Status 5.0.0 for "550 5.1.1 no such user").
    if diag_status and (status is None or status.endswith(".0.0") or status[0] == diag_status[0]):
        status = diag_status if status is None or status.endswith(".0.0") else status
    if code is None:
        code = parse_reply_code(diagnostic)
    if action == "delayed":
        # A delay is a warning: the message is still being retried, nothing is final yet.
        verdict = decide(
            code,
            status,
            diagnostic,
            default_permanent=False,
            rules=rules,
            stage=stage,
            rcpt_evidence=True,
            mailbox_proof=mailbox_proof,
            disabled_families=disabled_families,
        )
        return _queued_too_long(
            Verdict(
                verdict.scope,
                verdict.permanent,
                verdict.reason,
                False,
                verdict.status,
                verdict.rule,
            ),
            action,
        )
    if action in ("delivered", "relayed", "expanded", "deliverable"):
        return Verdict(Scope.RECIPIENT, False, "delivered", False, status, f"action.{action}")
    return _queued_too_long(
        decide(
            code,
            status,
            diagnostic,
            default_permanent=default_permanent,
            rules=rules,
            stage=stage,
            rcpt_evidence=True,
            mailbox_proof=mailbox_proof,
            disabled_families=disabled_families,
        ),
        action,
    )


# What a bare status code or reply class says about a transient failure without naming its
# cause (Sisimai re-examines these "retry" reasons before it settles on them).
_UNNAMED_TRANSIENT = frozenset({"undefined", "onhold", "systemerror", "networkerror"})


def _queued_too_long(verdict: Verdict, action: str | None) -> Verdict:
    """A transient failure the reporting MTA kept retrying, when nothing named its cause.

    A delay warning (Action: delayed) reports a message still queued; a final failure whose
    status is still transient (Action: failed with a 4.x.x status or a 4xx reply) reports one
    the MTA gave up on when its queue lifetime ran out (RFC 3464 section 2.3.3; RFC 3463 class
    4 is a persistent transient failure, and X.4.7 asks for the code of the last problem met
    rather than itself). Either way the report's news is the time spent in the queue:
    ``expired`` (as Sisimai reads "Action: delayed"). A cause that a phrase or a specific
    detail code named (mailbox full, no route to host, 4.4.6 routing loop, a block) is kept;
    only the reasons an "other or undefined" code (X.Y.0), a bare reply class or words that
    restate one ("temporary failure") give yield.
    """
    if verdict.reason not in _UNNAMED_TRANSIENT or not (
        verdict.rule.startswith(("status.", "class.")) or verdict.rule == "text.transient"
    ):
        return verdict
    detail = (verdict.status or "").partition(".")[2]
    if detail in STATUS_DETAIL and not detail.endswith(".0"):
        return verdict  # a specific detail code named the cause
    transient = (verdict.status or "").startswith("4") or verdict.rule == "class.4xx"
    if not (action == "delayed" or (action == "failed" and transient)):
        return verdict
    return Verdict(
        Scope.TRANSIENT, False, "expired", False, verdict.status, f"{verdict.rule}+expired"
    )


@functools.cache
def _tagged_phrases() -> dict[str, re.Pattern[str]]:
    by_rule: dict[str, list[str]] = {}
    for pairs in FAMILY_PHRASES.values():
        for rule_id, phrase in pairs:
            by_rule.setdefault(rule_id, []).append(phrase)
    return {
        rule_id: re.compile(_lowered_pattern("|".join(phrases)))
        for rule_id, phrases in by_rule.items()
    }


def family_rule_decided(verdict: Verdict, text: str) -> bool:
    """Whether a rule written from one corpus family may have decided ``verdict`` on
    ``text``: a tagged provider's rule did, or one of the rule's family-tagged phrases occurs
    in the text (then only re-classifying without them tells for sure)."""
    rule_id, _, stage = verdict.rule.partition("@")
    if rule_id in _TAGGED_PROVIDER_RULES:
        return True
    if stage and names_family_stage(text):
        return True
    phrases = _tagged_phrases().get(rule_id)
    return phrases is not None and phrases.search(_flatten(text).lower()) is not None


_TAGGED_PROVIDER_RULES = frozenset(
    r.id for r in PROVIDER_RULES if r.id.partition(".")[0] in PROVIDER_FAMILIES
)
