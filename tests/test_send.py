"""End-to-end sending against simulated providers on 127.0.0.1 (real SMTP), on each backend
(the `backend` fixture: a SQLite file, and a database on a throwaway PostgreSQL cluster)."""

from __future__ import annotations

import asyncio
import email
import json
import os
import socket
from email import policy
from pathlib import Path

import pytest

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import Engine
from mailctl.message.tracking import TRACKING_RE
from mailctl.sim.behaviours import AddressRule, SimBehaviour
from mailctl.sim.replies import SimReply
from mailctl.store.factory import open_store
from tests.helpers.clock import FakeClock
from tests.helpers.workspace import cli, db_of, db_rows, db_states, make_workspace, send, summary

pytestmark = pytest.mark.usefixtures("backend")


def test_send_resumes_without_resending_and_picks_up_new_rows(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=25)
    assert send(ws) == 0
    result = summary(capsys)
    assert (result["queued"], result["sent"], result["remaining"]) == (25, 25, 0)
    assert result["stop_reason"] == "finished"
    assert sorted(d.rcpt for d in server.deliveries) == sorted(
        f"user{i}@example.com" for i in range(25)
    )
    # Connections are reused: 25 messages over at most 7 per connection.
    assert server.sim.connection_count <= 3 + 25 // 7 + 1

    assert send(ws) == 0
    assert summary(capsys)["sent"] == 0
    assert len(server.deliveries) == 25

    with (ws / "list.csv").open("a") as f:
        f.write("late1@example.com,Late\nlate2@example.com,Later\n")
    assert send(ws) == 0
    assert summary(capsys)["sent"] == 2
    assert sorted(d.rcpt for d in server.deliveries[25:]) == [
        "late1@example.com",
        "late2@example.com",
    ]


def test_rendered_message_is_correct_mime(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(maildir=tmp_path / "box")
    ws = make_workspace(tmp_path, server.port, rows=2)
    assert send(ws) == 0
    capsys.readouterr()
    files = sorted((tmp_path / "box" / "new").iterdir())
    assert len(files) == 2
    msg = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert str(msg["Subject"]).startswith("Héllo User")
    assert str(msg["From"]) == "News Désk <news@example.com>"
    tracking = str(msg["X-Mailctl-ID"])
    assert TRACKING_RE.fullmatch(tracking)
    assert str(msg["Message-ID"]) == f"<{tracking}@example.com>"
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert "https://example.com/u/user" in str(msg["List-Unsubscribe"])
    assert "mailto:u@example.com" in str(msg["List-Unsubscribe"])
    assert msg["Date"] is not None
    text = msg.get_body(("plain",)).get_content()
    assert text.startswith("Hi User") and "https://example.com/u/user" in text
    assert msg.get_body(("html",)).get_content().startswith("<p>Hi User")
    ids = {d.mailctl_id for d in server.deliveries}
    assert len(ids) == 2


def test_replies_bounce_and_suppress_or_defer(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule("user0@example.com", SimReply(550, "5.1.1 <{rcpt}>: user unknown")),
                AddressRule("user2@example.com", SimReply(451, "4.3.0 try later")),
            ),
            drop_data_for=("user3@example.com",),
        )
    )
    ws = make_workspace(tmp_path, server.port, rows=8)
    assert send(ws) == 0
    result = summary(capsys)
    assert (result["sent"], result["bounced"], result["failed"], result["deferred"]) == (5, 1, 0, 2)
    assert result["stop_reason"] == "deferred"
    assert db_states(ws) == {"sent": 5, "bounced": 1, "deferred": 2}
    with open_store(db_of(ws)) as store:
        assert store.suppression_for("user0@example.com")["reason"] == "hard_bounce"
        assert store.suppression_for("user3@example.com") is None
    delivered = {d.rcpt for d in server.deliveries}
    assert "user3@example.com" not in delivered  # dropped mid-DATA: never counted as sent


