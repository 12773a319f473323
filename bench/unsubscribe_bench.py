"""Unsubscribe endpoint and remote mailbox import, measured against real servers.

Usage: python bench/unsubscribe_bench.py [--posts 5000] [--concurrency 16] [--messages 10000]

1. One-click POSTs per second to `mailctl unsubscribe serve` (uvicorn, SQLite) pinned to one
   core with taskset when available; the client (asyncio, keep-alive connections) runs on
   another core. Every POST carries a distinct token, so every one writes a suppression
   row. Latency p50/p99 per request. Targets: >= 500 POST/s, p99 < 50 ms.
2. `mailctl bounces import imaps://…` of N bounces from a Dovecot started for the run
   (tests/helpers/dovecot.py), importer pinned to one core: messages per second, and RSS
   of the importing process (sampled from /proc) for N/5 and N messages: flat memory means
   the peak does not grow with N. Target: >= 300 msg/s.
Needs root and Debian's dovecot-imapd for part 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailctl.store.sqlite import SqliteStore  # noqa: E402
from mailctl.unsubscribe.tokens import Signer, load_secret  # noqa: E402
from tests.helpers.dovecot import DovecotServer, dovecot_available, free_port  # noqa: E402
from tests.test_remote_mailbox import bounce  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def pinned(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core)]
    return []


async def _client(port: int, paths: list[str], concurrency: int) -> list[float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    latencies: list[float] = []
    body = b"List-Unsubscribe=One-Click"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            path = queue.get_nowait()
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if b" 200 " not in status:
                raise RuntimeError(f"unexpected answer: {status!r}")
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def bench_posts(posts: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        db = Path(workdir) / "m.db"
        SqliteStore.open(db).close()
        signer = Signer(load_secret(None, db))
        expires = time.time() + 86400
        paths = [
            "/unsubscribe?"
            + urllib.parse.urlencode(
                {"t": signer.token(f"user{i}@example.com", "news", "customers", expires)}
            )
            for i in range(posts)
        ]
        port = free_port()
        server = subprocess.Popen(
            [
                *pinned(0),
                sys.executable,
                "-m",
                "mailctl",
                "--db",
                str(db),
                "unsubscribe",
                "serve",
                "--port",
                str(port),
                "--rate-limit",
                "100000000",
                "--burst",
                "1000000",
                "--no-access-log",
            ],
            cwd=workdir,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(1.5)
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode() if server.stderr else "")
            asyncio.run(_client(port, paths[:200], concurrency))  # warm-up
            started = time.perf_counter()
            latencies = asyncio.run(_client(port, paths[200:], concurrency))
            elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=15)
        rows = sqlite3.connect(db).execute("SELECT count(*) FROM suppression").fetchone()[0]
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    rate = len(latencies) / elapsed
    print(
        f"one-click POST: {len(latencies)} requests, concurrency {concurrency}, server on one core"
    )
    print(
        f"  {rate:.0f} POST/s (target >= 500)   p50 {p50:.1f} ms   p99 {p99:.1f} ms (target < 50)"
    )
    print(f"  suppression rows written: {rows} (expected {posts})")


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _import(dovecot: DovecotServer, db: Path) -> tuple[float, list[float], str]:
    """Run one import in a child process: (seconds, its RSS sampled every 0.5 s, its JSON)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            *pinned(0),
            sys.executable,
            "-m",
            "mailctl",
            "--db",
            str(db),
            "bounces",
            "import",
            dovecot.url("imaps"),
            "--password-env",
            "MC_BENCH_PW",
            "--ca-file",
            str(dovecot.ca.ca_file),
            "--json",
        ],
        env={**ENV, "MC_BENCH_PW": dovecot.password},
        stdout=subprocess.PIPE,
        text=True,
    )
    samples: list[float] = []
    while child.poll() is None:
        if (rss := _rss_mib(child.pid)) is not None:
            samples.append(rss)
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"import failed with exit {child.returncode}")
    return elapsed, samples, output


def bench_imap(messages: int) -> None:
    if not dovecot_available():
        print("IMAP import: skipped (needs root and dovecot-imapd)")
        return
    if messages <= 0:
        return
    small = max(1, messages // 5)
    for count in (small, messages):
        dovecot = DovecotServer()
        try:
            dovecot.start()
            dovecot.deliver([bounce(i) for i in range(count)])
            with tempfile.TemporaryDirectory() as workdir:
                elapsed, samples, output = _import(dovecot, Path(workdir) / "m.db")
        finally:
            dovecot.stop()
        fetched = int(output.split('"messages": ')[1].split(",")[0])
        half = samples[len(samples) // 2] if samples else 0.0
        peak = max(samples, default=0.0)
        print(
            f"IMAP import of {count}: {fetched} messages in {elapsed:.1f} s = "
            f"{fetched / elapsed:.0f} msg/s (target >= 300); RSS halfway {half:.0f} MiB, "
            f"peak {peak:.0f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--messages", type=int, default=10000)
    args = parser.parse_args()
    bench_posts(args.posts, args.concurrency)
    bench_imap(args.messages)


if __name__ == "__main__":
    main()
