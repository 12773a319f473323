"""Receivers benchmark: mailctl against real receivers no one here wrote, beside the optimum and
a naive one-connection smtplib loop.

Each row starts its own private Postfix (tests/helpers/postfix.py: ``postfix -c DIR``, a
throwaway directory, a free 127.0.0.1 port, everything discarded after the queue) with one
anvil limit, or postgrey behind it, and sends the same list three ways:

* optimum: what the limit allows at best (see ``optimum`` of each row), with 0 refusals
  (greylisting refuses every new recipient once, whoever sends); for anvil's rates, with
  its whole-second clock (a window lasts ``unit + 1`` seconds after the first);
* naive: one smtplib connection for everything; a 4xx is retried after 1 s, a refused
  connection is reopened after 1 s (a typical hand-written sender);
* mailctl: ``mailctl send`` (relay profile to the Postfix, 5 connections, 1,000 messages per
  connection, no configured rate), in-process, real clock, max-time 10 minutes.

For each: time to deliver everything, refusals (421 at connect + 4xx replies, from Postfix's
own log), messages per connection. Targets from issue #11 are checked at the end.

One more row puts an unlimited Postfix a 10 ms round trip away, behind a delay line (bench
code: each chunk held 5 ms each way): there the round trips a sender spends per message
decide (PIPELINING, connections), not this machine's CPU.

Rows are functions in ``ROWS`` (``Context`` -> ``Measured``); another bench module adds one by
appending to it, as bench/reputation_bench.py's reputation sim does below.

Run by hand:  python bench/receivers_bench.py [SCALE]   (SCALE 1.0 = the issue's sizes)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import random
import smtplib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reputation_bench  # noqa: E402  (bench/ is this script's own directory on sys.path)

from mailctl.cli import run as mailctl  # noqa: E402
from tests.helpers.postfix import (  # noqa: E402
    Receiver,
    have_postgrey,
    postfix_receiver,
    postgrey_server,
)
from tests.helpers.workspace import postfix_workspace  # noqa: E402

DELAY_MS = 5  # each way, for the far-away row: a 10 ms round trip


@dataclass
class Result:
    """One sender's figures on one row."""

    seconds: float
    refusals: int
    per_connection: float
    delivered: int
    loop_seconds: float | None = None  # mailctl: the send loop alone (without start-up)
    inbox: str = ""  # the share placed in the inbox, where a row measures it


@dataclass
class Measured:
    """One row of the table: the optimum, the naive loop and mailctl on one receiver."""

    name: str
    messages: int
    optimum: Result
    naive: Result
    mailctl: Result
    targets: list[str]  # targets this row missed (empty: all met)


@dataclass
class Context:
    """What every row function gets: the scale and the unlimited per-message time."""

    scale: float
    messages: int  # the 1,000 at scale 1
    base: float  # seconds per message on one connection to an unlimited Postfix


@dataclass
class Row:
    name: str
    messages: int
    settings: dict[str, int | str]
    optimum: Callable[[int, float], float]  # (messages, unlimited seconds) -> seconds
    policy_delay: int | None = None
    optimum_refusals: int = 0
    optimum_per_connection: float | None = None  # None: all on one connection
    delay_ms: int = 0  # each way, on the receiver's port (tc netem): a receiver far away


def refusals(receiver: Receiver) -> int:
    return receiver.refused_connections + receiver.count(r"NOQUEUE: reject: (?:RCPT|MAIL)")


def measure(receiver: Receiver, start_log: int, seconds: float) -> Result:
    log = receiver.log[start_log:]
    refused = log.count("limit exceeded") + log.count("NOQUEUE: reject")
    connections = log.count("]: connect from") - log.count("limit exceeded")
    delivered = log.count("status=sent ")
    return Result(seconds, refused, delivered / max(1, connections), delivered)


