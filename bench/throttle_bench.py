"""Throttle benchmark: a 10,000-message campaign when one provider rate-limits, vs when none does.

Three simulated providers (Google, Microsoft, Yahoo presets) on 127.0.0.1, direct-to-MX from
two loopback source IPs (127.0.0.2, 127.0.0.3), recipient domains mapped with ``mx_override``.
The same campaign runs twice in one process, each time into a fresh database and fresh sims:

1. unthrottled: no sim throttles anything;
2. throttled: the Google sim answers ``421 4.7.28`` (UnsolicitedRateLimitError) once a source
   IP passes RATE messages in 60 s (default 100/min).

Printed: wall time of each run; for the throttled run, how many 4.7.28 replies each lane
received before it paused and in total (from the ``replies`` and ``lane_events`` tables), the
pause episodes, and when the last Microsoft/Yahoo message and the last Google message went out.

Clock: mailctl's rule for 4.7.28 pauses the lane 10 minutes, then allows 10/min for 30 minutes,
then grows additively from the 10/min that held; delivering ~3,300 Gmail messages that way
takes hours. So both runs use a *jumping* clock, injected into the engine and into the sims:
it is the real clock plus an offset, and a sleep longer than JUMP seconds adds to the offset
instead of waiting (a FakeClock for the long waits only). Everything that happens at full speed
(the other lanes, the first minute of Google) runs in real time, so its wall time is real; the
throttled lane's pauses and slow periods are counted in simulated time. The unthrottled run
never sleeps long, so for it simulated time equals wall time.

Run by hand:  python bench/throttle_bench.py [MESSAGES] [RATE]
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.engine import Engine
from mailctl.delivery.record import RunSummary
from mailctl.sim.behaviours import SimConfig, Throttle, preset
from mailctl.sim.replies import GOOGLE_RATE_LIMITED
from mailctl.sim.servers import ThreadedSimServer
from mailctl.store.sqlite import SqliteStore

DOMAINS = {"google": "gmail.example", "microsoft": "outlook.example", "yahoo": "yahoo.example"}
JUMP = 1.0  # sleeps longer than this jump the clock instead of waiting


class JumpingClock:
    """Real time plus an offset; long sleeps move the offset instead of waiting."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.jumped = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        if seconds > JUMP:
            target = self.now() + seconds
            await asyncio.sleep(0)
            # Concurrent sleepers overlap: never move past the latest of their targets.
            step = max(0.0, target - self.now())
            self.offset += step
            self.jumped += step
        else:
            await asyncio.sleep(max(0.0, seconds))


def write_workspace(ws: Path, sims: dict[str, ThreadedSimServer], messages: int) -> None:
    overrides = "\n".join(
        f'      {domain}: "{provider}@127.0.0.1:{sims[provider].port}"'
        for provider, domain in DOMAINS.items()
    )
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            """\
            default_profile: direct
            profiles:
              direct:
                transport: direct
                dns: false
                helo: mta.example.com
                pools:
                  marketing: [127.0.0.2, 127.0.0.3]
                retry: [5m, 10m, 20m]
                max_age: 3d
                # The sims speak plain SMTP (TLS costs CPU here, not what is measured).
                rules: {limits: {google: {tls: opportunistic}}}
            """
        )
        + f"    mx_override:\n{overrides}\n"
    )
    domains = list(DOMAINS.values())
    with (ws / "list.csv").open("w") as f:
        f.write("email,first_name\n")
        for i in range(messages):
            f.write(f"user{i}@{domains[i % 3]},User{i}\n")
    (ws / "c.yaml").write_text(
        textwrap.dedent(
            """\
            name: bench
            from: "News <news@example.com>"
            subject: "Hello {{ first_name }}"
            text: "Hi {{ first_name }}, this month's news. Unsubscribe: {{ unsubscribe_url }}"
            recipients: list.csv
            unsubscribe: {url: "https://example.com/u/{{ email | urlencode }}"}
            """
        )
    )


