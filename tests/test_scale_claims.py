"""What lets several senders share one queue without slowing the total down, on both
backends (the `store_url` fixture: a SQLite file and a database on a throwaway PostgreSQL
cluster): a list import that streams its rows in (PostgreSQL: COPY), with the same
duplicate rule as row by row; and a run that, once its claim came back short, stops asking
the database after every message it finishes. Real stores, real Postfix smtp-sink."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailctl.delivery.claim import CLAIM_RETRY_SECONDS
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import RENDER_CHUNK
from mailctl.recipients.csv_import import BATCH, import_csv
from mailctl.store.factory import open_store
from tests.helpers.workspace import make_workspace, workspace_engine


def test_import_keeps_first_spelling_and_last_fields_across_batches(
    store_url: str, tmp_path: Path
) -> None:
    # Duplicates inside one staged batch and across the batch boundary; fields that COPY
    # must carry untouched (tab, backslash, quotes, \N, non-ASCII).
    rows = [f"user{i}@example.com,plain{i}" for i in range(BATCH + 10)]
    rows[1] = "Twice@Example.com,first"
    rows[2] = "twice@example.com,second"
    rows[3] = 'Odd@Example.com,"tab\there \\N back\\slash ""q"" é"'
    rows[BATCH + 5] = "TWICE@example.com,third"
    rows[BATCH + 6] = "user0@example.com,later"
    csv = tmp_path / "list.csv"
    csv.write_text("email,plan\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with open_store(store_url) as store:
        summary = import_csv(store, csv, list_name="l")
        fields = {r["email"]: r["fields"]["plan"] for r in store.iter_recipients("l")}
    assert (summary.imported, summary.duplicates) == (BATCH + 10 - 3, 3)
    assert fields["Twice@example.com"] == "third"
    assert "twice@example.com" not in fields and "TWICE@example.com" not in fields
    assert fields["Odd@example.com"] == 'tab\there \\N back\\slash "q" é'
    assert fields["user0@example.com"] == "later"
    assert fields["user7@example.com"] == "plain7"


def test_a_run_asks_for_more_only_after_a_pause_once_the_queue_ran_dry(
    store_url: str, tmp_path: Path, smtp_sink: tuple[int, Path]
) -> None:
    port, dump = smtp_sink
    rows, batch = 600, 64
    ws = make_workspace(
        tmp_path, port, rows=rows, profile={"connections": 4, "messages_per_connection": 1000}
    )
    with open_store(store_url) as store:
        engine = workspace_engine(store, ws, SendOptions(claim_batch=batch))
        started = time.monotonic()
        summary = asyncio.run(engine.run())
        elapsed = time.monotonic() - started
        claims = engine.claimer.claims
    assert (summary.stop_reason, summary.sent, summary.remaining) == ("finished", rows, 0)
    for _ in range(50):
        if len(list(dump.iterdir())) >= rows:
            break
        time.sleep(0.1)
    assert len(list(dump.iterdir())) == rows  # each message once
    # The first claim (one render chunk), full claims, one short one when the queue ran
    # dry, then at most one per retry pause while the backlog goes out, and the last.
    # Asking after every finished message made it ~260 (the backlog: 4 connections x 64
    # queued, plus a claimed batch).
    full = 1 + (rows - RENDER_CHUNK) // batch + 1
    assert claims <= full + 2 + int(elapsed / CLAIM_RETRY_SECONDS), (claims, elapsed)
    assert claims < 60, claims