def naive(port: int, messages: int, deadline: float = 600.0) -> float:
    start = time.monotonic()
    client: smtplib.SMTP | None = None
    i = 0
    while i < messages and time.monotonic() - start < deadline:
        if client is None:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            except (smtplib.SMTPException, OSError):
                client = None
                time.sleep(1.0)
                continue
        try:
            client.sendmail(
                "news@example.com",
                [f"user{i}@example.com"],
                f"Subject: Hello\r\n\r\nHi {i}\r\n",
            )
            i += 1
        except smtplib.SMTPRecipientsRefused:
            time.sleep(1.0)
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                client = None
            time.sleep(1.0)
        except (smtplib.SMTPException, OSError):
            client = None
            time.sleep(1.0)
    if client is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
    return time.monotonic() - start


def run_mailctl(port: int, messages: int) -> tuple[float, dict]:
    ws = postfix_workspace(Path(tempfile.mkdtemp(prefix="rb")), port, messages, connections=5)
    out = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = mailctl(["--db", str(ws / "m.db"), "--profiles", str(ws / "profiles.yaml"),
                        "send", str(ws / "c.yaml"), "--json", "--max-time", "10m"])  # fmt: skip
    seconds = time.monotonic() - start
    assert code == 0, out.getvalue()
    return seconds, json.loads(out.getvalue())


class DelayLine:
    """A TCP relay on 127.0.0.1 that holds every chunk ``delay`` seconds in each direction,
    in order, before passing it on: a receiver that far away, for the far-away row. Bench
    code, in its own thread; the receiver behind it is the real Postfix. (Linux's netem
    would do it in the kernel, but this machine's kernel has no netem.)"""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> DelayLine:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pass_on() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        passing = asyncio.create_task(pass_on())
        try:
            while True:
                data = await source.read(1 << 16)
                held.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await passing
        finally:
            passing.cancel()


@contextlib.contextmanager
def receiver_for(row: Row) -> Iterator[Receiver]:
    if row.policy_delay is None:
        with postfix_receiver(**row.settings) as receiver:  # type: ignore[arg-type]
            if row.delay_ms:
                with DelayLine(receiver.port, row.delay_ms / 1000) as line:
                    yield replace(receiver, port=line.port)
            else:
                yield receiver
    else:
        with (
            postgrey_server(delay=row.policy_delay) as policy,
            postfix_receiver(policy_port=policy) as receiver,
        ):
            yield receiver


def unlimited_seconds(messages: int) -> float:
    """The naive loop's seconds for `messages` to a Postfix without limits. mailctl sends a
    few there first, untimed: every row then compares warm with warm (the naive loop's
    smtplib is imported before any row too). A cold `mailctl send` process is timed by
    bench/startup_bench.py."""
    with postfix_receiver() as receiver:
        run_mailctl(receiver.port, 20)
        return naive(receiver.port, messages)


def start_at(phase: float) -> None:
    """Wait until the wall clock is ``phase`` (0 to 1) into a second. anvil counts in whole
    seconds: where in its second a sender's first message lands moves the end of its first
    window by up to a second. A fresh Postfix is ready at much the same point of a second
    each time, so without this every sender would start there, a systematic head start or
    handicap that has nothing to do with how it sends."""
    time.sleep((phase - time.time()) % 1.0)


