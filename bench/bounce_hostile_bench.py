"""Worst-case inputs for the bounce parser and the reply classifier: time per message.

Usage: python bench/bounce_hostile_bench.py [--limit-ms 100]

Each input is built to make a backtracking regex or a per-recipient loop go quadratic: a
10,000-dash line, 2,000 addresses on one line, 1 MB parts, long runs of one character, a
200 KB free-text bounce. Prints the parse time of each (and of `classify_failure` on the
hostile reply texts); exits 1 when any message takes over the limit (default 100 ms).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailctl.bounces.parse import parse_message  # noqa: E402
from mailctl.replies.classify import classify_failure, classify_reply  # noqa: E402
from tests.helpers.hostile_mail import hostile_inputs, hostile_replies  # noqa: E402


def main(argv: list[str]) -> int:
    limit_ms = float(argv[argv.index("--limit-ms") + 1]) if "--limit-ms" in argv else 100.0
    worst = 0.0
    for name, raw in hostile_inputs():
        started = time.perf_counter()
        try:
            report = parse_message(raw, name)
            outcome = f"{report.kind}, {len(report.recipients)} recipients"
        except Exception as exc:  # noqa: BLE001 - a bench reports what happened
            outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
        ms = (time.perf_counter() - started) * 1000
        worst = max(worst, ms)
        print(f"{ms:9.1f} ms  {name:36} {len(raw) / 1000:8.0f} KB  {outcome}", flush=True)
    for name, text in hostile_replies():
        started = time.perf_counter()
        verdict = classify_failure(None, text, "failed")
        classify_reply(None, text)
        ms = (time.perf_counter() - started) * 1000
        worst = max(worst, ms)
        print(f"{ms:9.1f} ms  {name:36} {len(text) / 1000:8.0f} KB  {verdict.rule}", flush=True)
    print(f"worst: {worst:.1f} ms (limit {limit_ms:.0f} ms)")
    return 0 if worst <= limit_ms else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
