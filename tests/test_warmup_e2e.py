"""Warm-up end to end: cron-like runs over simulated days against simulated providers.

Real SQLite, real SMTP (mailctl.sim on 127.0.0.1, sending from bound loopback source IPs
127.0.0.2-4), an injected clock (FakeClock: the engine's sleeps advance it, and the simulated
providers stamp deliveries with it). Nothing is mocked: what the receivers saw is compared
with what `ip_days` and `warmup plan --json` say.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import sqlite3
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import active_jobs, prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import Engine
from mailctl.delivery.record import RunSummary
from mailctl.reputation.budget import events, history, profile_settings
from mailctl.reputation.warmup import local_day, provider_cap, state_on, window_allowance
from mailctl.sim.behaviours import AddressRule, SimBehaviour, SimConfig
from mailctl.sim.replies import GOOGLE_RATE_LIMITED as GOOGLE_THROTTLE
from mailctl.sim.replies import MICROSOFT_BLOCK_LIST
from mailctl.sim.servers import ThreadedSimServer
from mailctl.store.sqlite import SqliteStore
from mailctl.warmup_schedule import WarmupSetting
from tests.helpers.clock import FakeClock
from tests.helpers.workspace import cli as cli_in

COLD, WARM_TX, WARM_MKT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
PROVIDERS = {
    "google": "gmail.example.com",
    "yahoo": "yahoo.example.com",
    "microsoft": "outlook.example.com",
}
WINDOW = (8, 20)  # UTC hours: the day's cap is spread over these 12 hours
START = dt.date(2026, 3, 2)  # a Monday


def _ramp(first: int, last: int, stages: int) -> tuple[int, ...]:
    """SES45's shape (a constant daily ratio), scaled down, strictly increasing."""
    volumes: list[int] = []
    for d in range(stages):
        v = round(first * (last / first) ** (d / (stages - 1)))
        volumes.append(max(v, volumes[-1] + 1) if volumes else v)
    return tuple(volumes)


VOLUMES = _ramp(3, 50, 30)
GOOGLE_SHARE = 0.4


def at(day: dt.date, hour: int = WINDOW[0], minute: int = 0) -> float:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC).timestamp()


def utc_day(timestamp: float) -> dt.date:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date()


# --------------------------------------------------------------------------- workspace


class Providers:
    """One simulated provider per name, all stamping deliveries with the injected clock.

    Recipients whose local part starts with `throttle-` get Google's 4.7.28 rate limit, those
    starting with `block-` Microsoft's S3150 block list reply: a test injects a signal on a
    chosen day by queueing such a recipient that day.
    """

    def __init__(self, clock: FakeClock) -> None:
        rules = {
            "google": (AddressRule(re.compile(r"^throttle-"), GOOGLE_THROTTLE),),
            "microsoft": (AddressRule(re.compile(r"^block-"), MICROSOFT_BLOCK_LIST),),
            "yahoo": (),
        }
        self.servers = {
            name: ThreadedSimServer(
                SimConfig(SimBehaviour(name=name, rcpt_rules=rules[name])), clock=clock.now
            )
            for name in PROVIDERS
        }
        for server in self.servers.values():
            server.start()

    def mx_override(self) -> str:
        return "\n".join(
            f'      {domain}: "{name}@127.0.0.1:{self.servers[name].port}"'
            for name, domain in PROVIDERS.items()
        )

    def deliveries(self) -> list[tuple[str, str, float, str]]:
        """(provider, source IP, time, recipient) of every accepted message."""
        return [
            (name, d.source_ip, d.time, d.rcpt)
            for name, server in self.servers.items()
            for d in server.deliveries
        ]

    def stop(self) -> None:
        errors = []
        for server in self.servers.values():
            server.stop()
            errors.extend(server.errors)
        assert not errors, errors


@pytest.fixture
def providers() -> Iterator[Providers]:
    clock = FakeClock()
    sims = Providers(clock)
    sims.clock = clock  # type: ignore[attr-defined]
    yield sims
    sims.stop()


