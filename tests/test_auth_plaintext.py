"""AUTH never sends a password in cleartext beyond loopback unless the profile allows it
(`allow_plaintext_auth: true`), and then the run says so."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.engine import Engine
from mailctl.delivery.transport import plaintext_auth_allowed, relay_destination
from mailctl.store.sqlite import SqliteStore
from tests.helpers.workspace import cli, make_workspace


def relay(ws: Path, host: str, extra: str = "") -> None:
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(f"""\
        default_profile: relay
        profiles:
          relay:
            transport: relay
            host: {host}
            port: 2525
            tls: none
            username: mailer
            password_env: RELAY_PW
            dns: false
            preflight: false
            timeout: 0.3s
        """)
        + textwrap.indent(extra, "    ")
    )


def test_cleartext_auth_to_a_remote_relay_is_a_config_error(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("RELAY_PW", "hunter2-secret")
    ws = make_workspace(tmp_path, 1, rows=1)
    relay(ws, "192.0.2.1")
    code = cli(ws, "send", str(ws / "c.yaml"))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == (
        f"Error: {ws / 'profiles.yaml'}:8: profiles.relay.username: AUTH would send the"
        " password in cleartext to 192.0.2.1: use tls: starttls or tls: implicit, or set"
        " allow_plaintext_auth: true\n"
    )
    assert "hunter2" not in captured.out + captured.err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_cleartext_auth_to_loopback_is_allowed(tmp_path: Path, monkeypatch, host: str) -> None:
    monkeypatch.setenv("RELAY_PW", "x")
    ws = make_workspace(tmp_path, 1, rows=1)
    relay(ws, host)
    profile = load_profiles(ws / "profiles.yaml").get("relay")
    assert plaintext_auth_allowed(relay_destination(profile, None))


def test_allowed_cleartext_auth_is_said_in_the_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_PW", "hunter2-secret")
    ws = make_workspace(tmp_path, 1, rows=1)
    relay(ws, "192.0.2.1", "allow_plaintext_auth: true\n")
    profiles = load_profiles(ws / "profiles.yaml")
    assert plaintext_auth_allowed(relay_destination(profiles.get("relay"), None))
    said: list[str] = []
    with SqliteStore.open(ws / "m.db") as store:
        prepared = prepare(store, ws / "c.yaml", profiles, now=time.time())
        run_id = store.start_run(1, "test", time.time())
        engine = Engine(store, [prepared.job], run_id=run_id, on_event=said.append)
        summary = asyncio.run(engine.run())
    assert summary.sent == 0
    assert said[0] == (
        "warning: AUTH to 192.0.2.1:2525 may go in cleartext (allow_plaintext_auth: true):"
        " the password can be read on the way"
    )
    assert not any("hunter2" in line for line in said)


def test_send_warns_on_stderr_when_cleartext_auth_is_allowed(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("RELAY_PW", "hunter2-secret")
    ws = make_workspace(tmp_path, 1, rows=1)
    relay(ws, "192.0.2.1", "allow_plaintext_auth: true\n")
    code = cli(ws, "send", str(ws / "c.yaml"), "--json")
    err = capsys.readouterr().err
    assert code == 3  # 192.0.2.1 (TEST-NET) never answers: the operator must look
    assert (
        "Warning: AUTH to 192.0.2.1:2525 may go in cleartext (allow_plaintext_auth: true):"
        " the password can be read on the way\n"
    ) in err
    assert "hunter2" not in err