def test_sender_scoped_refusal_fails_and_stops_campaign(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule(
                    "user1@example.com",
                    SimReply(
                        550,
                        "5.7.26 Unauthenticated email from example.com is not accepted "
                        "due to domain's DMARC policy.",
                    ),
                ),
            ),
        )
    )
    ws = make_workspace(tmp_path, server.port, rows=30)
    assert send(ws) == 3  # cron sees it: the operator must act
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert captured.err == (
        "Error: campaign news stopped: 550 5.7.26 "
        "Unauthenticated email from example.com is not accepted due to domain's DMARC "
        "policy.; fix it, then `mailctl campaign resume news`\n"
    )
    assert result["failed"] == 1 and result["stop_reason"] == "campaign stopped"
    assert result["sent"] < 29 and result["remaining"] == 29 - result["sent"]
    with open_store(db_of(ws)) as store:
        assert store.suppression_for("user1@example.com") is None  # the sender's fault
        row = store.get_campaign("news")
    assert row["status"] == "stopped" and "DMARC" in row["stop_reason"]
    # A stopped campaign is not sent by cron until someone resumes it deliberately.
    assert cli(ws, "send", "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 0


def test_suppressed_recipients_are_never_sent(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=5)
    with open_store(db_of(ws)) as store:
        store.suppress("user1@example.com", "unsubscribe")
        store.suppress("*@example.org", "manual")
    with (ws / "list.csv").open("a") as f:
        f.write("x@example.org,X\n")
    assert send(ws) == 0
    result = summary(capsys)
    assert (result["sent"], result["suppressed"]) == (4, 2)
    assert {d.rcpt for d in server.deliveries} == {f"user{i}@example.com" for i in (0, 2, 3, 4)}
    assert db_states(ws)["suppressed"] == 2


def test_suppression_is_checked_again_before_delivery(sim_server, tmp_path: Path) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=3)
    profiles = load_profiles(ws / "profiles.yaml")
    with open_store(db_of(ws)) as store:
        prepared = prepare(store, ws / "c.yaml", profiles, now=1_800_000_000.0)
        store.suppress("user2@example.com", "complaint")  # arrives after queueing
        run_id = store.start_run(1, "test", 1_800_000_000.0)
        engine = Engine(store, [prepared.job], run_id=run_id, clock=FakeClock())
        result = asyncio.run(engine.run())
    assert (result.sent, result.suppressed) == (2, 1)
    assert "user2@example.com" not in {d.rcpt for d in server.deliveries}


def test_retry_schedule_then_expiry_with_injected_clock(sim_server, tmp_path: Path) -> None:
    clock = FakeClock()
    server = sim_server(
        SimBehaviour(rcpt_rules=(AddressRule("user0@example.com", SimReply(451, "4.7.1 busy")),)),
        clock=clock,
    )
    ws = make_workspace(tmp_path, server.port, rows=2)
    profiles = load_profiles(ws / "profiles.yaml")
    with open_store(db_of(ws)) as store:
        prepared = prepare(store, ws / "c.yaml", profiles, now=clock.now())
        run_id = store.start_run(1, "test", clock.now())
        engine = Engine(
            store,
            [prepared.job],
            run_id=run_id,
            clock=clock,
            options=SendOptions(max_time=4 * 3600),
        )
        result = asyncio.run(engine.run())
    (row,) = db_rows(
        ws, "SELECT state, attempts, last_code FROM messages WHERE email = 'user0@example.com'"
    )
    # 5m, 10m, 20m, 20m ... until max_age (1h) is passed: then expired, not failed.
    assert row[0] == "expired" and row[2] == 451
    assert 4 <= row[1] <= 6
    assert result.sent == 1 and result.expired == 1
    attempts = [r for r in server.refusals if r.rcpt == "user0@example.com"]
    assert len(attempts) == row[1]
    # The sim stamps attempts on the engine's clock: each retry waited for its step of the
    # schedule (less the +-15% jitter), and all of them fit in max_age.
    gaps = [b.time - a.time for a, b in zip(attempts, attempts[1:], strict=False)]
    steps = [300, 600, 1200, 1200, 1200][: len(gaps)]
    assert all(gap >= 0.85 * step for gap, step in zip(gaps, steps, strict=True)), gaps
    assert attempts[-1].time - attempts[0].time <= 3600


