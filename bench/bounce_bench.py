"""Bounce parsing speed and memory: builds an mbox from the corpus and streams it.

Usage: python bench/bounce_bench.py [CORPUS_DIR] [--copies N]

Prints messages/s for parse_message alone, for iter_messages + parse_message on the mbox,
and for the whole database import (`mailctl bounces import`'s code: parse, store once by
digest, correlate, suppress) of a 100,000-message mbox, with peak RSS, which must stay flat
as the mbox grows. Each copy of a corpus message gets its own header so that none is
skipped as already imported. Usage: python bench/bounce_bench.py [CORPUS] [--import N]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailctl.bounces.mailbox import iter_messages  # noqa: E402
from mailctl.bounces.parse import parse_message  # noqa: E402


def main(argv: list[str]) -> int:
    copies = 20
    if "--copies" in argv:
        copies = int(argv[argv.index("--copies") + 1])
    args = [a for a in argv if not a.startswith("--") and not a.isdigit()]
    corpus = Path(args[0]) if args else REPO.parent / "shared" / "corpus" / "bounces"
    messages = [p.read_bytes() for p in sorted((corpus / "eml").glob("*.eml"))]

    started = time.perf_counter()
    for raw in messages * 3:
        parse_message(raw, "bench")
    elapsed = time.perf_counter() - started
    print(
        f"parse_message: {3 * len(messages) / elapsed:,.0f} messages/s ({len(messages)} messages x 3)"  # noqa: E501
    )

    with tempfile.TemporaryDirectory() as folder:
        mbox = Path(folder) / "bench.mbox"
        with mbox.open("wb") as out:
            for _ in range(copies):
                for raw in messages:
                    out.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2024\n")
                    out.write(raw.replace(b"\nFrom ", b"\n>From "))
                    out.write(b"\n\n")
        size = mbox.stat().st_size
        count = 0
        started = time.perf_counter()
        for source, raw in iter_messages(mbox):
            parse_message(raw, source)
            count += 1
        elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"mbox stream: {count:,} messages, {size / 1e6:.0f} MB, {count / elapsed:,.0f} messages/s, "
        f"peak RSS {peak_mb:.0f} MB"
    )
    total = int(argv[argv.index("--import") + 1]) if "--import" in argv else 100_000
    import_bench(messages, total)
    return 0


def import_bench(messages: list[bytes], total: int) -> None:
    from mailctl.bounces.suppression import import_reports
    from mailctl.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as folder:
        mbox = Path(folder) / "import.mbox"
        with mbox.open("wb") as out:
            for i in range(total):
                raw = messages[i % len(messages)]
                out.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2024\n")
                out.write(f"X-Bench-Copy: {i}\n".encode())
                out.write(raw.replace(b"\nFrom ", b"\n>From "))
                out.write(b"\n\n")
        size = mbox.stat().st_size
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        store = SqliteStore.open(Path(folder) / "bench.db")
        started = time.perf_counter()
        result = import_reports(store, [str(mbox)])
        elapsed = time.perf_counter() - started
        store.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"database import: {result.messages:,} messages ({size / 1e6:.0f} MB) in {elapsed:.1f} s, "
        f"{result.messages / elapsed:,.0f} messages/s (target >= 1,000); "
        f"{result.suppressed:,} suppressed; peak RSS {peak_mb:.0f} MB (before {rss_before:.0f} MB)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
