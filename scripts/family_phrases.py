"""Which corpus families each classifier phrase decides: the measurement behind the family
tags of mailctl/replies/phrases.py (FAMILY_PHRASES).

Usage: python scripts/family_phrases.py [CORPUS_DIR]

Parses every corpus message with all rules on and records, for each phrase alternative that
decided a verdict, the families (file-name prefixes) of the messages it decided. Lines start
with "ONE" when a phrase decides messages of one family only: a candidate for a family tag,
which it gets when its wording is one MTA's or provider's template rather than plain SMTP
vocabulary (that judgement is the reviewer's). "tagged" marks phrases already in
FAMILY_PHRASES; provider rules are listed with the families of the messages they decided.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mailctl.replies.classify as classify  # noqa: E402
from mailctl.bounces.parse import parse_message  # noqa: E402
from mailctl.replies.phrases import FAMILY_PHRASES, PHRASE_RULES  # noqa: E402


def main(argv: list[str]) -> int:
    corpus = Path(argv[0]) if argv else REPO / "tests" / "data" / "bounces"
    alternatives = {
        rule.id: [(p, re.compile(classify._lowered_pattern(p))) for p in rule.phrases]
        for rule in PHRASE_RULES
    }
    tagged = {pair for pairs in FAMILY_PHRASES.values() for pair in pairs}
    decided: dict[tuple[str, str], set[str]] = defaultdict(set)
    providers: dict[str, set[str]] = defaultdict(set)
    family = [""]
    original = classify._RuleMatcher.first

    def first(self: classify._RuleMatcher, lowered: str) -> classify.Rule | None:
        rule = original(self, lowered)
        if rule is not None and rule.id in alternatives:
            for phrase, regex in alternatives[rule.id]:
                if regex.search(lowered):
                    decided[(rule.id, phrase)].add(family[0])
        elif rule is not None:
            providers[rule.id].add(family[0])
        return rule

    classify._RuleMatcher.first = first  # type: ignore[method-assign]
    for path in sorted((corpus / "eml").glob("*.eml")):
        family[0] = re.sub(r"-\d+\.eml$", "", path.name)
        parse_message(path.read_bytes(), path.name)
    for (rule_id, phrase), families in sorted(decided.items()):
        mark = "ONE" if len(families) == 1 else "   "
        tag = "tagged" if (rule_id, phrase) in tagged else "      "
        print(f"{mark} {tag} {rule_id:28} {phrase!r:60} {sorted(families)}")
    print("provider rules:")
    for rule_id, families in sorted(providers.items()):
        print(f"    {rule_id:32} {sorted(families)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