def warmup_yaml(
    volumes: Sequence[int],
    start: dt.date,
    *,
    share: float | None = GOOGLE_SHARE,
    window: tuple[int, int] = WINDOW,
) -> str:
    lines = [
        f"volumes: [{', '.join(map(str, volumes))}]",
        f"start: {start.isoformat()}",
        f"target_daily: {volumes[-1]}",
        f"window: {{start: {window[0]}, end: {window[1]}, timezone: UTC}}",
    ]
    if share is not None:
        lines.append(f"provider_shares: {{google: {share}}}")
    return "{" + ", ".join(lines) + "}"


def write_profiles(
    ws: Path, sims: Providers, marketing: str, transactional: str = f"- {WARM_TX}\n"
) -> None:
    """A direct profile: `marketing` and `transactional` are the pools' YAML item lists."""

    def pool(items: str) -> str:
        return textwrap.indent(textwrap.dedent(items).rstrip("\n") + "\n", " " * 8)

    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            """\
            default_profile: direct
            profiles:
              direct:
                transport: direct
                dns: false
                helo: mta.example.com
                max_age: 1h
                retry: [5m, 10m]
                classes: {marketing: marketing, transactional: transactional}
                # The simulated providers offer no STARTTLS.
                rules: {limits: {google: {tls: opportunistic}}}
                mx_override:
            """
        )
        + sims.mx_override()
        + "\n"
        + "    pools:\n      marketing:\n"
        + pool(marketing)
        + "      transactional:\n"
        + pool(transactional)
    )


def write_campaign(
    ws: Path,
    name: str,
    emails: Sequence[str],
    *,
    cls: str = "marketing",
    max_age: str | None = None,
) -> Path:
    (ws / f"{name}.csv").write_text("\n".join(["email", *emails]) + "\n")
    path = ws / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            profile: direct
            class: {cls}
            from: "News <news@example.com>"
            subject: "News for {{{{ email }}}}"
            text: "Hello {{{{ email }}}}"
            recipients: {name}.csv
            unsubscribe: {{url: "https://example.com/u", mailto: "u@example.com"}}
            """
        )
        + (f"max_age: {max_age}\n" if max_age else "")
    )
    return path


def queue(ws: Path, campaign: Path, now: float) -> None:
    with SqliteStore.open(ws / "m.db") as store:
        prepare(store, campaign, load_profiles(ws / "profiles.yaml"), now=now)


def cron_run(
    ws: Path,
    clock: FakeClock,
    day: dt.date,
    *,
    hour: int = WINDOW[0],
    hours: float = WINDOW[1] - WINDOW[0],
) -> RunSummary:
    """What `mailctl send --all --max-time …` does from cron, on the injected clock."""
    clock.t = at(day, hour)
    with SqliteStore.open(ws / "m.db") as store:
        store.recover_interrupted()
        prepared, problems = active_jobs(
            store, load_profiles(ws / "profiles.yaml"), now=clock.now()
        )
        assert not problems, problems
        jobs = [p.job for p in prepared]
        run_id = store.start_run(1, "test", clock.now())
        engine = Engine(
            store,
            jobs,
            run_id=run_id,
            clock=clock,
            options=SendOptions(max_time=hours * 3600, wait=True),
        )
        return asyncio.run(engine.run())


def ip_day_totals(ws: Path) -> dict[tuple[str, str], Counter[str]]:
    """(ip, day) -> summed counters, plus `<provider>` -> sent."""
    totals: dict[tuple[str, str], Counter[str]] = {}
    with SqliteStore.open(ws / "m.db") as store:
        for row in store.ip_days():
            counter = totals.setdefault((row["ip"], row["day"]), Counter())
            for key in ("sent", "deferred", "bounced", "throttles", "blocks"):
                counter[key] += row[key]
            counter[row["provider"]] += row["sent"]
    return totals


def message_states(ws: Path) -> dict[str, int]:
    conn = sqlite3.connect(ws / "m.db")
    try:
        return dict(conn.execute("SELECT state, count(*) FROM messages GROUP BY state"))
    finally:
        conn.close()


def cli_json(ws: Path, capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    code = cli_in(ws, *args, "--json")
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def cli(ws: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = cli_in(ws, *args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out + out.err


def assert_spread(setting: WarmupSetting, times: Sequence[float], cap: int) -> None:
    """The receivers saw no burst: by any moment, at most the window's allowance so far."""
    for count, moment in enumerate(sorted(times), start=1):
        allowed = window_allowance(setting, cap, dt.datetime.fromtimestamp(moment, dt.UTC))
        assert allowed is not None and count <= allowed, (count, allowed, moment)


