"""Reputation shaping end to end: direct-to-MX from two loopback IPs to three simulated providers.

Real SMTP (aiosmtplib -> aiosmtpd sims on 127.0.0.1, bound to source 127.0.0.2 / 127.0.0.3),
real SQLite. The engine runs on a FakeClock (sleeping advances time at once) and every sim reads
the same clock, so a provider's rate window, a 2-hour suspension or a greylisting delay pass
without waiting. Each recipient domain maps to one sim through ``mx_override``
(``provider@127.0.0.1:PORT``), so its lane is named after the provider.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import sqlite3
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailctl.cli import run
from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import Engine
from mailctl.delivery.record import RunSummary
from mailctl.reputation.lanes import Lane
from mailctl.sim.behaviours import Greylist, SimBehaviour, SimTls, Throttle, preset
from mailctl.sim.replies import GOOGLE_RATE_LIMITED, MICROSOFT_BLOCK_LIST, YAHOO_TSS04
from mailctl.sim.servers import ThreadedSimServer
from mailctl.store.sqlite import SqliteStore
from tests.helpers.clock import FakeClock

IPS = ("127.0.0.2", "127.0.0.3")
DOMAINS = {"google": "gmail.example", "microsoft": "outlook.example", "yahoo": "yahoo.example"}
PROVIDER_OF = {domain: provider for provider, domain in DOMAINS.items()}
SENDER = "news@example.com"


def _loopback_ips_bindable() -> bool:
    for ip in IPS:
        try:
            with socket.socket() as s:
                s.bind((ip, 0))
        except OSError:
            return False
    return True


pytestmark = pytest.mark.skipif(
    not _loopback_ips_bindable(), reason="127.0.0.2 and 127.0.0.3 cannot be bound here"
)


@dataclass
class Rig:
    """Three simulated providers, a direct profile with two source IPs, one campaign."""

    ws: Path
    clock: FakeClock  # overlapping sleeps: see FakeClock
    sims: dict[str, ThreadedSimServer]
    events: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.ws / "m.db"

    def add_recipients(self, emails: Iterable[str]) -> None:
        with (self.ws / "list.csv").open("a") as f:
            f.writelines(f"{email},X\n" for email in emails)

    def send(self, **options: Any) -> RunSummary:
        """One `mailctl send` run on the fake clock (prepare resumes the campaign)."""
        profiles = load_profiles(self.ws / "profiles.yaml")
        with SqliteStore.open(self.db) as store:
            prepared = prepare(store, self.ws / "c.yaml", profiles, now=self.clock.now())
            run_id = store.start_run(1, "test", self.clock.now())
            engine = Engine(
                store,
                [prepared.job],
                run_id=run_id,
                clock=self.clock,
                options=SendOptions(**options),
                on_event=self.events.append,
            )
            result = asyncio.run(engine.run())
            store.finish_run(run_id, self.clock.now(), result.stop_reason, 0)
            return result

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def lanes(self) -> dict[tuple[str, str], dict[str, Any]]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return {(r["ip"], r["provider"]): dict(r) for r in conn.execute("SELECT * FROM lanes")}
        finally:
            conn.close()

    def deliveries(self, provider: str) -> list[Any]:
        """The campaign's accepted recipients at one sim (mail from other senders left out)."""
        return [d for d in self.sims[provider].deliveries if d.mail_from == SENDER]

    def states(self) -> dict[str, str]:
        return dict(self.query("SELECT email, state FROM messages"))

    def cli(self, *args: str) -> int:
        return run(["--db", str(self.db), "--profiles", str(self.ws / "profiles.yaml"), *args])


RigFactory = Callable[..., Rig]


