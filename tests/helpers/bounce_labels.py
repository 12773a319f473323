"""Matching the bounce parser's reports against the labelled corpus (labels.json).

Used by tests/test_bounce_parse.py for its accuracy floors and by bench/bounce_accuracy.py for
the full figures, so both score the parser the same way. Imports mailctl only.
"""

from __future__ import annotations

from mailctl.bounces.parse import FailedRecipient, Report

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
