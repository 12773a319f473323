"""Matching the bounce parser's reports against the labelled corpus (labels.json).

Used by tests/test_bounce_parse.py for its accuracy floors and by bench/bounce_accuracy.py for
the full figures, so both score the parser the same way; the leave-one-family-out figures and
issue #14's targets too (bench/bounce_accuracy.py --leave-one-family-out,
tests/test_bounce_generic.py). It lives in scripts/ because both sides use it: bench/ must not
depend on tests/, tests/ must not import bench/, and mailctl/ (what is packaged) ships no
evaluation code. Imports mailctl and the standard library only.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailctl.bounces.parse import FailedRecipient, Report, parse_message

BOUNCE_CATEGORIES = ("bounce-permanent", "bounce-temporary")

# ARF feedback types a complaint must suppress.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})


def label_names(label_recipient: dict) -> set[str]:
    """A labelled recipient's address and its alternates (Original- vs Final-Recipient)."""
    names = {label_recipient["recipient"].lower()} if label_recipient["recipient"] else set()
    names.update(a.lower() for a in label_recipient.get("alternates") or [])
    return names


def match_label(report: Report, label: dict) -> tuple[bool, dict[int, FailedRecipient]]:
    """(exact set?, label index -> our FailedRecipient)."""
    labelled = [r for r in label["per_recipient"] if r["recipient"]]
    ours = list(report.recipients)
    matched: dict[int, FailedRecipient] = {}
    used: set[int] = set()
    for index, expected in enumerate(labelled):
        names = label_names(expected)
        for position, got in enumerate(ours):
            if (
                position not in used
                and got.address.lower().strip('"') in {n.strip('"') for n in names} | names
            ):
                matched[index] = got
                used.add(position)
                break
    exact = len(matched) == len(labelled) == len(ours)
    return exact, matched


def family_of(file: str) -> str:
    """The corpus family of a message: its file-name prefix ("lhost-postfix-07.eml")."""
    return re.sub(r"-\d+\.eml$", "", file)


@dataclass
class Scores:
    """Figures for a set of labelled messages (see the module docstring)."""

    bounces: int = 0
    exact: int = 0
    recipients: int = 0
    permanent_total: int = 0
    permanent_ok: int = 0
    suppress_ok: int = 0
    reason_ok: int = 0

    def add(self, other: Scores) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def rates(self) -> dict[str, float | None]:
        def rate(ok: int, total: int) -> float | None:
            return ok / total if total else None

        return {
            "recipients": rate(self.exact, self.bounces),
            "permanent": rate(self.permanent_ok, self.permanent_total),
            "suppress": rate(self.suppress_ok, self.recipients),
            "reason": rate(self.reason_ok, self.recipients),
        }


def score(report: Report, label: dict) -> Scores:
    """One message's contribution to the figures."""
    result = Scores()
    category = label["category"]
    ok, matched = match_label(report, label)
    if category in BOUNCE_CATEGORIES:
        result.bounces, result.exact = 1, int(ok)
    elif category != "complaint-arf":
        return result
    for index, expected in enumerate(r for r in label["per_recipient"] if r["recipient"]):
        got = matched.get(index)
        result.recipients += 1
        if category == "complaint-arf":
            want_suppress = expected.get("feedback_type") in COMPLAINT_TYPES
        else:
            want_suppress = bool(expected["hard"])
            result.permanent_total += 1
            result.permanent_ok += got is not None and got.permanent == bool(expected["permanent"])
        result.suppress_ok += got is not None and got.suppress == want_suppress
        result.reason_ok += got is not None and got.reason == expected["reason"]
    return result


# Issue #14's targets for the leave-one-family-out figures over the whole corpus.
LOFO_TARGETS = {"recipients": 0.95, "permanent": 0.93, "suppress": 0.95, "reason": 0.80}
LOFO_FAMILY_FLOOR = 0.80  # exact recipients, every family


@dataclass
class FamilyRun:
    """Leave-one-family-out: each family scored with its own rules off, and the whole corpus."""

    families: dict[str, Scores] = field(default_factory=dict)
    pooled: Scores = field(default_factory=Scores)
    parse_time: float = 0.0
    messages: int = 0

    def mean(self) -> dict[str, float]:
        means = {}
        for name in LOFO_TARGETS:
            values = [v for s in self.families.values() if (v := s.rates()[name]) is not None]
            means[name] = sum(values) / len(values) if values else 0.0
        return means

    def worst(self, count: int = 5) -> list[tuple[str, Scores]]:
        ranked = [(f, s) for f, s in self.families.items() if s.bounces or s.recipients]

        def key(item: tuple[str, Scores]) -> tuple[float, float]:
            rates = item[1].rates()
            recipients, reason = rates["recipients"], rates["reason"]
            return (1.0 if recipients is None else recipients, 1.0 if reason is None else reason)

        ranked.sort(key=key)
        return ranked[:count]


def leave_one_family_out(corpus: Path, labels: list[dict]) -> FamilyRun:
    run = FamilyRun()
    for label in labels:
        family = family_of(label["file"])
        raw = (corpus / "eml" / label["file"]).read_bytes()
        t0 = time.perf_counter()
        report = parse_message(raw, label["file"], disabled_families=frozenset({family}))
        run.parse_time += time.perf_counter() - t0
        run.messages += 1
        result = score(report, label)
        run.families.setdefault(family, Scores()).add(result)
        run.pooled.add(result)
    return run


def lofo_failures(run: FamilyRun) -> list[str]:
    """The targets the run misses, in words (empty: all met)."""
    failures = []
    rates = run.pooled.rates()
    for name, target in LOFO_TARGETS.items():
        value = rates[name]
        if value is None or value < target:
            failures.append(f"{name} {value:.1%} < {target:.0%}" if value is not None else name)
    for family, scores in run.families.items():
        value = scores.rates()["recipients"]
        if value is not None and value < LOFO_FAMILY_FLOOR:
            failures.append(f"{family} recipients {value:.1%} < {LOFO_FAMILY_FLOOR:.0%}")
    return failures
