"""Reputation benchmark: two campaigns to the same list into a receiver that judges the sending
IP by its reputation (``mailctl sim --provider reputation``, mailctl/sim/reputation.py).

The list has RECIPIENTS addresses, 1% of them unknown to the receiver (every 100th,
``user99.old@…``, answered ``550 5.1.1 … User unknown`` by a rule of this bench's sim: unknown
addresses look like the others, so they are spread through the list in any order; mailctl
sends a list in address order, and ``unknown-…`` names would all come first). Two campaigns
go to it one after the other, the way a newsletter goes out twice. Each sender gets a fresh
simulated provider (a new IP: reputation 50/100) on 127.0.0.1, real time, and its own
loopback source address:

* naive: one smtplib connection for everything, as fast as the receiver answers; a 4xx is
  retried after 1 s, a 421 reconnects after 1 s, a 5xx gives that recipient up (a typical
  hand-written sender; it keeps no suppression list);
* paced: one smtplib connection at a fixed rate, the receiver's documented new-IP rate (what
  a careful operator who read the provider's guidance would configure; faster risks the
  throttle, slower only wastes time; it cannot know the rate grows with reputation); same
  handling of replies;
* mailctl: ``mailctl send`` in a subprocess, as a user runs it, with a direct profile whose
  ``mx_override`` points at the sim and no rate configured (the default ceilings): mailctl
  has to learn the receiver's rate. Each campaign is run with ``--max-time``; if a run ends
  with mail still deferred, it is run again as cron would, until everything is delivered.

The receiver's new-IP rate is scaled with the list (RATE_PER_RECIPIENT per minute per
recipient) so that the paced sender needs about 100 s whatever the size: the run stays short.
(Clean mail earns reputation per new-IP window of mail, so the scale does not change how fast
reputation is earned; the throttle penalty is per reply, as a receiver sees it.)

Printed per sender: time until every valid recipient of both campaigns was accepted (from the
sim's records), refusals (4xx/421 answers: throttles and others), block replies (5xx for the
IP), messages per connection, and the share of valid recipients' messages placed in the inbox.
Targets from issue #11: mailctl >= 99% in the inbox, not slower than the paced sender by more
than 2x, never worse than the naive loop on refusals, nor on time where the naive loop got its
mail delivered (when the receiver blocked the naive loop, it never delivers everything: its
time is not comparable and mailctl is ahead by definition; the table says so).

Run by hand:  python bench/reputation_bench.py [RECIPIENTS]   (default 1,000; the issue's
example is 2,000)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailctl.sim.behaviours import AddressRule, SimConfig, preset  # noqa: E402
from mailctl.sim.events import Delivery  # noqa: E402
from mailctl.sim.replies import GENERIC_USER_UNKNOWN  # noqa: E402
from mailctl.sim.reputation import ReputationModel  # noqa: E402
from mailctl.sim.servers import ThreadedSimServer  # noqa: E402
from tests.helpers.workspace import reputation_workspace  # noqa: E402

DOMAIN = "rep.example"
RATE_PER_RECIPIENT = 1.2  # new-IP rate per minute per list recipient: paced needs ~100 s
CAMPAIGNS = ("spring", "summer")
NAIVE_DEADLINE = 600.0
MAILCTL_DEADLINE = 900.0


@dataclass
class Result:
    """One sender's figures (the same fields as receivers_bench's, plus placement)."""

    sender: str
    seconds: float | None  # until every valid recipient got both messages; None: never
    refusals: int  # 4xx/421 answers: throttles and others
    blocked: int  # 5xx answers about the sending IP
    per_connection: float
    delivered: int
    inbox: int
    expected: int  # valid recipients x campaigns
    reputation: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def inbox_share(self) -> float:
        return self.inbox / max(1, self.expected)


@dataclass
class BenchRow:
    """The reputation-sim row: paced (in the optimum column), naive and mailctl."""

    name: str
    messages: int
    paced: Result
    naive: Result
    mailctl: Result
    failures: list[str] = field(default_factory=list)


UNKNOWN = AddressRule(re.compile(r"\.old@"), GENERIC_USER_UNKNOWN)


def recipients(count: int) -> list[str]:
    return [f"user{i}.old@{DOMAIN}" if i % 100 == 99 else f"user{i}@{DOMAIN}" for i in range(count)]


def is_valid(address: str) -> bool:
    return ".old@" not in address


def model_for(count: int) -> ReputationModel:
    return ReputationModel(new_ip_rate=max(60.0, RATE_PER_RECIPIENT * count), window=60.0)


def body(campaign: str, rcpt: str) -> str:
    return (
        f"From: News <news@example.com>\r\nTo: <{rcpt}>\r\nSubject: {campaign} news\r\n"
        f"Message-ID: <{campaign}.{rcpt}>\r\n\r\nHello {rcpt}, this season's news.\r\n"
    )


def smtplib_sender(
    port: int, source: str, addresses: list[str], gap: float, deadline: float
) -> None:
    """Both campaigns over one connection (reopened after 421 or a drop); ``gap`` seconds
    between messages (0: as fast as the receiver answers)."""
    start = time.monotonic()
    client: smtplib.SMTP | None = None
    next_at = time.monotonic()
    for campaign in CAMPAIGNS:
        i = 0
        while i < len(addresses) and time.monotonic() - start < deadline:
            if client is None:
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
                except (smtplib.SMTPException, OSError):
                    client = None
                    time.sleep(1.0)
                    continue
            if gap:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + gap, time.monotonic())
            rcpt = addresses[i]
            try:
                client.sendmail("news@example.com", [rcpt], body(campaign, rcpt))
                i += 1
            except smtplib.SMTPRecipientsRefused as exc:
                code = exc.recipients[rcpt][0]
                if code >= 500:
                    i += 1  # given up: unknown user, or the IP is blocked
                else:
                    time.sleep(1.0)
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code == 421:
                    client = None
                if exc.smtp_code >= 500:
                    i += 1
                else:
                    time.sleep(1.0)
            except (smtplib.SMTPException, OSError):
                client = None
                time.sleep(1.0)
    if client is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


def mailctl_sender(port: int, source: str, addresses: list[str], deadline: float) -> list[str]:
    """Each campaign with ``mailctl send``; rerun (as cron would) while mail is deferred."""
    notes: list[str] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="repbench") as tmp:
        ws = Path(tmp)
        reputation_workspace(ws, port, addresses, source=source, domain=DOMAIN, campaigns=CAMPAIGNS)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        base = [sys.executable, "-m", "mailctl", "--db", str(ws / "m.db"), "--profiles"]
        base += [str(ws / "profiles.yaml")]
        for campaign in CAMPAIGNS:
            runs = 0
            while time.monotonic() - start < deadline:
                runs += 1
                result = subprocess.run(
                    [*base, "send", str(ws / f"{campaign}.yaml"), "--json", "--max-time", "5m"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=deadline,
                )
                if result.returncode != 0:
                    notes.append(f"{campaign}: exit {result.returncode}: {result.stderr[-300:]}")
                    break
                summary = json.loads(result.stdout)
                if not summary.get("remaining"):
                    break
                time.sleep(5.0)  # the next cron run
            if runs > 1:
                notes.append(f"{campaign}: {runs} runs of mailctl send")
    return notes


def measure(
    sender: str, sim: ThreadedSimServer, start: float, valid: int, notes: list[str]
) -> Result:
    deliveries: list[Delivery] = sim.deliveries
    stats = sim.stats()
    refusals = [r for r in sim.refusals if r.code is None or r.code < 500]
    blocked = sum(s.blocked for s in stats.values())
    expected = valid * len(CAMPAIGNS)
    done = len(deliveries) >= expected
    seconds = max(d.time for d in deliveries) - start if done and deliveries else None
    inbox = sum(1 for d in deliveries if d.folder == "inbox")
    reputations = [s.reputation for s in stats.values() if s.reputation is not None]
    return Result(
        sender,
        seconds,
        len(refusals),
        blocked,
        len(deliveries) / max(1, sim.connection_count),
        len(deliveries),
        inbox,
        expected,
        min(reputations) if reputations else None,
        notes,
    )


def run_sender(
    name: str, addresses: list[str], source: str, send: Callable[[int], list[str] | None]
) -> Result:
    valid = sum(1 for a in addresses if is_valid(a))
    behaviour = preset("reputation", reputation=model_for(len(addresses)), rcpt_rules=(UNKNOWN,))
    sim = ThreadedSimServer(SimConfig(behaviour))
    sim.start()
    try:
        start = time.time()
        notes = send(sim.port) or []
        time.sleep(0.2)  # the last replies' bookkeeping on the sim's thread
        if sim.errors:
            notes.append(f"sim errors: {sim.errors}")
        return measure(name, sim, start, valid, notes)
    finally:
        sim.stop()


def reputation_rows(count: int = 1000) -> list[BenchRow]:
    """The row for bench/receivers_bench.py's table (and this script's own)."""
    addresses = recipients(count)
    model = model_for(count)
    gap = model.window / model.new_ip_rate
    paced = run_sender(
        "paced",
        addresses,
        "127.0.0.3",
        lambda port: smtplib_sender(port, "127.0.0.3", addresses, gap, NAIVE_DEADLINE),
    )
    naive = run_sender(
        "naive",
        addresses,
        "127.0.0.2",
        lambda port: smtplib_sender(port, "127.0.0.2", addresses, 0.0, NAIVE_DEADLINE),
    )
    ours = run_sender(
        "mailctl",
        addresses,
        "127.0.0.4",
        lambda port: mailctl_sender(port, "127.0.0.4", addresses, MAILCTL_DEADLINE),
    )
    row = BenchRow(
        f"reputation sim ({model.new_ip_rate:g}/min new IP)", 2 * count, paced, naive, ours
    )
    row.failures = check(row)
    return [row]


def check(row: BenchRow) -> list[str]:
    failures: list[str] = []
    ours, paced, naive = row.mailctl, row.paced, row.naive
    if ours.inbox_share < 0.99:
        failures.append(f"mailctl inbox share {ours.inbox_share:.1%} (target >= 99%)")
    if ours.seconds is None:
        failures.append("mailctl did not deliver everything")
    elif paced.seconds is not None and ours.seconds > 2 * paced.seconds:
        failures.append(f"mailctl {ours.seconds / paced.seconds:.2f}x the paced sender (target 2x)")
    if ours.refusals > naive.refusals:
        failures.append(f"mailctl refusals {ours.refusals} > naive {naive.refusals}")
    if naive.seconds is not None and (ours.seconds is None or ours.seconds > naive.seconds):
        failures.append("mailctl slower than the naive loop, which delivered everything")
    return failures


def _fmt_seconds(result: Result) -> str:
    if result.seconds is None:
        return f"never ({result.expected - result.delivered} undelivered)"
    return f"{result.seconds:.1f}"


def table(rows: list[BenchRow]) -> str:
    header = (
        f"{'sender':8} | {'time s':>24} | {'refused':>7} | {'blocked':>7} | {'msg/conn':>8} | "
        f"{'inbox':>6} | {'spam':>5} | {'reputation':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name}: {row.messages} messages (2 campaigns x list, 1% unknown)")
        for r in (row.naive, row.paced, row.mailctl):
            reputation = "" if r.reputation is None else f"{r.reputation:.1f}"
            lines.append(
                f"{r.sender:8} | {_fmt_seconds(r):>24} | {r.refusals:>7} | {r.blocked:>7} | "
                f"{r.per_connection:>8.0f} | {r.inbox_share:>6.1%} | "
                f"{r.delivered - r.inbox:>5} | {reputation:>10}"
            )
            lines.extend(f"{'':8}   note: {note}" for note in r.notes)
        if row.mailctl.seconds is not None and row.paced.seconds:
            lines.append(f"mailctl / paced: {row.mailctl.seconds / row.paced.seconds:.2f}x")
        if row.naive.seconds is None:
            lines.append(
                "naive never delivered everything (throttled into spam and a block): its time "
                "is not comparable; mailctl is compared with it on refusals and inbox share"
            )
    return "\n".join(lines)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = reputation_rows(count)
    print(table(rows))
    failures = [failure for row in rows for failure in row.failures]
    for failure in failures:
        print("MISSED:", failure)
    print("all targets met" if not failures else f"{len(failures)} target(s) missed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