def test_connect_421_defers_everything(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(SimBehaviour(connect_reply=SimReply(421, "4.7.0 Try again later")))
    ws = make_workspace(tmp_path, server.port, rows=4)
    assert send(ws) == 0
    result = summary(capsys)
    assert result["sent"] == 0 and result["remaining"] == 4
    assert db_states(ws) == {"deferred": 4}
    assert not server.deliveries


def test_dry_run_changes_nothing(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=5)
    code = cli(ws, "send", str(ws / "c.yaml"), "--dry-run", "--show", "2")
    out = capsys.readouterr()
    assert code == 0
    assert out.out.count("RCPT TO:<") == 2 and "Subject: =?utf-8?" in out.out
    assert "5 recipients would be queued" in out.err
    assert not (ws / "m.db").exists()
    assert not server.deliveries


def test_missing_template_field_is_an_error_before_sending(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=3)
    text = (ws / "c.yaml").read_text().replace("Hi {{ first_name }},", "Hi {{ nickname }},")
    (ws / "c.yaml").write_text(text)
    assert send(ws) == 2
    err = capsys.readouterr().err
    assert "'nickname'" in err and "user0@example.com" in err
    assert not server.deliveries
    code = cli(ws, "send", str(ws / "c.yaml"), "--dry-run")
    assert code == 2 and "'nickname'" in capsys.readouterr().err


def test_changed_campaign_needs_update(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(
        SimBehaviour(rcpt_rules=(AddressRule("user0@example.com", SimReply(451, "4.3.0 later")),))
    )
    ws = make_workspace(tmp_path, server.port, rows=3)
    assert send(ws) == 0
    capsys.readouterr()
    (ws / "c.yaml").write_text((ws / "c.yaml").read_text().replace("Héllo", "Hello again"))
    assert send(ws) == 2
    err = capsys.readouterr().err
    assert "changed since it started (subject)" in err and "--update" in err
    assert send(ws, "--update") == 0
    capsys.readouterr()
    versions = dict(db_rows(ws, "SELECT email, content_version FROM messages"))
    assert versions["user0@example.com"] == 2 and versions["user1@example.com"] == 1


def test_second_run_is_locked_out(sim_server, tmp_path: Path, capsys, backend: str) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=2)
    with open_store(db_of(ws)) as store, store.send_lock():
        assert send(ws) == 75
        holder = (
            f"on host {socket.gethostname()} holds {db_of(ws)}"  # PostgreSQL: one run per host
            if backend == "postgresql"
            else f"holds {db_of(ws)} (pid {os.getpid()})"
        )
        assert capsys.readouterr().err == (
            f"Error: another mailctl run {holder}; try again when it finishes\n"
        )
    assert send(ws) == 0


def test_limit_stops_early_and_a_paused_campaign_waits_for_resume(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=10)
    assert send(ws, "--limit", "4") == 0
    result = summary(capsys)
    assert (result["sent"], result["remaining"], result["stop_reason"]) == (4, 6, "limit")
    assert cli(ws, "campaign", "pause", "news") == 0
    assert cli(ws, "send", "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 0
    assert cli(ws, "campaign", "resume", "news") == 0
    assert cli(ws, "send", "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 6
    assert cli(ws, "campaign", "show", "news", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "done" and shown["counts"]["sent"] == 10
    assert cli(ws, "campaign", "cancel", "nope") == 1
    assert len(server.deliveries) == 10


def test_suspended_lane_defers_and_resume_releases_its_mail(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=4)
    # A relay profile without pools sends from "0.0.0.0"; with DNS off a domain is its lane.
    assert (
        cli(
            ws,
            "lanes",
            "suspend",
            "--ip",
            "0.0.0.0",
            "--provider",
            "example.com",
            "--for",
            "2h",
            "--reason",
            "operator says wait",
        )
        == 0
    )
    capsys.readouterr()
    assert send(ws) == 0
    result = summary(capsys)
    assert (result["sent"], result["remaining"], result["stop_reason"]) == (0, 4, "deferred")
    assert not server.deliveries
    reasons = {r[0] for r in db_rows(ws, "SELECT reason FROM messages")}
    ((attempts,),) = db_rows(ws, "SELECT max(attempts) FROM messages")
    assert reasons == {"mailctl"} and attempts == 0  # mailctl's own deferral: no attempt
    assert cli(ws, "lanes", "resume", "--ip", "0.0.0.0", "--provider", "example.com") == 0
    assert "4 waiting messages are due now" in capsys.readouterr().err
    assert send(ws) == 0
    assert summary(capsys)["sent"] == 4
    assert len(server.deliveries) == 4


def test_send_all_skips_a_changed_campaign_but_sends_the_others(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server(
        SimBehaviour(rcpt_rules=(AddressRule("user0@example.com", SimReply(451, "4.3.0 later")),))
    )
    ws = make_workspace(tmp_path, server.port, rows=2)
    other = ws / "other.yaml"
    other.write_text((ws / "c.yaml").read_text().replace("name: news", "name: other"))
    assert send(ws) == 0  # news: user0 deferred
    assert cli(ws, "send", str(other), "--json") == 0
    capsys.readouterr()
    (ws / "c.yaml").write_text((ws / "c.yaml").read_text().replace("Héllo", "Changed"))
    with (ws / "list.csv").open("a") as f:
        f.write("late@example.com,Late\n")
    assert cli(ws, "send", "--all", "--json") == 0
    out = capsys.readouterr()
    assert "campaign 'news' skipped" in out.err and "--update" in out.err
    assert json.loads(out.out)["sent"] == 1  # the other campaign's new row still went out