def postfix_row(row: Row, ctx: Context) -> Measured:
    """Naive and mailctl against a fresh receiver each, beside the row's optimum. Both
    start at the same point of a second, drawn per row (`start_at`)."""
    phase = random.Random(row.name).random()
    with receiver_for(row) as receiver:
        mark = len(receiver.log)
        start_at(phase)
        naive_s = naive(receiver.port, row.messages)
        naive_r = measure(receiver, mark, naive_s)
    with receiver_for(row) as receiver:
        start_at(phase)
        seconds, summary = run_mailctl(receiver.port, row.messages)
        ours = measure(receiver, 0, seconds)
        ours.loop_seconds = float(summary.get("elapsed") or seconds)
    optimum = Result(
        row.optimum(row.messages, ctx.base),
        row.optimum_refusals,
        row.optimum_per_connection or row.messages,
        row.messages,
    )
    missed: list[str] = []
    ratio = ours.seconds / max(optimum.seconds, 1e-9)
    if ours.delivered != row.messages or summary["remaining"]:
        missed.append(f"{ours.delivered}/{row.messages} delivered")
    if ours.seconds > naive_r.seconds:
        missed.append(f"slower than the naive loop ({ours.seconds:.1f} > {naive_r.seconds:.1f} s)")
    if ours.refusals > naive_r.refusals:
        missed.append(f"more refusals than the naive loop ({ours.refusals} > {naive_r.refusals})")
    if row.policy_delay is None and not row.delay_ms:
        if ours.refusals > max(5, 0.02 * row.messages):
            missed.append(f"{ours.refusals} refusals (target <= 2% and 5 per episode)")
        if ratio > 1.25:
            missed.append(f"{ratio:.2f}x the optimum (target 1.25x)")
    if row.name.startswith("Postfix conn rate") and row.messages >= 1000:
        if ours.seconds > 120 or ours.refusals > 3:
            missed.append("1,000 in 2 min with <= 3 refused connections")
    return Measured(row.name, row.messages, optimum, naive_r, ours, missed)


