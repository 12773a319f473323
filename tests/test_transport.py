"""Relay delivery options against real SMTP servers: STARTTLS and AUTH."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.delivery.transport import _dot_stuffed
from mailctl.sim.behaviours import SimBehaviour, SimTls
from mailctl.store.sqlite import SqliteStore
from tests.helpers.auth_relay import RecordingSink, running_auth_relay
from tests.helpers.workspace import cli, db_states, make_workspace, send_json


def relay_profile(ws: Path, port: int, extra: str) -> None:
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(f"""\
        default_profile: relay
        profiles:
          relay:
            transport: relay
            host: 127.0.0.1
            port: {port}
            dns: false
            preflight: false
            retry: [5m]
        """)
        + textwrap.indent(textwrap.dedent(extra), "    ")
    )


def test_starttls_required_and_used(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(SimBehaviour(), tls=SimTls.REQUIRE)
    ws = make_workspace(tmp_path, server.port, rows=3)
    relay_profile(ws, server.port, "tls: starttls\ntls_verify: false\n")
    assert send_json(ws, capsys)["sent"] == 3
    assert len(server.deliveries) == 3


def test_starttls_required_but_not_offered_defers(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(SimBehaviour())
    ws = make_workspace(tmp_path, server.port, rows=2)
    relay_profile(ws, server.port, "tls: starttls\ntls_required: true\n")
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 3
    captured = capsys.readouterr()
    # Connections open one at a time (slow start): after the first fails the group backs
    # off, so the second message waits without a futile second connection.
    assert captured.err == (
        f"Error: TLS is required but failed (127.0.0.1:{server.port}: STARTTLS not offered and "
        "TLS is required); 1 attempts failed: fix the relay's TLS or the profile's tls "
        "settings\n"
    )
    result = json.loads(captured.out)
    assert result["sent"] == 0 and result["remaining"] == 2
    assert db_states(ws) == {"deferred": 2}
    assert not server.deliveries
    with SqliteStore.open(ws / "m.db") as store:
        reply = store.conn.execute("SELECT last_reply FROM messages LIMIT 1").fetchone()[0]
    assert "STARTTLS not offered" in reply


def test_opportunistic_starttls_sends_in_clear_when_not_offered(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server(SimBehaviour())
    ws = make_workspace(tmp_path, server.port, rows=2)
    relay_profile(ws, server.port, "tls: starttls\ntls_required: false\n")
    assert send_json(ws, capsys)["sent"] == 2


@pytest.fixture()
def auth_server() -> Iterator[tuple[int, RecordingSink]]:
    """A relay on loopback that takes mail only from mailer / right horse battery."""
    with running_auth_relay() as relay:
        yield relay


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_with_password_from_environment(
    auth_server, tmp_path: Path, capsys, monkeypatch
) -> None:
    port, handler = auth_server
    ws = make_workspace(tmp_path, port, rows=2)
    relay_profile(ws, port, "tls: none\nusername: mailer\npassword_env: RELAY_PW\n")
    monkeypatch.setenv("RELAY_PW", "right horse battery")
    assert send_json(ws, capsys)["sent"] == 2
    assert sorted(handler.received) == ["user0@example.com", "user1@example.com"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_password_stops_without_suppressing_or_printing_it(
    auth_server, tmp_path: Path, capsys, monkeypatch
) -> None:
    port, handler = auth_server
    ws = make_workspace(tmp_path, port, rows=2)
    relay_profile(ws, port, "tls: none\nusername: mailer\npassword_env: RELAY_PW\n")
    monkeypatch.setenv("RELAY_PW", "s3cret-wrong-pass")
    code = run(
        [
            "--debug",
            "--db",
            str(ws / "m.db"),
            "--profiles",
            str(ws / "profiles.yaml"),
            "send",
            str(ws / "c.yaml"),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 3
    assert "s3cret-wrong-pass" not in captured.out + captured.err
    result = json.loads(captured.out)
    assert result["sent"] == 0 and not handler.received
    assert result["stop_reason"] == "campaign stopped"
    with SqliteStore.open(ws / "m.db") as store:
        assert store.get_campaign("news")["status"] == "stopped"
        assert store.suppression_for("user0@example.com") is None
        assert "s3cret-wrong-pass" not in " ".join(
            str(v) for row in store.conn.execute("SELECT * FROM replies") for v in row
        )


def test_unset_password_variable_is_a_config_error(tmp_path: Path, capsys, monkeypatch) -> None:
    ws = make_workspace(tmp_path, 1, rows=1)
    relay_profile(ws, 1, "tls: none\nusername: mailer\npassword_env: RELAY_PW_UNSET\n")
    monkeypatch.delenv("RELAY_PW_UNSET", raising=False)
    code = cli(ws, "send", str(ws / "c.yaml"))
    assert code == 2
    assert "RELAY_PW_UNSET is not set" in capsys.readouterr().err


def test_a_server_that_hangs_times_out_into_a_deferral(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(SimBehaviour(delays={"DATA": 5}))
    ws = make_workspace(tmp_path, server.port, rows=1)
    relay_profile(ws, server.port, "tls: none\ntimeout: 0.3s\n")
    result = send_json(ws, capsys)
    assert result["sent"] == 0 and result["deferred"] == 1
    with SqliteStore.open(ws / "m.db") as store:
        state, reply = store.conn.execute("SELECT state, last_reply FROM messages").fetchone()
    assert state == "deferred" and "timeout" in reply.lower()


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),  # already CRLF: as it is
        (b"a\nb", b"a\r\nb\r\n.\r\n"),  # bare LF, no final line end
        (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),  # bare CR
        (b"a\r\n\r\nb\n", b"a\r\n\r\nb\r\n.\r\n"),  # mixed
        (b".a\r\n", b"..a\r\n.\r\n"),  # a dot first of all
        (b"a\r\n.\r\n..b\r\n", b"a\r\n..\r\n...b\r\n.\r\n"),  # dots after line ends
        (b"a\n.b", b"a\r\n..b\r\n.\r\n"),  # a dot after a bare LF
        (b"", b".\r\n"),
    ],
)
def test_the_text_goes_out_with_crlf_line_ends_and_leading_dots_doubled(
    data: bytes, wire: bytes
) -> None:
    assert _dot_stuffed(data) == wire