# --------------------------------------------------------------------------- 45 days


IDLE = {5, 6, 19, 20, 21, 33, 34}  # days (from START) when cron did not run
THROTTLE_DAY = 10  # Google answers 4.7.28 to the day's first message
BLOCK_DAY = 25  # Microsoft answers S3150 (its block list) to the day's first message
DAYS = 45


def expected_ramp() -> dict[int, tuple[int, str]]:
    """Day index -> (cap, outcome): an independent model of the warm-up rules."""
    stage, out = 1, {}
    for i in range(DAYS):
        if i in IDLE:
            continue
        cap = VOLUMES[stage - 1]
        if i == BLOCK_DAY:
            outcome, stage = "stepped_back", max(1, stage - 1)
        elif i == THROTTLE_DAY:
            outcome = "held"
        elif stage == len(VOLUMES):
            outcome = "complete"
        else:
            outcome, stage = "advanced", stage + 1
        out[i] = (cap, outcome)
    return out


def test_45_day_warmup_follows_schedule_holds_and_steps_back(
    providers: Providers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock: FakeClock = providers.clock  # type: ignore[attr-defined]
    ws = tmp_path
    write_profiles(
        ws,
        providers,
        marketing=f"- ip: {COLD}\n  warmup: {warmup_yaml(VOLUMES, START)}\n",
    )
    settings_by_ip = profile_settings(load_profiles(ws / "profiles.yaml").get("direct"))
    setting = settings_by_ip[COLD]
    assert setting is not None and settings_by_ip[WARM_TX] is None
    expected = expected_ramp()
    # The signals: the day's first message gets Google's 4.7.28 throttle, or Microsoft's S3150
    # block. Queued up front (lower ids than the backlog, due only that morning) because the
    # engine dispatches a claimed batch in id order (see test_due_order_beats_queue_order).
    for i, probe in (
        (THROTTLE_DAY, f"throttle-{THROTTLE_DAY}@{PROVIDERS['google']}"),
        (BLOCK_DAY, f"block-{BLOCK_DAY}@{PROVIDERS['microsoft']}"),
    ):
        day = START + dt.timedelta(days=i)
        queue(ws, write_campaign(ws, f"probe{i}", [probe], max_age="5m"), at(day, 7))
    marketing = 2
    for i in range(DAYS):
        day = START + dt.timedelta(days=i)
        if i in expected:
            # The day's newsletter: a few more than the cap, and more Google than its share,
            # so the caps (not the list) limit the day; the rest waits for later days.
            cap = expected[i][0]
            google = math.floor(cap * GOOGLE_SHARE) + 2
            emails = [f"d{i}-{n}@{PROVIDERS['google']}" for n in range(google)] + [
                f"d{i}-{n}@{PROVIDERS['yahoo' if n % 2 else 'microsoft']}"
                for n in range(cap - google + 4)
            ]
            queue(ws, write_campaign(ws, f"day{i:02d}", emails), at(day, 7))
            marketing += len(emails)
        if i in IDLE:
            continue
        # Transactional mail rides the warm IP of its own pool, uncapped, every week.
        if i % 7 == 1:
            tx = [f"tx{i}-{n}@{PROVIDERS['yahoo']}" for n in range(15)]
            queue(ws, write_campaign(ws, f"tx{i:02d}", tx, cls="transactional"), at(day, 7))
        result = cron_run(ws, clock, day)
        assert result.failed == 0 and result.bounced == 0

    totals = ip_day_totals(ws)
    seen = Counter((ip, utc_day(t).isoformat()) for _, ip, t, _ in providers.deliveries())
    seen_google = Counter(
        (ip, utc_day(t).isoformat()) for p, ip, t, _ in providers.deliveries() if p == "google"
    )
    rows: list[tuple[int, str, str, int, str]] = []
    for i in range(DAYS):
        iso = (START + dt.timedelta(days=i)).isoformat()
        counters = totals.get((COLD, iso), Counter())
        if i in IDLE:
            assert counters["sent"] == 0 and seen[(COLD, iso)] == 0
            rows.append((i + 1, iso, "-", 0, "idle (no run)"))
            continue
        cap, outcome = expected[i]
        google_cap = provider_cap(setting, cap, "google")
        assert google_cap == math.floor(cap * GOOGLE_SHARE)
        # What the receivers saw is what ip_days counted, and never above the iso's caps.
        assert seen[(COLD, iso)] == counters["sent"]
        assert seen_google[(COLD, iso)] == counters["google"]
        assert counters["google"] <= google_cap, (iso, counters)
        signal_day = i in (THROTTLE_DAY, BLOCK_DAY)
        # The backlog never runs dry, so a clean iso sends exactly its cap.
        assert counters["sent"] == cap if not signal_day else counters["sent"] <= cap, (
            iso,
            cap,
            counters,
        )
        if i == THROTTLE_DAY:
            assert counters["throttles"] >= 1 and counters["blocks"] == 0
        elif i == BLOCK_DAY:
            assert counters["blocks"] >= 1
        else:
            assert counters["throttles"] == counters["blocks"] == counters["deferred"] == 0
        times = [
            t
            for _, ip, t, _ in providers.deliveries()
            if ip == COLD and utc_day(t).isoformat() == iso
        ]
        google_times = [
            t
            for p, ip, t, _ in providers.deliveries()
            if p == "google" and ip == COLD and utc_day(t).isoformat() == iso
        ]
        assert_spread(setting, times, cap)
        assert_spread(setting, google_times, google_cap)
        rows.append((i + 1, iso, str(cap), counters["sent"], outcome))

    # The schedule's shape: held repeats the cap, a block steps back, idle days change nothing.
    assert expected[THROTTLE_DAY + 1][0] == expected[THROTTLE_DAY][0]
    assert VOLUMES.index(expected[BLOCK_DAY + 1][0]) == VOLUMES.index(expected[BLOCK_DAY][0]) - 1
    assert VOLUMES.index(expected[7][0]) == VOLUMES.index(expected[4][0]) + 1  # weekend 5, 6

    # Pools never mix: marketing only from the cold IP, transactional only from the warm one.
    for provider, ip, _, rcpt in providers.deliveries():
        assert ip == (WARM_TX if rcpt.startswith("tx") else COLD), (provider, ip, rcpt)
    # Warm-up never dropped anything: the rest of the backlog waits, queued or deferred.
    states = message_states(ws)
    assert set(states) <= {"sent", "queued", "deferred", "expired"}
    assert states["expired"] == 2  # the two probes only (a receiver's deferral, max_age 5m)
    sent_cold = sum(counters["sent"] for (ip, _), counters in totals.items() if ip == COLD)
    assert states["deferred"] + states.get("queued", 0) == marketing - 2 - sent_cold

    # `warmup plan --json` tells the same story.
    as_of = START + dt.timedelta(days=DAYS)
    plans = cli_json(
        ws, capsys, "warmup", "plan", "--ip", COLD, "--date", as_of.isoformat(), "--days", "3"
    )
    assert isinstance(plans, list) and len(plans) == 1
    past = {p["day"]: p for p in plans[0]["past"]}
    for i, (day_cap, outcome) in expected.items():
        iso = (START + dt.timedelta(days=i)).isoformat()
        assert (past[iso]["cap"], past[iso]["outcome"]) == (day_cap, outcome), (iso, past[iso])
        assert past[iso]["sent"] == totals[(COLD, iso)]["sent"]
    assert not {(START + dt.timedelta(days=i)).isoformat() for i in IDLE} & set(past)
    # The ramp ended on the last sending days: the IP is warm, its cap is the target.
    assert [expected[i][1] for i in sorted(expected)][-2:] == ["complete", "complete"]
    assert (plans[0]["status"], plans[0]["stage"], plans[0]["cap_today"]) == (
        "warm",
        len(VOLUMES),
        VOLUMES[-1],
    )
    assert [u["cap"] for u in plans[0]["upcoming"]] == [VOLUMES[-1]] * 3
    assert plans[0]["upcoming"][0]["provider_caps"] == {
        "google": math.floor(VOLUMES[-1] * GOOGLE_SHARE)
    }
    first_complete = min(i for i, (_, outcome) in expected.items() if outcome == "complete")
    assert plans[0]["target_reached_on"] == (START + dt.timedelta(days=first_complete)).isoformat()

    print("\n45-day simulated warm-up of", COLD, "(volumes", VOLUMES, ")")
    print(f"{'day':>3}  {'date':10}  {'cap':>4}  {'sent':>4}  outcome")
    for n, iso, shown_cap, sent, outcome in rows:
        print(f"{n:>3}  {iso}  {shown_cap:>4}  {sent:>4}  {outcome}")


# --------------------------------------------------------------------------- spill-over


def mix(prefix: str, count: int) -> list[str]:
    names = list(PROVIDERS.values())
    return [f"{prefix}{n}@{names[n % len(names)]}" for n in range(count)]


def sent_by_ip(sims: Providers, day: dt.date | None = None) -> Counter[str]:
    return Counter(ip for _, ip, t, _ in sims.deliveries() if day is None or utc_day(t) == day)


def test_spill_over_to_warm_ip_of_same_pool_only(providers: Providers, tmp_path: Path) -> None:
    clock: FakeClock = providers.clock  # type: ignore[attr-defined]
    write_profiles(
        tmp_path,
        providers,
        marketing=f"- ip: {COLD}\n  warmup: {warmup_yaml((4, 8), START, share=None)}\n"
        f"- {WARM_MKT}\n",
    )
    queue(tmp_path, write_campaign(tmp_path, "news", mix("m", 20)), at(START, 7))
    result = cron_run(tmp_path, clock, START)
    assert result.sent == 20 and result.remaining == 0
    # The transactional pool's IP sat idle all day, yet took none of the marketing mail.
    assert sent_by_ip(providers) == {COLD: 4, WARM_MKT: 16}


def test_spill_over_never_leaves_the_pool(providers: Providers, tmp_path: Path) -> None:
    """The part of spill-over that holds today: the other pool's idle warm IP gets nothing."""
    clock: FakeClock = providers.clock  # type: ignore[attr-defined]
    write_profiles(
        tmp_path,
        providers,
        marketing=f"- ip: {COLD}\n  warmup: {warmup_yaml((4, 8), START, share=None)}\n"
        f"- {WARM_MKT}\n",
    )
    queue(tmp_path, write_campaign(tmp_path, "news", mix("m", 20)), at(START, 7))
    queue(
        tmp_path,
        write_campaign(tmp_path, "receipts", mix("t", 5), cls="transactional"),
        at(START, 7),
    )
    result = cron_run(tmp_path, clock, START)
    assert result.sent == 25 and result.remaining == 0
    by_ip = sent_by_ip(providers)
    assert 1 <= by_ip[COLD] <= 4 and by_ip[COLD] + by_ip[WARM_MKT] == 20
    assert by_ip[WARM_TX] == 5
    for _, ip, _, rcpt in providers.deliveries():
        assert (ip == WARM_TX) == rcpt.startswith("t"), (ip, rcpt)


def test_no_capacity_left_keeps_messages_queued_until_the_next_day(
    providers: Providers, tmp_path: Path
) -> None:
    clock: FakeClock = providers.clock  # type: ignore[attr-defined]
    write_profiles(
        tmp_path,
        providers,
        marketing=f"- ip: {COLD}\n  warmup: {warmup_yaml((5, 7), START, share=None)}\n",
    )
    # max_age 1h (and the profile's 1h): warm-up waits are mailctl's own and never expire.
    queue(tmp_path, write_campaign(tmp_path, "news", mix("m", 12), max_age="1h"), at(START, 7))
    first = cron_run(tmp_path, clock, START)
    assert (first.sent, first.expired, first.failed, first.remaining) == (5, 0, 0, 7)
    assert first.next_attempt_at == at(START + dt.timedelta(days=1))  # tomorrow's window
    assert message_states(tmp_path) == {"sent": 5, "deferred": 7}
    # The transactional pool's warm IP was idle and still took nothing.
    assert sent_by_ip(providers) == {COLD: 5}
    # A cron run later the same day (window closed, cap used up) sends nothing.
    late = cron_run(tmp_path, clock, START, hour=21, hours=2)
    assert late.sent == 0 and message_states(tmp_path) == {"sent": 5, "deferred": 7}
    # The next day's run continues with the next stage's cap.
    second = cron_run(tmp_path, clock, START + dt.timedelta(days=1))
    assert (second.sent, second.remaining, second.expired) == (7, 0, 0)
    assert message_states(tmp_path) == {"sent": 12}
    assert sent_by_ip(providers, START + dt.timedelta(days=1)) == {COLD: 7}


def test_due_order_beats_queue_order(providers: Providers, tmp_path: Path) -> None:
    clock: FakeClock = providers.clock  # type: ignore[attr-defined]
    write_profiles(
        tmp_path,
        providers,
        marketing=f"- ip: {COLD}\n  warmup: {warmup_yaml((2, 2, 2), START, share=None)}\n",
    )
    queue(tmp_path, write_campaign(tmp_path, "backlog", mix("old", 8)), at(START, 7))
    cron_run(tmp_path, clock, START)  # sends 2; the rest is deferred to tomorrow 08:00
    day2 = START + dt.timedelta(days=1)
    # Queued at 07:00: due before the backlog's 08:00, so it should be among the day's 2.
    queue(tmp_path, write_campaign(tmp_path, "urgent", [f"new@{PROVIDERS['yahoo']}"]), at(day2, 7))
    cron_run(tmp_path, clock, day2)
    assert f"new@{PROVIDERS['yahoo']}" in {r for *_, r in providers.deliveries()}


# --------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def shared_providers() -> Iterator[Providers]:
    clock = FakeClock()
    sims = Providers(clock)
    sims.clock = clock  # type: ignore[attr-defined]
    yield sims
    sims.stop()


day_plan = st.tuples(st.booleans(), st.integers(0, 10), st.integers(5, 21))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    first=st.integers(1, 4),
    share=st.sampled_from([None, 0.5]),
    window=st.sampled_from([(0, 24), (8, 20), (13, 15)]),
    days=st.lists(day_plan, min_size=2, max_size=4),
)
def test_send_loop_never_exceeds_the_daily_caps(
    shared_providers: Providers,
    steps: list[int],
    first: int,
    share: float | None,
    window: tuple[int, int],
    days: list[tuple[bool, int, int]],
) -> None:
    sims = shared_providers
    clock: FakeClock = sims.clock  # type: ignore[attr-defined]
    volumes = [first]
    for step in steps:
        volumes.append(volumes[-1] + step)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_profiles(
            ws,
            sims,
            marketing=f"- ip: {COLD}\n  warmup: "
            f"{warmup_yaml(volumes, START, share=share, window=window)}\n",
        )
        setting = profile_settings(load_profiles(ws / "profiles.yaml").get("direct"))[COLD]
        assert setting is not None
        queued = 0
        for i, (runs, new, hour) in enumerate(days):
            day = START + dt.timedelta(days=i)
            if new:
                names = [
                    f"p{i}-{n}@{PROVIDERS['google' if n % 3 else 'yahoo']}" for n in range(new)
                ]
                queue(ws, write_campaign(ws, f"c{i}", names), at(day, 4))
                queued += new
            if runs:
                cron_run(ws, clock, day, hour=hour, hours=24 - hour)
        with SqliteStore.open(ws / "m.db") as store:
            rows = store.ip_days(COLD)
            past, marks = history(store, COLD), events(store, COLD)
        states = message_states(ws)
    assert set(states) <= {"sent", "queued", "deferred"}, states  # nothing dropped
    assert sum(states.values()) == queued
    for record in past:
        cap = state_on(setting, past, marks, record.day).cap_today
        assert cap is not None and record.sent <= cap, (record, cap, volumes)
        google = sum(
            r["sent"]
            for r in rows
            if r["day"] == record.day.isoformat() and r["provider"] == "google"
        )
        google_cap = provider_cap(setting, cap, "google")
        assert google_cap is not None and google <= google_cap, (record, google_cap)
        assert record.day == local_day(
            setting, dt.datetime.combine(record.day, dt.time(12), tzinfo=dt.UTC)
        )


