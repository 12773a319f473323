"""Accuracy of mailctl's bounce parser on the labelled corpus, with flufl.bounce beside it.

Usage: python bench/bounce_accuracy.py [CORPUS_DIR] [--misses] [--leave-one-family-out]

CORPUS_DIR holds eml/ and labels.json (default: ../shared/corpus/bounces next to the repo).
Figures:
- recipients: bounce messages whose failed-recipient set is exactly right (a label's
  alternates, e.g. Original-Recipient vs Final-Recipient, count as the same recipient);
- permanent: labelled recipients whose permanent/temporary flag matches;
- suppress: labelled recipients whose suppress decision matches the label's ``hard`` flag
  (complaints of type abuse/fraud/virus must be suppressed);
- reason: labelled recipients whose reason matches.

``--leave-one-family-out`` scores each family (the file-name prefix: lhost-postfix, rhost-google,
arf …) with every rule written from that family turned off, then the whole corpus scored that
way (each message with its own family's rules off), the mean over families, the worst
families, and the targets of issue #14 (`lofo_failures`, which the tests use too).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from email import message_from_bytes
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailctl.bounces.parse import parse_message  # noqa: E402

# One scoring of reports against labels, shared with tests/test_bounce_parse.py.
from scripts.bounce_labels import (  # noqa: E402
    COMPLAINT_TYPES,
    LOFO_TARGETS,
    family_of,
    label_names,
    leave_one_family_out,
    lofo_failures,
    match_label,
)

BOUNCE_CATEGORIES = ("bounce-permanent", "bounce-temporary")
# Documented, deliberate disagreements with the corpus labels (see PROVIDERS.md): the
# providers' own "this mailbox does not exist / is disabled / is inactive and full" replies
# suppress, where Sisimai's labels say filtered/suspend/mailboxfull; and a 4xx reply never
# suppresses, even where a label calls it hard. Counted by rule, never by file.
DELIBERATE_RULES = frozenset(
    {
        "google.no-such-user",
        "google.disabled-user",
        "google.over-quota-perm",
        "yahoo.no-account",
        "microsoft.mailbox-unavailable",
    }
)


def _deliberate(got: object, want_suppress: bool | None = None) -> bool:
    rule = str(getattr(got, "rule", "")).split("@")[0]
    if rule in DELIBERATE_RULES:
        return True
    return bool(want_suppress) and not getattr(got, "permanent", True)


def _flufl_exact(raw: bytes, label: dict) -> bool:
    from flufl.bounce import scan_message

    try:
        found = {
            a.decode("utf-8", "replace").lower() if isinstance(a, bytes) else str(a).lower()
            for a in scan_message(message_from_bytes(raw))
        }
    except Exception:  # noqa: BLE001 - a crash is a miss
        return False
    labelled = [r for r in label["per_recipient"] if r["recipient"]]
    if len(found) != len(labelled):
        return False
    return all(found & label_names(r) for r in labelled)


def _pct(value: float | None) -> str:
    return f"{100 * value:5.1f}%" if value is not None else "   n/a"


def print_lofo(corpus: Path, labels: list[dict]) -> int:
    run = leave_one_family_out(corpus, labels)
    print(f"leave-one-family-out: {len(run.families)} families, {run.messages} messages")
    print(
        f"{'family':24} {'msgs':>4} {'recipients':>10} {'permanent':>9} "
        f"{'suppress':>8} {'reason':>7}"
    )
    for family, scores in sorted(run.families.items()):
        rates = scores.rates()
        count = sum(1 for label in labels if family_of(label["file"]) == family)
        print(
            f"{family:24} {count:4} {_pct(rates['recipients']):>10} {_pct(rates['permanent']):>9} "
            f"{_pct(rates['suppress']):>8} {_pct(rates['reason']):>7}"
        )
    pooled, mean = run.pooled.rates(), run.mean()
    print("whole corpus, each family with its own rules off:")
    for name, target in LOFO_TARGETS.items():
        print(
            f"  {name:11} {_pct(pooled[name])}  "
            f"(mean over families {_pct(mean[name])}; target >= {target:.0%})"
        )
    print("worst families (exact recipients, then reason):")
    for family, scores in run.worst():
        rates = scores.rates()
        print(
            f"  {family:24} recipients {_pct(rates['recipients'])}  reason {_pct(rates['reason'])}"
        )
    failures = lofo_failures(run)
    print("targets: " + ("all met" if not failures else "MISSED: " + "; ".join(failures)))
    print(f"parse speed: {run.messages / run.parse_time:,.0f} messages/s")
    return 0


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    show_misses = "--misses" in argv
    if "--leave-one-family-out" in argv:
        corpus = Path(args[0]) if args else REPO.parent / "shared" / "corpus" / "bounces"
        return print_lofo(corpus, json.loads((corpus / "labels.json").read_text()))
    corpus = Path(args[0]) if args else REPO.parent / "shared" / "corpus" / "bounces"
    labels = json.loads((corpus / "labels.json").read_text())

    exact = total_bounces = flufl_exact = 0
    counts: Counter[str] = Counter()
    misses: dict[str, list[str]] = defaultdict(list)
    kinds: Counter[tuple[str, str]] = Counter()
    started = time.perf_counter()
    parse_time = 0.0
    for label in labels:
        raw = (corpus / "eml" / label["file"]).read_bytes()
        t0 = time.perf_counter()
        report = parse_message(raw, label["file"])
        parse_time += time.perf_counter() - t0
        category = label["category"]
        kinds[(category, str(report.kind))] += 1
        ok, matched = match_label(report, label)
        if category in BOUNCE_CATEGORIES:
            total_bounces += 1
            exact += ok
            if _flufl_exact(raw, label):
                flufl_exact += 1
            if not ok:
                want = sorted(r["recipient"] for r in label["per_recipient"] if r["recipient"])
                got = sorted(r.address for r in report.recipients)
                misses[f"{category} recipients"].append(f"{label['file']}: want {want} got {got}")
        if category not in BOUNCE_CATEGORIES and category != "complaint-arf":
            continue
        labelled = [r for r in label["per_recipient"] if r["recipient"]]
        for index, expected in enumerate(labelled):
            got = matched.get(index)
            counts["recipients"] += 1
            if category == "complaint-arf":
                want_suppress = expected.get("feedback_type") in COMPLAINT_TYPES
            else:
                want_suppress = bool(expected["hard"])
                counts["permanent_total"] += 1
                if got is not None and got.permanent == bool(expected["permanent"]):
                    counts["permanent_ok"] += 1
                elif got is not None:
                    misses[f"{category} permanent"].append(
                        f"{label['file']}: {expected['recipient']} want {expected['permanent']} got {got.permanent} "  # noqa: E501
                        f"({got.status} {got.rule}; {got.diagnostic[:90]!r})"
                    )
            if got is not None and got.suppress == want_suppress:
                counts["suppress_ok"] += 1
            elif got is not None:
                counts["suppress_deliberate"] += _deliberate(got, want_suppress)
                misses[f"{category} suppress"].append(
                    f"{label['file']}: {expected['recipient']} want {want_suppress} ({expected['reason']}) got {got.suppress} "  # noqa: E501
                    f"({got.reason} {got.rule}; {got.diagnostic[:90]!r})"
                )
            if got is not None and got.reason == expected["reason"]:
                counts["reason_ok"] += 1
            elif got is not None:
                counts["reason_deliberate"] += _deliberate(got)
                misses[f"{category} reason"].append(
                    f"{label['file']}: want {expected['reason']} got {got.reason} ({got.status} {got.rule}; {got.diagnostic[:110]!r})"  # noqa: E501
                )
    elapsed = time.perf_counter() - started

    def share(ok: int, total: int) -> str:
        return f"{ok}/{total} = {100.0 * ok / total:.1f}%" if total else "n/a"

    print(f"corpus: {corpus} ({len(labels)} messages, {total_bounces} bounces)")
    print(
        f"exact failed-recipient set (bounces):   mailctl {share(exact, total_bounces)}   flufl.bounce {share(flufl_exact, total_bounces)}"  # noqa: E501
    )
    print(
        f"permanent/temporary flag (recipients):  {share(counts['permanent_ok'], counts['permanent_total'])}"  # noqa: E501
    )
    for name, label in (
        ("suppress", "suppress == label hard / complaint:"),
        ("reason", "reason (recipients):"),
    ):
        ok, deliberate = counts[f"{name}_ok"], counts[f"{name}_deliberate"]
        print(
            f"{label:39} {share(ok, counts['recipients'])}   "
            f"excluding {deliberate} deliberate disagreements: "
            f"{share(ok, counts['recipients'] - deliberate)}"
        )
    print(
        f"parse speed: {len(labels) / parse_time:,.0f} messages/s (parse only; run took {elapsed:.1f}s with flufl)"  # noqa: E501
    )
    print("kinds by category:")
    for (category, kind), number in sorted(kinds.items()):
        print(f"  {category:24} -> {kind:10} {number}")
    print("misses per category:")
    for key in sorted(misses):
        print(f"  {key}: {len(misses[key])}")
        if show_misses:
            for line in misses[key]:
                print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
