"""Recipient import benchmark: mailctl's streaming import vs a bare sqlite3 executemany.

Generates a CSV (email plus 5 fields), imports it into a fresh database with
`mailctl.recipients.import_csv` (validation included), then inserts the same rows with a bare
`executemany` into a table with a UNIQUE email index. Prints seconds, rows/s, the ratio and
peak RSS. Run by hand: `python bench/import_bench.py [ROWS]` (default 1,000,000).
"""

from __future__ import annotations

import csv
import random
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from mailctl.recipients.csv_import import import_csv
from mailctl.store.sqlite import SqliteStore


def make_csv(path: Path, rows: int) -> None:
    rng = random.Random(1)
    plans = ["free", "pro", "team", "enterprise"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "plan", "city", "score"])
        for i in range(rows):
            writer.writerow(
                [
                    f"user{i}.{rng.randrange(10**6)}@example{i % 97}.com",
                    f"First{i % 1000}",
                    f"Last{i % 3000}",
                    plans[i % 4],
                    f"City {i % 500}",
                    str(rng.randrange(1000)),
                ]
            )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_insert(csv_path: Path, db_path: Path) -> float:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, fields TEXT)")
    started = time.perf_counter()
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        conn.executemany(
            "INSERT OR IGNORE INTO r (email, fields) VALUES (?, ?)",
            ((row[0], ",".join(row[1:])) for row in reader),
        )
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        csv_path = tmp_path / "recipients.csv"
        make_csv(csv_path, rows)
        size_mb = csv_path.stat().st_size / 1e6
        rss_before = peak_rss_mb()
        store = SqliteStore.open(tmp_path / "mailctl.db")
        started = time.perf_counter()
        summary = import_csv(store, csv_path, list_name="bench")
        mailctl_s = time.perf_counter() - started
        store.close()
        rss_after = peak_rss_mb()
        bare_s = bare_insert(csv_path, tmp_path / "bare.db")
    print(f"rows:              {rows:,} ({size_mb:.0f} MB CSV)")
    print(f"mailctl import:    {mailctl_s:.2f} s  ({rows / mailctl_s:,.0f} rows/s)")
    print(f"  imported={summary.imported:,} invalid={summary.invalid} dup={summary.duplicates}")
    print(f"bare executemany:  {bare_s:.2f} s  ({rows / bare_s:,.0f} rows/s)")
    print(f"ratio:             {mailctl_s / bare_s:.2f}x the bare insert (target <= 5x)")
    print(
        f"peak RSS:          {rss_after:.0f} MB (before import {rss_before:.0f} MB; target < 200)"
    )


if __name__ == "__main__":
    main()
