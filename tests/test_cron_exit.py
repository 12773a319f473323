"""Cron never fails silently: mail only the operator can get moving means exit 3 and one
line on stderr, even with --quiet; mail that failed on the sending side goes again on resume.

Against real servers on loopback: an aiosmtpd relay that requires AUTH, a simulated
provider, a port nobody listens on.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailctl.sim.behaviours import AddressRule, SimBehaviour
from mailctl.sim.replies import SimReply
from tests.helpers.auth_relay import RecordingSink, running_auth_relay
from tests.helpers.workspace import cli, db_states, make_workspace

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The relay profile of these tests: two connections, one retry after 5 minutes.
RELAY = {"connections": 2, "messages_per_connection": None, "retry": "[5m]", "max_age": None}


@pytest.fixture()
def auth_relay() -> Iterator[tuple[int, RecordingSink]]:
    """A relay on loopback that takes mail only from mailer / right horse battery."""
    with running_auth_relay() as relay:
        yield relay


def _send_quiet(ws: Path) -> int:
    return cli(ws, "send", str(ws / "c.yaml"), "--quiet")


def test_wrong_password_exits_3_and_resume_sends_what_the_535_failed(
    auth_relay, tmp_path: Path, capsys, monkeypatch
) -> None:
    port, relay = auth_relay
    ws = make_workspace(
        tmp_path, port, rows=10, profile={**RELAY, "username": "mailer", "password_env": "RELAY_PW"}
    )
    monkeypatch.setenv("RELAY_PW", "wrong horse")
    assert _send_quiet(ws) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "Error: the relay refused authentication (535 5.7.8 Authentication credentials invalid)"
    )
    assert lines[0].endswith(
        "attempts refused: fix the username or password, then `mailctl campaign resume news`"
    )
    states = db_states(ws)
    assert states.get("failed", 0) >= 1 and "sent" not in states
    assert not relay.received
    # The password is fixed, the campaign resumed: every message goes, none stays failed.
    monkeypatch.setenv("RELAY_PW", "right horse battery")
    assert cli(ws, "campaign", "resume", "news") == 0
    assert f"{states['failed']} messages that failed on the sending side are queued again" in (
        capsys.readouterr().err
    )
    assert _send_quiet(ws) == 0
    assert capsys.readouterr() == ("", "")
    assert db_states(ws) == {"sent": 10}
    assert sorted(relay.received) == sorted(f"user{i}@example.com" for i in range(10))


def test_relay_on_a_closed_port_exits_3_with_one_line(tmp_path: Path, capsys) -> None:
    port = _free_port()  # bound then closed: nobody listens
    ws = make_workspace(tmp_path, port, rows=5, profile=RELAY)
    assert _send_quiet(ws) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "Error: the relay was unreachable for the whole run (connection to "
        f"127.0.0.1:{port} failed: "
    )
    assert captured.err.endswith("check its host and port\n")
    assert captured.err.count("\n") == 1
    assert db_states(ws) == {"deferred": 5}


def test_receiver_deferrals_stay_exit_0_and_silent(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule(re.compile("."), SimReply(450, "4.2.1 Mailbox busy, try later")),
            )
        )
    )
    ws = make_workspace(tmp_path, server.port, rows=4)
    assert _send_quiet(ws) == 0
    assert capsys.readouterr() == ("", "")
    assert db_states(ws) == {"deferred": 4}


def test_a_campaign_stopped_by_its_bounce_breaker_exits_3(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule(re.compile(r"^user[0-2]@"), SimReply(550, "5.1.1 No such user here")),
            )
        )
    )
    ws = make_workspace(
        tmp_path,
        server.port,
        rows=30,
        profile={**RELAY, "breakers": "{bounce_rate: 0.02, min_sent: 10}"},
    )
    assert _send_quiet(ws) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(
        r"Error: campaign news stopped: bounce rate \d+\.\d\d% is above 2% \(\d+ of \d+ sent\); "
        r"fix it, then `mailctl campaign resume news`\n",
        captured.err,
    ), captured.err
    assert db_states(ws)["bounced"] >= 1 and db_states(ws)["queued"] > 0  # stopped early
