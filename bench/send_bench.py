"""Send benchmark: mailctl's send loop vs a bare aiosmtplib loop, both into Postfix smtp-sink.

20,000 personalised messages (a few template fields, about 5 KB each) go to smtp-sink on
127.0.0.1 through mailctl (import, queue, render, deliver, durable state in SQLite), then
the same number of pre-rendered messages go through a bare aiosmtplib loop over the same
number of reused connections. Prints messages/s for both and the ratio.

With --dkim, the same run is repeated with every message DKIM-signed (RSA-2048) and the
cost of signing per message is printed.

Needs Debian's `postfix` package (smtp-sink). Run by hand:
    python bench/send_bench.py [MESSAGES] [CONNECTIONS] [--dkim]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.engine import Engine
from mailctl.message.tracking import new_tracking_id
from mailctl.store.sqlite import SqliteStore

PARAGRAPH = (
    "Thanks for being with us, {{ first_name }}. Here is what changed on your {{ plan }} plan "
    "this month, with the details you asked for from {{ city }}. "
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink not found: apt-get install postfix")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "1024"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("smtp-sink did not start")


def workspace(
    tmp: Path, port: int, messages: int, connections: int, dkim: Path | None = None
) -> None:
    signing = (
        f"    dkim: [{{domain: example.com, selector: s1, key_file: {dkim}}}]\n" if dkim else ""
    )
    (tmp / "profiles.yaml").write_text(
        f"profiles:\n  sink:\n    transport: relay\n    host: 127.0.0.1\n    port: {port}\n"
        f"    tls: none\n    dns: false\n    connections: {connections}\n"
        "    messages_per_connection: 1000\n"
        # smtp-sink is a local sink, not a mailbox provider: no per-lane pacing toward it.
        "    rules: {limits: {default: {per_minute: null, burst: 100000}}}\n" + signing
    )
    with (tmp / "list.csv").open("w") as f:
        f.write("email,first_name,plan,city\n")
        for i in range(messages):
            f.write(f"user{i}@example{i % 50}.com,User{i},pro,City{i % 30}\n")
    html = "<html><body>" + "".join(f"<p>{PARAGRAPH}</p>\n" for _ in range(14)) + "</body></html>"
    text = "\n\n".join(PARAGRAPH for _ in range(14))
    (tmp / "c.txt").write_text(text)
    (tmp / "c.html").write_text(html)
    (tmp / "c.yaml").write_text(
        "name: bench\nprofile: sink\nfrom: 'Bench <bench@example.com>'\n"
        "subject: 'Your {{ plan }} update, {{ first_name }}'\ntext_file: c.txt\n"
        "html_file: c.html\nrecipients: list.csv\n"
        "unsubscribe: {url: 'https://example.com/u/{{ email|urlencode }}'}\n"
    )


async def bare_loop(port: int, payloads: list[tuple[str, str, bytes]], connections: int) -> float:
    async def worker(chunk: list[tuple[str, str, bytes]]) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        for sent, (sender, rcpt, data) in enumerate(chunk, 1):
            await client.mail(sender)
            await client.rcpt(rcpt)
            await client.data(data)
            if sent % 1000 == 0:  # the same reconnect cadence as mailctl's profile
                await client.quit()
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
                await client.connect()
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker(payloads[i::connections]) for i in range(connections)))
    return time.perf_counter() - started


def run_mailctl(
    tmp: Path, port: int, messages: int, connections: int, dkim: Path | None
) -> tuple[float, float, object, object]:
    workspace(tmp, port, messages, connections, dkim)
    profiles = load_profiles(tmp / "profiles.yaml")
    store = SqliteStore.open(tmp / "m.db")
    t0 = time.perf_counter()
    prepared = prepare(store, tmp / "c.yaml", profiles, now=time.time())
    t1 = time.perf_counter()
    engine = Engine(store, [prepared.job], run_id=store.start_run(os.getpid(), "b", t1))
    summary = asyncio.run(engine.run())
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, summary, (store, prepared)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    messages = int(args[0]) if args else 20_000
    connections = int(args[1]) if len(args) > 1 else 8
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "plain").mkdir()
            queue_s, send_s, summary, (store, prepared) = run_mailctl(
                tmp / "plain", port, messages, connections, None
            )
            sample = prepared.job.renderer.render(
                "user0@example0.com",
                {"first_name": "User0", "plan": "pro", "city": "City0"},
                new_tracking_id(),
            )
            payloads = [
                (
                    sample.envelope_from,
                    r["email"],
                    prepared.job.renderer.render(r["email"], r["fields"], new_tracking_id()).data,
                )
                for r in store.iter_recipients()
            ]
            store.close()
            bare_s = asyncio.run(bare_loop(port, payloads, connections))
            signed = None
            if "--dkim" in sys.argv:
                from mailctl.message.dkim import generate_keypair

                (tmp / "signed").mkdir()
                key = tmp / "signed" / "key.pem"
                key.write_bytes(generate_keypair(2048)[0])
                _, signed_s, signed_summary, (signed_store, _) = run_mailctl(
                    tmp / "signed", port, messages, connections, key
                )
                signed_store.close()
                signed = (signed_s, signed_summary)
    finally:
        sink.terminate()
        sink.wait()
    rate = summary.sent / send_s
    print(
        f"messages:            {messages:,} (~{len(sample.data) / 1024:.1f} KB each), "
        f"{connections} connections"
    )
    print(f"queue (import+queue): {queue_s:.2f} s")
    print(
        f"mailctl send loop:   {send_s:.2f} s  {rate:,.0f} msg/s "
        f"(sent {summary.sent}, deferred {summary.deferred})"
    )
    print(f"bare aiosmtplib:     {bare_s:.2f} s  {messages / bare_s:,.0f} msg/s")
    print(
        f"ratio:               {rate / (messages / bare_s):.2f} of bare "
        "(target >= 0.7; target >= 3,000 msg/s)"
    )
    if signed is not None:
        signed_s, signed_summary = signed
        signed_rate = signed_summary.sent / signed_s
        print(
            f"with DKIM (RSA-2048): {signed_s:.2f} s  {signed_rate:,.0f} msg/s; "
            f"{(signed_s - send_s) / messages * 1e6:,.0f} us more wall time per message"
        )


if __name__ == "__main__":
    main()