def run_once(messages: int, rate: int | None) -> dict[str, object]:
    clock = JumpingClock()
    sims: dict[str, ThreadedSimServer] = {}
    for provider in DOMAINS:
        throttle = None
        if provider == "google" and rate is not None:
            throttle = Throttle(max_messages=rate, window=60.0, reply=GOOGLE_RATE_LIMITED)
        behaviour = preset(provider, throttle=throttle, max_connections=None)
        sims[provider] = ThreadedSimServer(SimConfig(behaviour), clock=clock.now)
        sims[provider].start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ws = Path(tmp)
            write_workspace(ws, sims, messages)
            profiles = load_profiles(ws / "profiles.yaml")
            with SqliteStore.open(ws / "m.db") as store:
                prepared = prepare(store, ws / "c.yaml", profiles, now=clock.now())
                start_sim = clock.now()
                start_wall = time.monotonic()
                run_id = store.start_run(1, "bench", start_sim)
                engine = Engine(store, [prepared.job], run_id=run_id, clock=clock)
                # Wait for deferred mail (as `send --max-time 1d` would): deliver everything.
                from mailctl.delivery.context import SendOptions

                engine.options = SendOptions(max_time=86400)
                summary: RunSummary = asyncio.run(engine.run())
                wall = time.monotonic() - start_wall
            conn = sqlite3.connect(ws / "m.db")
            result = measure(conn, start_sim)
            conn.close()
        result.update(
            summary=summary,
            wall=wall,
            simulated=clock.now() - start_sim,
            jumped=clock.jumped,
            delivered={p: len(s.deliveries) for p, s in sims.items()},
        )
        return result
    finally:
        for sim in sims.values():
            sim.stop()


def measure(conn: sqlite3.Connection, start: float) -> dict[str, object]:
    last = dict(
        conn.execute(
            "SELECT provider, max(sent_at) - ? FROM messages"
            " WHERE state = 'sent' GROUP BY provider",
            (start,),
        ).fetchall()
    )
    lanes = {}
    for ip, provider in conn.execute(
        "SELECT DISTINCT ip, provider FROM replies WHERE text LIKE '%4.7.28%' ORDER BY 1, 2"
    ):
        events = [
            at
            for (at,) in conn.execute(
                "SELECT at FROM lane_events WHERE ip = ? AND provider = ? ORDER BY at",
                (ip, provider),
            )
        ]
        replies = [
            at
            for (at,) in conn.execute(
                "SELECT at FROM replies WHERE ip = ? AND provider = ? AND text LIKE '%4.7.28%' "
                "ORDER BY at",
                (ip, provider),
            )
        ]
        # An episode: lane events less than a minute apart (replies of in-flight messages).
        episodes: list[float] = []
        for at in events:
            if not episodes or at - episodes[-1] > 60:
                episodes.append(at)
        first_pause = events[0] if events else float("inf")
        lanes[(ip, provider)] = {
            # The triggering reply is stamped a few microseconds after the lane event.
            "before_pause": sum(1 for at in replies if at <= first_pause + 0.005),
            "total": len(replies),
            "episodes": [round((at - start) / 60, 1) for at in episodes],
            "lane_events": len(events),
        }
    return {"last_sent": last, "lanes": lanes}


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    print(f"{messages} messages to 3 simulated providers from 2 IPs (direct, mx_override)")
    plain = run_once(messages, None)
    s = plain["summary"]
    print(
        f"\nunthrottled: sent {s.sent}, remaining {s.remaining}, wall {plain['wall']:.1f} s "
        f"({s.sent / plain['wall']:.0f} msg/s)"
    )
    print(
        "  last message per provider (s after start): "
        + ", ".join(f"{p} {t:.1f}" for p, t in sorted(plain["last_sent"].items()))
    )

    throttled = run_once(messages, rate)
    s = throttled["summary"]
    print(
        f"\nthrottled (Google: 421 4.7.28 past {rate}/min per IP): sent {s.sent}, "
        f"deferred-then-retried {s.deferred}, remaining {s.remaining}, stop {s.stop_reason}"
    )
    print(
        f"  wall {throttled['wall']:.1f} s; simulated {throttled['simulated'] / 60:.1f} min "
        f"(of which {throttled['jumped'] / 60:.1f} min jumped over)"
    )
    print(
        "  last message per provider (min after start): "
        + ", ".join(f"{p} {t / 60:.2f}" for p, t in sorted(throttled["last_sent"].items()))
    )
    for (ip, provider), lane in throttled["lanes"].items():
        print(
            f"  lane {ip} -> {provider}: {lane['before_pause']} throttle replies before it "
            f"paused, {lane['total']} in all; pauses at minute {lane['episodes']} "
            f"({lane['lane_events']} lane_events rows)"
        )
    others = max(t for p, t in throttled["last_sent"].items() if p != "google")
    plain_others = max(t for p, t in plain["last_sent"].items() if p != "google")
    print(
        f"\nMicrosoft+Yahoo done after {others:.1f} s throttled vs {plain_others:.1f} s "
        f"unthrottled; Google done after {throttled['last_sent']['google'] / 60:.1f} min vs "
        f"{plain['last_sent']['google']:.1f} s"
    )


if __name__ == "__main__":
    main()