def postfix_rows(ctx: Context) -> list[Row]:
    n = ctx.messages

    def fixed(count: int, base: float) -> float:
        return count * base

    def rate(limit: int, unit: float) -> Callable[[int, float], float]:
        # `limit` per `unit` as anvil counts it: its clock is whole seconds and a count
        # starts over once ``start + unit < now`` (anvil.c), so after the first window
        # (``unit`` at best, begun just before a second turns) each lasts ``unit + 1``
        # seconds whoever sends. The last batch then goes at full speed.
        def seconds(count: int, base: float) -> float:
            windows = math.ceil(count / limit)
            if windows <= 1:
                return count * base
            last = count - (windows - 1) * limit
            return unit + (windows - 2) * (unit + 1) + last * base

        return seconds

    rows = [
        Row("Postfix conn rate 2/min", n,
            {"time_unit": "60s", "smtpd_client_connection_rate_limit": 2}, fixed),
        Row("Postfix conn count 2", n,
            {"smtpd_client_connection_count_limit": 2}, fixed),
        Row("Postfix msg rate 100/5s", n // 2,
            {"time_unit": "5s", "smtpd_client_message_rate_limit": 100}, rate(100, 5)),
        Row("Postfix rcpt rate 100/5s", n // 2,
            {"time_unit": "5s", "smtpd_client_recipient_rate_limit": 100}, rate(100, 5)),
    ]  # fmt: skip
    # Not one of the rows: an unlimited Postfix a 10 ms round trip away (DelayLine),
    # where the round trips a sender spends per message decide. The optimum is the profile's
    # 5 connections, each with two round trips to open (banner, EHLO) and, pipelined, one a
    # message once the next message's commands follow each text (two for the first);
    # only "never worse than the naive loop" is a target.
    rtt = 2 * DELAY_MS / 1000
    rows.append(
        Row(f"Postfix {2 * DELAY_MS} ms away", n // 5, {},
            lambda c, base: 2 * rtt + (math.ceil(c / 5) + 1) * rtt + c * base,
            delay_ms=DELAY_MS, optimum_per_connection=n // 25)
    )  # fmt: skip
    if have_postgrey():
        # Greylisting refuses every new (client, sender, recipient) once, whoever sends.
        rows.append(
            Row("postgrey (3 s)", max(10, n // 20), {}, lambda c, base: 3 + c * base,
                policy_delay=3, optimum_refusals=max(10, n // 20))
        )  # fmt: skip
    return rows


def _postfix_row_fn(index: int) -> RowFn:
    def run_row(ctx: Context) -> Measured:
        return postfix_row(postfix_rows(ctx)[index], ctx)

    return run_row


RowFn = Callable[[Context], Measured]
"""A row of the table: runs its receiver and returns its figures."""

# The rows, in order. Another bench module adds its own row by appending a `RowFn` here
# (``ROWS.append(reputation_row)``), e.g. bench/reputation_bench.py's reputation sim.
ROWS: list[RowFn] = [_postfix_row_fn(i) for i in range(5 + have_postgrey())]

REPUTATION_DETAIL: list[reputation_bench.BenchRow] = []  # printed in full under the table


def _from_reputation(result: reputation_bench.Result) -> Result:
    """A reputation-sim sender in this table's cells; a sender that never delivered every
    valid recipient (blocked) shows an infinite time."""
    return Result(
        math.inf if result.seconds is None else result.seconds,
        result.refusals,
        result.per_connection,
        result.delivered,
        inbox=f"{result.inbox_share:.1%}",
    )


def reputation_row(ctx: Context) -> Measured:
    """The reputation sim: two campaigns to one list with 1% unknown users; the optimum
    column holds the paced sender (bench/reputation_bench.py explains its rate)."""
    (row,) = reputation_bench.reputation_rows(ctx.messages)
    REPUTATION_DETAIL.append(row)
    return Measured(
        row.name,
        row.messages,
        _from_reputation(row.paced),
        _from_reputation(row.naive),
        _from_reputation(row.mailctl),
        row.failures,
    )


ROWS.append(reputation_row)


def _cells(result: Result) -> str:
    return f"{result.seconds:>7.1f} {result.refusals:>5} {result.per_connection:>6.0f}"


def print_table(measured: list[Measured]) -> None:
    header = (
        f"{'receiver':26} {'msgs':>5} | {'optimum':^20} | {'naive loop':^20} | "
        f"{'mailctl':^28} | {'÷opt':>5} {'inbox':>6}"
    )
    sub = (
        f"{'':26} {'':>5} | {'time s':>7} {'4xx':>5} {'m/conn':>6} | "
        f"{'time s':>7} {'4xx':>5} {'m/conn':>6} | "
        f"{'time s':>7} {'4xx':>5} {'m/conn':>6} {'loop s':>7} | {'':>5} {'':>6}"
    )
    print(header)
    print(sub)
    print("-" * len(sub))
    for m in measured:
        ratio = m.mailctl.seconds / max(m.optimum.seconds, 1e-9)
        loop = m.mailctl.loop_seconds
        print(
            f"{m.name:26} {m.messages:>5} | {_cells(m.optimum)} | {_cells(m.naive)} | "
            f"{_cells(m.mailctl)} {'' if loop is None else f'{loop:7.1f}':>7} | "
            f"{ratio:>4.2f}x {m.mailctl.inbox:>6}"
        )


def main() -> int:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    n = max(50, int(1000 * scale))
    base = unlimited_seconds(n) / n  # seconds per message on one connection, no limit
    ctx = Context(scale=scale, messages=n, base=base)
    measured = [row(ctx) for row in ROWS]
    print_table(measured)
    print()
    print("4xx: refusals (421 at connect and 4xx replies, from the receiver's own log);")
    print("loop s: mailctl's send loop alone (time s includes loading the campaign and its")
    print("        CSV; modules are imported before the first row, see bench/startup_bench.py).")
    print("Both senders of a Postfix row start at the same point of a second, drawn per row:")
    print("        anvil counts in whole seconds (start_at).")
    if REPUTATION_DETAIL:
        print("reputation sim: the optimum column is the paced sender; inf = never delivered all.")
        print(reputation_bench.table(REPUTATION_DETAIL))
    missed = [f"{m.name}: {what}" for m in measured for what in m.targets]
    for line in missed:
        print("MISSED:", line)
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
