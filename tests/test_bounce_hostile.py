"""Hostile bounce mailboxes: every parser and classifier regex runs in linear time, parts and
lines are bounded, and a message that cannot be read in its time budget is counted, not
hung on."""

from __future__ import annotations

import importlib
import re
import time
from re import _constants as _C  # type: ignore[attr-defined]
from re import _parser as _P  # type: ignore[attr-defined]
from typing import Any

import pytest

from mailctl.bounces.parse import MAX_RECIPIENTS, Kind, parse_message
from mailctl.errors import BounceParseError
from mailctl.replies import classify
from tests.helpers.hostile_mail import hostile_inputs, hostile_replies

# Generous against a loaded CI machine: the bench asks 100 ms; quadratic code takes seconds.
LIMIT = 1.0

MODULES = (
    "mailctl.bounces.parse",
    "mailctl.bounces.freetext",
    "mailctl.bounces.generic",
    "mailctl.bounces.mime",
    "mailctl.bounces.mailbox",
    "mailctl.bounces.suppression",
    "mailctl.message.tracking",
    "mailctl.replies.classify",
    "mailctl.replies.phrases",
    "mailctl.replies.rules",
    "mailctl.replies.stages",
)


def _patterns() -> dict[str, re.Pattern[str]]:
    """Every compiled str pattern the parser and classifier hold (module globals, rule tables,
    the classifier's lower-cased copies)."""
    found: dict[tuple[str, int], tuple[str, re.Pattern[str]]] = {}

    def walk(name: str, value: object, depth: int) -> None:
        if isinstance(value, re.Pattern):
            if isinstance(value.pattern, str):
                found.setdefault((value.pattern, value.flags), (name, value))
        elif depth < 3 and isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{name}[{index}]", item, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for key, item in value.items():
                walk(f"{name}[{key!r}]", item, depth + 1)
        elif depth < 3 and hasattr(value, "regex") and not isinstance(value, type):
            walk(f"{name}.regex", value.regex, depth + 1)

    for module_name in MODULES:
        for name, value in vars(importlib.import_module(module_name)).items():
            walk(f"{module_name}.{name}", value, 0)
    walk("matcher", classify._matcher(None).regexes, 0)
    # Compiled on first use, not at import: the family-tagged phrases of the corpus's rules.
    walk("mailctl.replies.classify._TAGGED_PHRASES", classify._tagged_phrases(), 0)
    return {name: pattern for name, pattern in found.values()}


PATTERNS = _patterns()
RUNS = [
    *"-= a.@<>5\n\t:;#x_*()[]'\"/\\,|",
    *("a.", "a@", "- ", "550 ", "5.1.1 ", "said: ", "<<< ", "x-", "a.b@c", ">\n", "x: y\n"),
    *("a ", "-\n", "a-", "1.", "@a.", "<a@b.c> ", "--", "a\n", ". ", '"a', ", ", "the "),
]


def test_the_parser_holds_many_patterns_to_check() -> None:
    assert len(PATTERNS) > 150