@pytest.fixture
def rig(sim_server: Any, tmp_path: Path) -> RigFactory:
    """``rig(recipients, google=behaviour, ..., rules=..., profile_extra=...)``."""

    def build(
        recipients: Iterable[str],
        *,
        rules: str = "{}",
        profile_extra: str = "",
        **behaviours: SimBehaviour,
    ) -> Rig:
        clock = FakeClock(overlapping_sleeps=True)
        sims = {}
        for provider in DOMAINS:
            behaviour = behaviours.get(provider) or preset(provider, throttle=None)
            # Google's rules require TLS: its sim offers STARTTLS like the real MX does.
            tls = SimTls.OFFER if provider == "google" else SimTls.OFF
            sims[provider] = sim_server(behaviour, clock=clock.now, tls=tls)
        overrides = "\n".join(
            f'      {domain}: "{provider}@127.0.0.1:{sims[provider].port}"'
            for provider, domain in DOMAINS.items()
        )
        (tmp_path / "profiles.yaml").write_text(
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
                    max_age: 1d
                """
            )
            + f"    rules: {rules}\n    mx_override:\n{overrides}\n"
            + textwrap.indent(textwrap.dedent(profile_extra), "    ")
        )
        (tmp_path / "list.csv").write_text(
            "email,first_name\n" + "".join(f"{email},X\n" for email in recipients)
        )
        (tmp_path / "c.yaml").write_text(
            textwrap.dedent(
                f"""\
                name: news
                from: "News <{SENDER}>"
                subject: "Hello {{{{ first_name }}}}"
                text: "Hi {{{{ first_name }}}}, unsubscribe: {{{{ unsubscribe_url }}}}"
                recipients: list.csv
                unsubscribe: {{url: "https://example.com/u/{{{{ email | urlencode }}}}"}}
                """
            )
        )
        return Rig(tmp_path, clock, sims)

    return build


def spread(count: int, *, prefix: str = "user") -> list[str]:
    """``count`` recipients at each of the three domains, interleaved."""
    return [f"{prefix}{i}@{domain}" for i in range(count) for domain in DOMAINS.values()]


def lanes_json(rig: Rig, capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], dict]:
    capsys.readouterr()
    assert rig.cli("lanes", "--json") == 0
    return {(row["ip"], row["provider"]): row for row in json.loads(capsys.readouterr().out)}


def assert_nothing_lost(rig: Rig) -> None:
    """Every DB 'sent' is exactly one sim delivery from the IP the DB names, and back."""
    sent = {
        email: ip for email, ip in rig.query("SELECT email, ip FROM messages WHERE state = 'sent'")
    }
    delivered: dict[str, str] = {}
    for provider in DOMAINS:
        for d in rig.deliveries(provider):
            assert d.rcpt not in delivered, f"{d.rcpt} delivered twice"
            assert PROVIDER_OF[d.rcpt.split("@")[1]] == provider
            delivered[d.rcpt] = d.source_ip
    assert delivered == sent
    assert not rig.query("SELECT email FROM messages WHERE state = 'sending'")
    stopped = rig.query("SELECT status FROM campaigns WHERE status = 'stopped'")
    if not stopped:  # a stopped campaign leaves its unsent messages queued
        assert not rig.query("SELECT email FROM messages WHERE state = 'queued'")


# ------------------------------------------------------------------------------------- tests


def test_campaign_spread_over_two_ips_and_three_providers(rig: RigFactory) -> None:
    hard = [
        "unknown-1@gmail.example",
        "unknown-2@outlook.example",
        "unknown-3@yahoo.example",
        "disabled-4@yahoo.example",
    ]
    late = ["bounce-5@gmail.example"]  # accepted, then a DSN: "sent" as far as SMTP goes
    r = rig(spread(30) + hard + late)
    result = r.send()
    assert result.stop_reason == "finished"
    assert (result.sent, result.bounced, result.deferred, result.remaining) == (91, 4, 0, 0)
    states = r.states()
    assert len(states) == 95
    assert {e for e, s in states.items() if s == "bounced"} == set(hard)
    assert_nothing_lost(r)
    # Both IPs carried mail to every provider, each lane over its own connections.
    per_lane = Counter(r.query("SELECT ip, provider FROM messages WHERE state = 'sent'"))
    assert set(per_lane) == {(ip, p) for ip in IPS for p in DOMAINS}
    assert all(count >= 10 for count in per_lane.values())
    for provider in DOMAINS:
        assert {d.source_ip for d in r.deliveries(provider)} == set(IPS)
    # The hard bounces carry the provider's own reply and are suppressed.
    replies = dict(
        r.query(
            "SELECT m.email, r.text FROM replies r JOIN messages m "
            "ON m.id = r.message_id WHERE r.outcome = 'bounced'"
        )
    )
    assert "NoSuchUser" in replies["unknown-1@gmail.example"]
    assert "mailbox unavailable" in replies["unknown-2@outlook.example"]
    assert "doesn't have a yahoo.com account" in replies["unknown-3@yahoo.example"]
    assert {a for (a,) in r.query("SELECT address FROM suppression")} == set(hard)
    assert all(lane["mode"] == "normal" for lane in r.lanes().values())


def test_google_rate_limit_slows_only_its_lane(
    rig: RigFactory, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 25  # per source IP per minute at the Google sim
    google = preset("google", throttle=Throttle(max_messages=limit, reply=GOOGLE_RATE_LIMITED))
    r = rig(spread(20), google=google)
    # Another sender on 127.0.0.2 already used most of Google's minute budget for that IP.
    with smtplib.SMTP("127.0.0.1", r.sims["google"].port, source_address=("127.0.0.2", 0)) as s:
        for i in range(limit - 5):
            s.sendmail("other@example.net", [f"warm{i}@gmail.example"], b"Subject: x\r\n\r\nx\r\n")
    result = r.send()

    throttled = [x for x in r.sims["google"].refusals if "4.7.28" in x.text]
    assert throttled and {x.source_ip for x in throttled} == {"127.0.0.2"}
    # The lane stopped at the first 4.7.28: only messages already in flight on its other
    # connections could still get one (google: 5 connections per lane).
    assert len(throttled) <= 5
    lanes = r.lanes()
    hit = lanes[("127.0.0.2", "google")]
    assert hit["mode"] == "suspended" and hit["rule"] == "google.rate-limited"
    start = r.clock.t - result.elapsed
    assert 600 <= hit["until"] - start <= 660  # Google: stop at least 10 minutes ...
    assert json.loads(hit["slow_limits"])["per_minute"] == 10  # ... then 10/min on 1 connection
    assert json.loads(hit["slow_limits"])["connections"] == 1
    for key, lane in lanes.items():
        if key != ("127.0.0.2", "google"):
            assert (lane["mode"], lane["ramp_factor"], lane["until"]) == ("normal", None, None)
    events = r.query("SELECT ip, provider, rule FROM lane_events")
    assert {e for e in events} == {("127.0.0.2", "google", "google.rate-limited")}

    # Everything else went out at full speed in this run, without waiting for anything.
    assert result.elapsed < 60  # nobody waited for the paused lane (10 minutes)
    for provider in ("microsoft", "yahoo"):
        assert len(r.deliveries(provider)) == 20
    # Google mail spilled over to the pool's other IP; the rest waits for the pause to end.
    states = r.states()
    google_states = Counter(s for e, s in states.items() if e.endswith("@gmail.example"))
    assert google_states["sent"] + google_states["deferred"] == 20
    assert google_states["deferred"] >= 1
    from_3 = [d for d in r.deliveries("google") if d.source_ip == "127.0.0.3"]
    from_2 = [d for d in r.deliveries("google") if d.source_ip == "127.0.0.2"]
    assert len(from_2) <= 5 and len(from_3) >= 10
    for (due,) in r.query("SELECT next_attempt_at FROM messages WHERE state = 'deferred'"):
        assert due >= hit["until"] - 1
    assert_nothing_lost(r)

    shown = lanes_json(r, capsys)
    assert shown[("127.0.0.2", "google")]["state"] == "suspended"
    assert shown[("127.0.0.3", "google")]["state"] == "normal"
    assert not shown[("127.0.0.3", "google")]["recovering"]
    assert shown[("127.0.0.3", "google")]["limits"]["connections"] == 5

    # After the pause: the lane is slowed to 10/min, never back at full speed at once. The
    # pace is measured where the sender decides it: the fake-clock time at which the lane
    # admitted each message. The sim's receipt times are later by a transit during which
    # other tasks' sleeps move the shared fake clock, so their gaps are not exact.
    admitted: list[float] = []
    lane_admit = Lane.admit

    def admit(lane: Lane, now: float) -> float:
        wait = lane_admit(lane, now)
        if wait == 0.0 and (lane.ip, lane.provider) == ("127.0.0.2", "google"):
            admitted.append(now)
        return wait

    monkeypatch.setattr(Lane, "admit", admit)
    r.clock.t = hit["until"] + 1
    result = r.send(max_time=600)
    assert result.remaining == 0
    assert_nothing_lost(r)
    lane = r.lanes()[("127.0.0.2", "google")]
    assert lane["mode"] == "slowed"
    late = [
        d for d in r.deliveries("google") if d.source_ip == "127.0.0.2" and d.time > hit["until"]
    ]
    assert len(admitted) == len(late) >= 2  # every admitted message reached the sim
    gaps = [b - a for a, b in zip(admitted, admitted[1:], strict=False)]
    assert all(gap >= 6 - 1e-6 for gap in gaps), gaps  # 10 per minute


def test_yahoo_tss04_suspends_two_hours_across_runs(rig: RigFactory, capsys) -> None:
    # Yahoo answers TSS04 past 5 messages a minute from one IP (5 parallel connections:
    # the first wave passes, the next gets TSS04).
    yahoo = preset("yahoo", throttle=Throttle(max_messages=5, reply=YAHOO_TSS04))
    r = rig(spread(20), yahoo=yahoo, rules="{limits: {yahoo: {per_minute: 8}}}")
    t0 = r.clock.t
    first = r.send()
    assert first.stop_reason == "deferred"
    tss04 = [x for x in r.sims["yahoo"].refusals if "TSS04" in x.text]
    assert {x.source_ip for x in tss04} == set(IPS)
    lanes = r.lanes()
    for ip in IPS:
        lane = lanes[(ip, "yahoo")]
        assert lane["mode"] == "suspended" and lane["rule"] == "yahoo.tss04"
        assert 2 * 3600 <= lane["until"] - t0 <= 2 * 3600 + 60
    assert len(r.deliveries("google")) == len(r.deliveries("microsoft")) == 20
    yahoo_sent = len(r.deliveries("yahoo"))
    assert yahoo_sent == 10  # 5 per IP, then TSS04
    connections = r.sims["yahoo"].connection_count

    # 10 minutes later (a cron run), with new Yahoo recipients due: nothing goes to Yahoo.
    r.clock.t = t0 + 600
    r.add_recipients(["new1@yahoo.example", "new2@yahoo.example", "new1@gmail.example"])
    second = r.send()
    assert second.sent == 1  # the Gmail one
    assert len(r.deliveries("yahoo")) == yahoo_sent
    assert r.sims["yahoo"].connection_count == connections  # not even a connection
    waiting = r.query(
        "SELECT next_attempt_at FROM messages WHERE email LIKE '%@yahoo.example' "
        "AND state = 'deferred'"
    )
    assert len(waiting) == 12
    assert all(due >= lanes[(IPS[0], "yahoo")]["until"] - 1 for (due,) in waiting)
    shown = lanes_json(r, capsys)
    assert all(shown[(ip, "yahoo")]["state"] == "suspended" for ip in IPS)

    # At +2h01 the lanes resume, ramping: a quarter of the rate (8/min -> 2/min), 1 connection
    # (the suspension ended at exactly +2h; the first +25% step comes 5 clean minutes later).
    r.clock.t = t0 + 2 * 3600 + 60
    third = r.send(max_time=1800)
    assert third.stop_reason == "finished" and third.remaining == 0
    assert len(r.deliveries("yahoo")) == 22
    assert_nothing_lost(r)
    for ip in IPS:
        lane = r.lanes()[(ip, "yahoo")]
        # Still recovering: from a quarter of the rate, +25% per clean 5 minutes.
        assert lane["mode"] == "normal" and 0.25 <= lane["ramp_factor"] < 1
        times = sorted(
            d.time
            for d in r.deliveries("yahoo")
            if d.source_ip == ip and d.time >= r.clock.t - third.elapsed
        )
        # A ramped lane: its burst (2), then one message every 30 s (the sim stamps the
        # delivery a little after the engine's permit, hence the slack).
        assert len(times) == 6
        assert times[-1] - times[0] >= (len(times) - 2) * 30 - 10
    assert not [x for x in r.sims["yahoo"].refusals if x.time > t0 + 7200]


def test_microsoft_s3150_never_suppresses(rig: RigFactory) -> None:
    microsoft = preset(
        "microsoft",
        throttle=Throttle(max_per_day=3, day_reply=MICROSOFT_BLOCK_LIST),
    )
    r = rig(["unknown-0@outlook.example", *spread(20)], microsoft=microsoft)
    result = r.send()
    s3150 = [x for x in r.sims["microsoft"].refusals if "S3150" in x.text]
    assert s3150 and all(x.code == 550 for x in s3150)
    blocked = {x.rcpt for x in s3150}
    states = r.states()
    # A block of the sending IP is never the recipient's fault.
    assert {states[rcpt] for rcpt in blocked} == {"deferred"}
    suppressed = {a for (a,) in r.query("SELECT address FROM suppression")}
    assert suppressed == {"unknown-0@outlook.example"}  # only the real 550 5.5.0
    outcomes = {o for (o,) in r.query("SELECT outcome FROM replies WHERE text LIKE '%S3150%'")}
    assert outcomes == {"deferred"}
    for ip in {x.source_ip for x in s3150}:
        lane = r.lanes()[(ip, "microsoft")]
        assert lane["mode"] == "suspended" and lane["rule"] == "microsoft.s3150"
    assert any("[ALERT]" in e and "S3150" in e for e in r.events)
    assert r.query("SELECT status FROM campaigns") == [("active",)]
    assert result.failed == 0 and len(r.deliveries("google")) == 20
    assert_nothing_lost(r)


def test_user_unknown_is_suppressed_and_skipped_next_time(rig: RigFactory) -> None:
    unknown = ["unknown-a@gmail.example", "nosuchuser-b@gmail.example"]
    r = rig([*unknown, *spread(3)])
    result = r.send()
    assert result.bounced == 2
    rows = r.query("SELECT address, reason, status FROM suppression ORDER BY address")
    assert rows == [(a, "hard_bounce", "5.1.1") for a in sorted(unknown)]
    # A second campaign to the same list never tries them again.
    (r.ws / "c.yaml").write_text((r.ws / "c.yaml").read_text().replace("name: news", "name: news2"))
    refused = len(r.sims["google"].refusals)
    second = r.send()
    assert second.sent == 9
    news2 = r.query(
        "SELECT m.email FROM messages m JOIN campaigns c ON c.id = m.campaign_id "
        "WHERE c.name = 'news2' AND m.state = 'suppressed'"
    )
    assert sorted(e for (e,) in news2) == sorted(unknown)
    assert len(r.sims["google"].refusals) == refused


def test_greylisting_delivers_after_the_named_delay(rig: RigFactory) -> None:
    # "Greylisted for 2 minutes"; the profile's own retry schedule would say 5 minutes.
    microsoft = preset("microsoft", throttle=None, greylist=Greylist(delay=120))
    r = rig(spread(4), microsoft=microsoft)
    t0 = r.clock.t
    short = r.send(max_time=60)  # ends before the greylisting does: left deferred
    assert short.sent == 8 and short.deferred == 4 and short.remaining == 4
    assert short.next_attempt_at == pytest.approx(t0 + 120, abs=5)
    full = r.send(max_time=600)  # waits for them
    assert full.stop_reason == "finished" and full.sent == 4 and full.remaining == 0
    firsts = {x.rcpt: x.time for x in r.sims["microsoft"].refusals}
    assert len(firsts) == 4
    for d in r.deliveries("microsoft"):
        assert 120 <= d.time - firsts[d.rcpt] < 130
    assert r.clock.t - t0 < 200  # waited for the named 2 minutes, not the 5-minute retry
    assert all(lane["mode"] == "normal" for lane in r.lanes().values())
    assert_nothing_lost(r)


BREAKER_2_PERCENT = "breakers: {bounce_rate: 0.02, min_sent: 150}\n"


def test_circuit_breaker_keeps_sending_at_the_bounce_threshold(rig: RigFactory) -> None:
    # 2% of min_sent 150 is 3: 3 hard bounces keep going.
    hard = [f"unknown-{i}@gmail.example" for i in range(3)]
    r = rig(hard + spread(80), profile_extra=BREAKER_2_PERCENT)
    result = r.send()
    status, _ = r.query("SELECT status, stop_reason FROM campaigns")[0]
    assert result.bounced == 3
    assert result.stop_reason == "finished" and status == "done"
    assert result.sent == 240
    assert_nothing_lost(r)


def test_circuit_breaker_stops_the_campaign_above_the_bounce_threshold(rig: RigFactory) -> None:
    # 4 hard bounces of 150 sent (2.67%) stop the campaign.
    hard = [f"unknown-{i}@gmail.example" for i in range(4)]
    r = rig(hard + spread(80), profile_extra=BREAKER_2_PERCENT)
    result = r.send()
    status, why = r.query("SELECT status, stop_reason FROM campaigns")[0]
    assert result.bounced == 4
    assert result.stop_reason == "campaign stopped" and status == "stopped"
    assert "bounce rate 2.67% is above 2%" in why and "(4 of 150 sent)" in why
    # Judged only once min_sent were sent (messages in flight then still finish), and
    # stopped before the end of the list.
    assert result.sent + result.bounced >= 150
    assert result.remaining == 240 + 4 - result.sent - result.bounced
    assert result.remaining > 0
    assert_nothing_lost(r)


def test_lanes_suspend_resume_cli_honoured_by_send(rig: RigFactory, capsys) -> None:
    r = rig(spread(6))
    assert (
        r.cli(
            "lanes",
            "suspend",
            "--ip",
            "127.0.0.2",
            "--provider",
            "yahoo",
            "--for",
            "2h",
            "--reason",
            "TS03 by hand",
        )
        == 0
    )
    shown = lanes_json(r, capsys)
    assert shown[("127.0.0.2", "yahoo")]["state"] == "suspended"
    assert shown[("127.0.0.2", "yahoo")]["reason"] == "TS03 by hand"
    assert r.query("SELECT kind, rule FROM lane_events") == [("suspended", "manual")]

    # The CLI runs on the real clock; so does this send.
    assert r.cli("send", str(r.ws / "c.yaml"), "--json", "--skip-check") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 18
    assert {d.source_ip for d in r.deliveries("yahoo")} == {"127.0.0.3"}
    assert {d.source_ip for d in r.deliveries("google")} == set(IPS)

    assert r.cli("lanes", "resume", "--ip", "127.0.0.2", "--provider", "yahoo") == 0
    shown = lanes_json(r, capsys)
    assert shown[("127.0.0.2", "yahoo")]["state"] == "normal"
    assert shown[("127.0.0.2", "yahoo")]["recovering"]
    r.add_recipients(f"late{i}@yahoo.example" for i in range(6))
    assert r.cli("send", str(r.ws / "c.yaml"), "--json", "--skip-check") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 6
    late = [d for d in r.deliveries("yahoo") if d.rcpt.startswith("late")]
    assert "127.0.0.2" in {d.source_ip for d in late}
    assert_nothing_lost(r)