# --------------------------------------------------------------------------- plan --json


PRESET_CASES = {
    # preset: (target_daily, first caps, (stage, cap) deep in the ramp, stages to the target)
    "sendgrid": (100_000, [50, 100, 500, 1_000, 5_000], (10, 100_000), 10),
    "sparkpost": (1_250_000, [200, 500, 1_000, 2_000, 5_000], (15, 325_000), 21),
    "ses45": (50_000, [50, 58, 68, 80, 94], (10, 205), 45),
    "linear": (10_000, [50, 393, 736, 1_079, 1_422], (30, 10_000), 30),
}
PLAN_START = dt.date(2026, 1, 5)


def preset_profiles(ws: Path, preset: str, target: int) -> None:
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            profiles:
              direct:
                transport: direct
                dns: false
                pools:
                  marketing:
                    - ip: {COLD}
                      warmup: {{preset: {preset}, start: {PLAN_START}, target_daily: {target}}}
                  transactional: [{WARM_TX}]
            """
        )
    )


@pytest.mark.parametrize(
    "preset",
    [
        "sendgrid",
        "sparkpost",
        "ses45",
        "linear",
    ],
)
def test_warmup_plan_json_per_preset_on_known_dates(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, first_caps, (stage, cap), stages = PRESET_CASES[preset]
    preset_profiles(tmp_path, preset, target)

    def plan_on(day: dt.date, days: int = 5) -> dict:
        plans = cli_json(
            tmp_path, capsys, "warmup", "plan", "--date", day.isoformat(), "--days", str(days)
        )
        assert isinstance(plans, list)
        by_ip = {p["ip"]: p for p in plans}
        assert by_ip[WARM_TX]["status"] == "warm" and by_ip[WARM_TX]["cap_today"] is None
        return by_ip[COLD]

    before = plan_on(PLAN_START - dt.timedelta(days=3))
    assert (before["status"], before["cap_today"], before["schedule"]) == ("not_started", 0, preset)
    assert before["upcoming"][0]["day"] == PLAN_START.isoformat()

    on_start = plan_on(PLAN_START, days=stages)
    assert (on_start["status"], on_start["stage"], on_start["stages"]) == ("warming", 1, stages)
    assert on_start["cap_today"] == first_caps[0]
    caps = [u["cap"] for u in on_start["upcoming"]]
    assert caps[:5] == first_caps and caps[stage - 1] == cap and caps[-1] == target
    assert [u["day"] for u in on_start["upcoming"][:2]] == [
        PLAN_START.isoformat(),
        (PLAN_START + dt.timedelta(days=1)).isoformat(),
    ]
    assert on_start["target_reached_on"] == (PLAN_START + dt.timedelta(days=stages - 1)).isoformat()

    # Twenty idle days later nothing has advanced: the ramp counts sending days only.
    later = PLAN_START + dt.timedelta(days=20)
    idle = plan_on(later)
    assert (idle["stage"], idle["cap_today"], idle["past"]) == (
        1,
        first_caps[0],
        [
            {
                "day": PLAN_START.isoformat(),
                "stage": 1,
                "cap": first_caps[0],
                "sent": 0,
                "outcome": "started",
                "why": idle["past"][0]["why"],
            }
        ],
    )
    assert idle["target_reached_on"] == (later + dt.timedelta(days=stages - 1)).isoformat()


def test_warmup_start_hold_reset_change_the_plan_not_the_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = dt.date.today()  # hold and reset apply today (they take no --date)
    start = today - dt.timedelta(days=10)
    (tmp_path / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            profiles:
              direct:
                transport: direct
                dns: false
                pools:
                  marketing:
                    - ip: {COLD}
                      warmup: {{preset: sendgrid, start: {start}, target_daily: 100000}}
            """
        )
    )
    with SqliteStore.open(tmp_path / "m.db") as store:
        for n, sent in enumerate((50, 100, 500)):  # three clean sending days
            day = (start + dt.timedelta(days=n)).isoformat()
            store.bump_ip_day(COLD, day, "google", sent=sent - 10)
            store.bump_ip_day(COLD, day, "yahoo", sent=10)
        history_before = store.ip_days(COLD)

    def plan_today() -> dict:
        plans = cli_json(
            tmp_path,
            capsys,
            "warmup",
            "plan",
            "--ip",
            COLD,
            "--date",
            today.isoformat(),
            "--days",
            "3",
        )
        assert isinstance(plans, list) and len(plans) == 1
        return plans[0]

    def past_outcomes(p: dict) -> list[tuple[str, int, str]]:
        return [(d["day"], d["sent"], d["outcome"]) for d in p["past"] if d["sent"]]

    sent_days = [
        ((start + dt.timedelta(days=n)).isoformat(), v, "advanced")
        for n, v in enumerate((50, 100, 500))
    ]
    base = plan_today()
    assert (base["status"], base["stage"], base["cap_today"]) == ("warming", 4, 1_000)
    assert [u["cap"] for u in base["upcoming"]] == [1_000, 5_000, 10_000]
    assert base["target_reached_on"] == (today + dt.timedelta(days=6)).isoformat()
    assert past_outcomes(base) == sent_days

    cli(tmp_path, capsys, "warmup", "hold", COLD)
    held = plan_today()
    assert (held["status"], held["stage"], held["cap_today"]) == ("held", 4, 1_000)
    assert [u["cap"] for u in held["upcoming"]] == [1_000] * 3
    assert held["target_reached_on"] is None

    cli(tmp_path, capsys, "warmup", "reset", COLD)
    reset = plan_today()
    assert (reset["status"], reset["stage"], reset["cap_today"]) == ("warming", 1, 50)
    assert [u["cap"] for u in reset["upcoming"]] == [50, 100, 500]

    cli(
        tmp_path,
        capsys,
        "warmup",
        "start",
        COLD,
        "--preset",
        "sparkpost",
        "--date",
        (today + dt.timedelta(days=1)).isoformat(),
    )
    switched = plan_today()
    assert switched["cap_today"] == 50  # the new start is tomorrow; today is still sendgrid
    assert [u["cap"] for u in switched["upcoming"]] == [50, 200, 500]

    # None of it touched what happened: the same ip_days rows, the same past outcomes.
    with SqliteStore.open(tmp_path / "m.db") as store:
        assert store.ip_days(COLD) == history_before
    assert past_outcomes(switched) == sent_days