def _scan_time(pattern: re.Pattern[str], text: str) -> float:
    started = time.perf_counter()
    for _ in pattern.finditer(text):
        pass
    return time.perf_counter() - started


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_parser_and_classifier_regex_is_linear_on_long_runs(name: str) -> None:
    pattern = PATTERNS[name]
    worst, worst_run = 0.0, ""
    for unit in RUNS:
        text = unit * (6_000 // len(unit))
        elapsed = _scan_time(pattern, text)
        if elapsed > 0.25:
            # A busy machine can stall one scan; a quadratic pattern is slow every time.
            elapsed = min(elapsed, _scan_time(pattern, text), _scan_time(pattern, text))
        if elapsed > worst:
            worst, worst_run = elapsed, unit
    # Linear: about a millisecond; quadratic at 6,000 characters: seconds.
    assert worst < 0.25, f"{name} took {worst:.2f}s on a run of {worst_run!r}"


def _literals(pattern: re.Pattern[str]) -> list[str]:
    """The literal words a pattern spells (runs of 2+ literal characters), sorted."""
    found: set[str] = set()

    def walk(items: Any) -> None:
        run: list[str] = []
        for op, arg in [*items, (None, None)]:
            if op is _C.LITERAL:
                run.append(chr(arg))
                continue
            if len(run) >= 2:
                found.add("".join(run))
            run = []
            if op is _C.BRANCH:
                for branch in arg[1]:
                    walk(branch)
            elif op is _C.SUBPATTERN:
                walk(arg[-1])
            elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
                walk(arg[2])
            elif op is _C.ATOMIC_GROUP:
                walk(arg)
            elif op in (_C.ASSERT, _C.ASSERT_NOT):
                walk(arg[1])

    walk(_P.parse(pattern.pattern, pattern.flags))
    return sorted(found)[:20]


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_regex_is_linear_on_a_long_run_after_its_own_words(name: str) -> None:
    """ "smtp command" then 6,000 newlines, "rcpt to:<x>" then 6,000 spaces …: where a
    pattern's words meet an ambiguous repeat."""
    pattern = PATTERNS[name]
    worst, worst_case = 0.0, ("", "")
    for literal in _literals(pattern):
        for unit in (" ", "\n", "-", "<", ":"):
            text = literal + unit * 6_000 + "x"
            started = time.perf_counter()
            for _ in pattern.finditer(text):
                pass
            elapsed = time.perf_counter() - started
            if elapsed > worst:
                worst, worst_case = elapsed, (literal, unit)
    assert worst < 0.25, f"{name} took {worst:.2f}s on {worst_case!r}"


@pytest.mark.parametrize("name,raw", hostile_inputs(), ids=[n for n, _ in hostile_inputs()])
def test_hostile_reports_parse_within_bounds(name: str, raw: bytes) -> None:
    started = time.perf_counter()
    try:
        report = parse_message(raw, name)
    except BounceParseError as exc:
        assert name == "2,000-deep multipart" and "nested MIME parts" in str(exc)
        return
    assert time.perf_counter() - started < LIMIT
    assert len(report.recipients) <= MAX_RECIPIENTS


@pytest.mark.parametrize("name,text", hostile_replies(), ids=[n for n, _ in hostile_replies()])
def test_hostile_replies_classify_within_bounds(name: str, text: str) -> None:
    started = time.perf_counter()
    classify.classify_failure(None, text, "failed")
    classify.classify_reply(None, text)
    assert time.perf_counter() - started < LIMIT


def test_a_line_of_10000_dashes_before_the_returned_message_is_still_a_separator() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.example.net\nTo: news@example.com\n"
        "Subject: Undelivered Mail Returned to Sender\n\n"
        "This message could not be delivered to <gone@example.org>: 550 5.1.1 user unknown\n"
        + "-"
        * 10_000
        + "\n------ Returned message follows ------\n"
        "From: news@example.com\nTo: gone@example.org\nMessage-ID: <x@example.com>\n\nhi\n"
    ).encode()
    started = time.perf_counter()
    report = parse_message(raw, "dashes")
    assert time.perf_counter() - started < LIMIT
    assert report.kind is Kind.BOUNCE
    assert [r.address for r in report.recipients] == ["gone@example.org"]
    assert report.original_message_id == "<x@example.com>"


def test_a_report_naming_2000_addresses_on_one_line_is_bounded() -> None:
    addresses = " ".join(f"user{i}@example.org" for i in range(2000))
    raw = (
        "From: MAILER-DAEMON@mx.example.net\nTo: news@example.com\n"
        f"Subject: Undelivered Mail\n\nDelivery has failed to:\n{addresses}\n"
    ).encode()
    started = time.perf_counter()
    report = parse_message(raw, "many")
    assert time.perf_counter() - started < LIMIT
    assert report.kind is Kind.BOUNCE
    assert 0 < len(report.recipients) <= MAX_RECIPIENTS
    assert report.recipients[0].address == "user0@example.org"


def test_a_message_over_its_time_budget_is_an_error_not_a_hang() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail\n\n"
        b"could not be delivered to a@example.org\n"
    )
    with pytest.raises(BounceParseError, match=r"budget: gave up after 0s \(MIME\)"):
        parse_message(raw, "budget", time_budget=0.0)
