"""Adaptive shaping against real receivers: a private Postfix with anvil limits, postgrey.

Each test starts its own Postfix (tests/helpers/postfix.py) on a free loopback port with a
throwaway config directory, sends with the CLI on the real clock, and reads what happened
from Postfix's own log and from mailctl's lane state. Figures (time, ratios) live in
bench/receivers_bench.py; these tests assert behaviour: connections reused, concurrency
lowered on connect refusals, the rate cut from the observed rate, the learned state kept
across runs, and a bounded number of 4xx per throttle episode.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from mailctl.replies.rules import default_rules
from mailctl.reputation.lane_state import LaneState
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.sqlite import SqliteStore
from tests.helpers.postfix import have_postfix, have_postgrey, postfix_receiver, postgrey_server
from tests.helpers.workspace import cli, postfix_workspace

needs_postfix = pytest.mark.skipif(not have_postfix(), reason="Postfix is not installed")

T0 = 1_800_000_000.0
TOO_MUCH_MAIL = "450 4.7.1 Error: too much mail from 192.0.2.1"


def send(ws: Path, capsys: pytest.CaptureFixture[str], max_time: str = "60s") -> dict:
    code = cli(ws, "send", str(ws / "c.yaml"), "--json", "--max-time", max_time)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def lanes(ws: Path) -> list[dict]:
    conn = sqlite3.connect(ws / "m.db")
    conn.row_factory = sqlite3.Row
    return [dict(row) for row in conn.execute("SELECT * FROM lanes ORDER BY provider")]


def replies(ws: Path, pattern: str) -> int:
    conn = sqlite3.connect(ws / "m.db")
    return int(
        conn.execute("SELECT count(*) FROM replies WHERE text LIKE ?", (pattern,)).fetchone()[0]
    )


@needs_postfix
def test_a_connection_rate_limit_is_met_by_reusing_few_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with postfix_receiver(time_unit="60s", smtpd_client_connection_rate_limit=2) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=120, connections=5)
        result = send(ws, capsys)
        assert (result["sent"], result["remaining"]) == (120, 0)
        assert postfix.settled_count("status=sent ", 120) == 120
        # Two connections fit in the limit; a third is refused at most once before the lane
        # keeps the two that held and reuses them.
        assert postfix.refused_connections <= 1
        assert postfix.connections <= 3
    relay = [lane for lane in lanes(ws) if lane["provider"].startswith("relay ")]
    if postfix.refused_connections:
        assert relay and relay[0]["learned_connections"] == 2


@needs_postfix
def test_connect_refusals_lower_concurrency_to_what_held_and_it_is_kept_for_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with postfix_receiver(smtpd_client_connection_count_limit=1) as postfix:
        # The slow start opens a second connection once the first has carried a few
        # messages (nearly every receiver takes two): this one refuses it.
        ws = postfix_workspace(tmp_path, postfix.port, rows=300, connections=6)
        first = send(ws, capsys)
        assert (first["sent"], first["remaining"]) == (300, 0)
        refused_first = postfix.refused_connections
        assert 1 <= refused_first <= 3
        (relay,) = [lane for lane in lanes(ws) if lane["provider"].startswith("relay ")]
        assert relay["learned_connections"] == 1
        assert "too many connections" in relay["learned_reason"]
        assert relay["learned_observed"] and "connection" in relay["learned_observed"]

        # The next run (a new campaign to the same receiver) starts from what was learned:
        # one connection, no refusal.
        (ws / "c.yaml").write_text((ws / "c.yaml").read_text().replace("news", "news2"))
        second = send(ws, capsys)
        assert (second["sent"], second["remaining"]) == (300, 0)
        assert postfix.refused_connections == refused_first
        assert postfix.settled_count("status=sent ", 600) == 600

    # `mailctl lanes` says what was learned and why: the reply, when, what was seen before.
    assert cli(ws, "lanes") == 0
    shown = capsys.readouterr().out
    line = next(line for line in shown.splitlines() if "learned" in line)
    assert line.startswith(f"{relay['ip']} -> {relay['provider']}: learned 1 connection at ")
    assert "too many connections from 127.0.0.1" in line
    assert "before it: " in line and "/min accepted over" in line
    assert cli(ws, "lanes", "--json") == 0
    (shown_relay,) = [
        lane
        for lane in json.loads(capsys.readouterr().out)
        if lane["provider"].startswith("relay ")
    ]
    assert shown_relay["learned"]["connections"] == 1
    assert shown_relay["limits"]["connections"] == 1


@needs_postfix
def test_a_connection_limit_the_slow_start_does_not_need_is_never_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A naive loop on one connection is never refused here; neither is mailctl: a third
    # connection is opened only after seconds of clean sending on two, and this list goes
    # out well before that.
    with postfix_receiver(smtpd_client_connection_count_limit=2) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=300, connections=6)
        result = send(ws, capsys)
        assert (result["sent"], result["remaining"]) == (300, 0)
        assert postfix.refused_connections == 0
        assert postfix.connections <= 2


@needs_postfix
@pytest.mark.parametrize(
    ("limit", "reply"),
    [
        ("smtpd_client_message_rate_limit", "too much mail"),
        ("smtpd_client_recipient_rate_limit", "too many recipients"),
    ],
)
def test_a_message_rate_limit_cuts_the_rate_from_what_was_accepted_without_hammering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str, reply: str
) -> None:
    with postfix_receiver(time_unit="3s", **{limit: 20}) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=100, connections=2)
        result = send(ws, capsys, max_time="90s")
        assert (result["sent"], result["remaining"]) == (100, 0)
        assert postfix.settled_count("status=sent ", 100) == 100
        # The connections are kept through every throttle: the waits are short, and a
        # message-rate signal says nothing against the connection.
        assert postfix.connections <= 2
    (lane,) = [lane for lane in lanes(ws) if lane["provider"] == "example.com"]
    # Cut from the observed acceptance rate: far below the ceiling (none here), near what
    # the receiver takes (20 per 3 s, counted in whole seconds: 200 to 400 a minute).
    assert lane["learned_rate"] is not None and 100 <= lane["learned_rate"] <= 450
    assert reply in lane["learned_reason"]
    assert "/min accepted" in lane["learned_observed"]
    refusals = replies(ws, f"%{reply}%")
    episodes = lane["throttled"]
    assert episodes >= 1
    # No hammering: a bounded number of 4xx per throttle episode; a window tried and
    # refused is one lone message, not one per connection.
    assert refusals <= 2 * episodes
    assert refusals <= 0.1 * 100


@pytest.mark.skipif(not (have_postfix() and have_postgrey()), reason="needs Postfix and postgrey")
def test_greylisting_by_postgrey_is_retried_after_its_delay_and_delivered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with postgrey_server(delay=2) as policy, postfix_receiver(policy_port=policy) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=20, connections=2)
        result = send(ws, capsys, max_time="60s")
        assert (result["sent"], result["remaining"]) == (20, 0)
        assert postfix.settled_count("status=sent ", 20) == 20
        greylisted = replies(ws, "%Greylisted%")
        assert 1 <= greylisted <= 20  # each recipient at most once: the retry honours the delay
        # After a run of refusals a session is closed and a new one opened later: Postfix
        # slows down (then hangs up on) sessions that collect errors.
        sessions = re.findall(r"disconnect from .* rcpt=(\d+)(?:/(\d+))?", postfix.log)
        assert sessions
        assert all(int(total or done) - int(done) <= 3 for done, total in sessions)


def test_the_rate_is_cut_from_the_observed_rate_not_the_ceiling() -> None:
    lane = Scheduler(default_rules(), rng=random.Random(1)).lane("192.0.2.1", "example.net")
    ceiling = lane.limits(T0).per_minute
    assert ceiling == 6000
    for i in range(100):  # 100 accepted over the last 50 seconds: 120/min
        lane.accepted(T0 + i * 0.5)
    now = T0 + 50
    event = lane.on_reply(TOO_MUCH_MAIL, 450, now, from_receiver=True, stage="mail")
    assert event.pauses_lane and event.retry_after is not None and event.retry_after < 3
    assert lane.state.learned_rate == pytest.approx(60, rel=0.05)  # half of 120, not of 6000
    assert "too much mail" in (lane.state.learned_reason or "")
    assert lane.limits(now + 5).per_minute == pytest.approx(60, rel=0.05)
    # While clean it adds back additively, never past the ceiling.
    t = now + 5
    rates = []
    for _ in range(30):
        t += 10
        lane.accepted(t)
        rates.append(lane.limits(t).per_minute or 0)
    assert rates == sorted(rates) and rates[-1] > 60
    assert all(b - a <= 12.5 for a, b in zip(rates, rates[1:], strict=False))


def test_a_connection_signal_leaves_the_message_rate_alone() -> None:
    lane = Scheduler(default_rules(), rng=random.Random(1)).lane("192.0.2.1", "example.net")
    for i in range(20):
        lane.accepted(T0 + i)
    lane.meter.opened(3)
    event = lane.on_reply(
        "421 4.7.0 sink.test Error: too many connections from 192.0.2.1",
        421,
        T0 + 20,
        from_receiver=True,
        stage="connect",
    )
    assert event.kind.value == "connections"
    assert lane.state.learned_connections == 3 and lane.state.learned_rate is None
    assert lane.limits(T0 + 20).per_minute == 6000 and lane.pause_wait(T0 + 20) == 0
    assert 0 < lane.connect_wait(T0 + 20) <= 2.2


def test_learned_state_relaxes_toward_the_ceiling_over_clean_hours() -> None:
    state = LaneState(
        ip="192.0.2.1",
        provider="example.net",
        learned_rate=100.0,
        learned_peak=200.0,
        learned_connections=2,
        learned_at=T0,
        learned_step_at=T0,
        learned_conn_at=T0,
    )
    lane = Scheduler(default_rules(), states=[state]).lane("192.0.2.1", "example.net")
    assert lane.limits(T0 + 1800).per_minute == 100  # not within the hour
    after = lane.limits(T0 + 2 * 3600 + 1)
    assert after.per_minute == pytest.approx(100 * 1.25**2)
    assert after.connections == 4


def test_a_receiver_counting_per_time_unit_is_met_at_its_window_with_few_refusals() -> None:
    # A receiver that counts per client over a fixed time unit, as Postfix's anvil does:
    # 50 per 5 s, the unit starting at the first message after the last one ended. Five
    # connections, each reply back 10 ms after its permit.
    lane = Scheduler(default_rules(), rng=random.Random(3)).lane("192.0.2.1", "example.net")
    limit, unit = 50, 5.0
    start, count = None, 0
    now, accepted, refused = T0, 0, 0
    in_flight: list[float] = []
    while accepted < 500 and now < T0 + 200:
        while in_flight and in_flight[0] <= now:
            sent_at = in_flight.pop(0)
            if start is None or sent_at - start >= unit:
                start, count = sent_at, 0
            count += 1
            if count <= limit:
                accepted += 1
                lane.accepted(now)
            else:
                refused += 1
                lane.on_reply(TOO_MUCH_MAIL, 450, now, from_receiver=True, stage="mail")
        if len(in_flight) < 5 and lane.admit(now) == 0:
            in_flight.append(now + 0.01)
            continue
        now += 0.005
    elapsed = now - T0
    assert accepted == 500
    # The optimum is 9 full units (45 s); it gets there within 25% ...
    assert elapsed <= 1.25 * 45
    # ... with few refusals: the first burst's few in flight, then one lone message for
    # each window tried and refused.
    assert refused <= 10
    rate = lane.state.learned_rate
    assert rate is not None and 0.8 * 600 <= rate <= 600
    assert lane.state.learned_peak is not None and lane.state.learned_peak > rate


def _drive(
    accept: Callable[[float], bool],
    messages: int,
    *,
    start: float = T0 + 0.37,
    contact: float | None = None,
) -> tuple[float, int, list[float]]:
    """A lane sending ``messages`` to a receiver (``accept(t)``: whether a message that
    arrives at t is taken), five connections, each reply back 10 ms after its permit; the
    first connection began at ``contact``. Returns the seconds it took, the refusals, and
    when each window's first accepted message went (one sent after a gap of more than a
    second)."""
    lane = Scheduler(default_rules(), rng=random.Random(3)).lane("192.0.2.1", "example.net")
    if contact is not None:
        lane.contacted(contact)
    now, accepted, refused = start, 0, 0
    in_flight: list[tuple[float, float, bool]] = []  # (reply at, sent at, after a gap)
    firsts: list[float] = []
    last_permit: float | None = None
    while accepted < messages and now < start + 300:
        while in_flight and in_flight[0][0] <= now:
            _, sent_at, after_gap = in_flight.pop(0)
            if accept(sent_at):
                accepted += 1
                lane.accepted(now)
                if after_gap:
                    firsts.append(sent_at)
            else:
                refused += 1
                lane.on_reply(TOO_MUCH_MAIL, 450, now, from_receiver=True, stage="mail")
        if len(in_flight) < 5 and lane.admit(now) == 0:
            gap = last_permit is not None and now - last_permit > 1.0
            last_permit = now
            in_flight.append((now + 0.01, now, gap))
            continue
        now += 0.005
    assert accepted == messages
    return now - start, refused, firsts


def _anvil(limit: int, unit: int, connected: float | None = None) -> Callable[[float], bool]:
    """Postfix's anvil: a clock of whole seconds; a count starts at the client's connection
    (``connected``) or the first message after the last count ended, and ends once
    ``start + unit < now`` (anvil.c)."""
    count = {"start": None if connected is None else math.floor(connected), "n": 0}

    def accept(t: float) -> bool:
        second = math.floor(t)
        if count["start"] is None or count["start"] + unit < second:
            count["start"], count["n"] = second, 0
        count["n"] += 1
        return count["n"] <= limit

    return accept


@pytest.mark.parametrize("into_second", [0.37, 0.85])
def test_a_receiver_counting_whole_seconds_is_met_as_its_second_turns(
    into_second: float,
) -> None:
    # 100 per 5 s on anvil's whole-second clock: a window opens when a second turns, six
    # seconds after the second its first message came in, however late in that second it
    # came. Spans measured in fractions of a second cannot tell; the lane learns the whole
    # seconds, and from the fourth window on tries each just after its second turns. Late
    # in a second (0.85), probes timed from the refusal rather than from the window's first
    # message fall a second late, and so does every window after.
    elapsed, refused, firsts = _drive(_anvil(100, 5), 1000, start=T0 + into_second)
    late = [t % 1.0 for t in firsts[3:]]
    assert late and all(lateness <= 0.1 for lateness in late), late
    # 10 windows: the first lasts what is left of its sixth second, each after it 6 s.
    assert elapsed <= (6 - into_second) + 8 * 6 + 0.5
    # The first burst's overflow (up to the five in flight), the first window's probes, then
    # one lone probe per shorter window tried: about 1% of the messages.
    assert refused <= 11


@pytest.mark.parametrize("into_second", [0.37, 0.85])
def test_the_first_window_is_probed_as_whole_seconds_turn(into_second: float) -> None:
    # When the first refusal comes, the receiver's window is unknown: the lane probes after
    # pauses of 2 s, then 4 s, ..., added up from the second the window began in and sent
    # just after a second turns (a whole-second receiver opens its next window then).
    # Anvil's 100 per 5 s lasts 6 whole seconds: the second probe meets it. Timed from each
    # refusal, that probe came 4 s after the first one's refusal, up to a second late.
    start = T0 + into_second
    _, refused, firsts = _drive(_anvil(100, 5), 300, start=start)
    opened = math.floor(start) + 6
    assert 0 <= firsts[0] - opened <= 0.1, firsts[0] - opened
    # The first burst's overflow (up to the five in flight), the probe at 2 s, then a lone
    # probe or two per later window for a shorter one.
    assert refused <= 9


@pytest.mark.parametrize("counts_from", ["connection", "message"])
def test_a_first_window_that_began_with_the_connection_a_second_earlier_is_met(
    counts_from: str,
) -> None:
    # The connection began just before a second turned, the first message just after it.
    # Anvil counts a client's window from its connection; another receiver may count from
    # the first message. The lane tries the earlier second's opening first, then the later
    # one, at each step of the episode: either receiver's window is met as it opens.
    contact, start = T0 + 0.97, T0 + 1.01
    receiver = _anvil(100, 5, connected=contact if counts_from == "connection" else None)
    _, refused, firsts = _drive(receiver, 300, start=start, contact=contact)
    opened = (math.floor(contact) if counts_from == "connection" else math.floor(start)) + 6
    assert 0 <= firsts[0] - opened <= 0.1, firsts[0] - opened
    assert refused <= 10  # as above, and at most one more probe per step of the episode


def test_a_window_counted_in_fractions_of_a_second_is_still_met() -> None:
    # A receiver whose window starts at the exact moment of its first message (no whole
    # seconds): 100 per 2.5 s. Whatever the whole-second model makes of it, the lane still
    # meets each window within 25% of its length, with few refusals.
    count = {"start": None, "n": 0}

    def accept(t: float) -> bool:
        if count["start"] is None or t - count["start"] >= 2.5:
            count["start"], count["n"] = t, 0
        count["n"] += 1
        return count["n"] <= 100

    elapsed, refused, _ = _drive(accept, 1000)
    assert elapsed <= 1.25 * 9 * 2.5 + 2  # 9 whole windows at best, the last burst after
    assert refused <= 12


def test_what_the_receiver_accepted_in_the_last_minute_is_kept_for_the_next_run(
    tmp_path: Path,
) -> None:
    # Run 1 sends 40 messages in 4 s and ends; its lane is saved to a real SQLite store.
    first = Scheduler(default_rules(), rng=random.Random(1)).lane("192.0.2.1", "example.net")
    for i in range(40):
        assert first.admit(T0 + i * 0.1) == 0
        first.accepted(T0 + i * 0.1)
    first.count_sent(40, T0 + 4)
    assert sum(count for _, count in first.state.recent_accepts) == 40
    with SqliteStore.open(tmp_path / "m.db") as store:
        store.upsert_lanes([first.state.to_row()])
        rows = store.lane_rows()
    # Run 2 starts 2 s later: the receiver still counts run 1's 40, takes 10 more, refuses.
    states = [LaneState.from_row(row) for row in rows]
    lane = Scheduler(default_rules(), rng=random.Random(1), states=states).lane(
        "192.0.2.1", "example.net"
    )
    now = T0 + 6
    for _ in range(10):
        assert lane.admit(now) == 0
        lane.accepted(now)
        now += 0.01
    assert lane.admit(now) == 0
    event = lane.on_reply(TOO_MUCH_MAIL, 450, now, from_receiver=True, stage="rcpt")
    assert event.pauses_lane
    assert lane.pacer.burst == 50  # what the receiver counted, not run 2's own 10
    # The rate observed before the throttle includes run 1's too: 50 over 6 s, halved.
    assert lane.state.learned_rate == pytest.approx(0.5 * 50 * 60 / 6, rel=0.05)
    # A run a minute later starts afresh: the receiver's minute has passed.
    later = Scheduler(default_rules(), rng=random.Random(1), states=states).lane(
        "192.0.2.1", "example.net"
    )
    later.limits(T0 + 70)
    assert later.pacer.cycle == 0 and later.meter.rate(T0 + 70) == 0
