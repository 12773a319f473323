"""A throwaway mailctl workspace (profiles.yaml, a recipient CSV, one campaign) and the CLI
run against it: ``make_workspace``, ``cli``, ``send``, ``send_json``, ``summary``, ``db_states``.

The workspace's relay profile points at a simulated provider on 127.0.0.1 (see the
``sim_server`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from mailctl.cli import run

# The relay profile of every workspace, as YAML values; `make_workspace(profile=...)` changes
# or adds settings, and a setting given as None is left out (the profile's default applies).
RELAY_PROFILE: dict[str, object] = {
    "transport": "relay",
    "host": "127.0.0.1",
    "port": None,  # the server's port, given to make_workspace
    "tls": "none",
    "dns": "false",
    "preflight": "false",
    "connections": 3,
    "messages_per_connection": 7,
    "retry": "[5m, 10m, 20m]",
    "max_age": "1h",
    # The simulated server is local, not a provider: no lane pacing toward it.
    "rules": "{limits: {default: {per_minute: null}}}",
}


def make_workspace(
    tmp_path: Path,
    port: int,
    rows: int = 20,
    *,
    extra: str = "",
    profile: Mapping[str, object] | None = None,
    profile_extra: str = "",
) -> Path:
    """profiles.yaml (the relay profile toward 127.0.0.1:`port`, with `profile`'s settings
    over `RELAY_PROFILE`'s, then `profile_extra` as text), list.csv (`rows` recipients) and
    c.yaml (plus `extra`) in `tmp_path`."""
    settings = {**RELAY_PROFILE, "port": port, **(profile or {})}
    (tmp_path / "profiles.yaml").write_text(
        "default_profile: relay\nprofiles:\n  relay:\n"
        + "".join(f"    {key}: {value}\n" for key, value in settings.items() if value is not None)
        + profile_extra
    )
    lines = ["email,first_name"] + [f"user{i}@example.com,User{i}" for i in range(rows)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            name: news
            from: "News Désk <news@example.com>"
            subject: "Héllo {{ first_name }}"
            text: "Hi {{ first_name }}, unsubscribe at {{ unsubscribe_url }}"
            html: "<p>Hi {{ first_name }}</p>"
            recipients: list.csv
            unsubscribe: {url: "https://example.com/u/{{ email | urlencode }}", mailto: "u@example.com"}
            """
        )
        + extra
    )
    return tmp_path


def cli(ws: Path, *args: str) -> int:
    """mailctl with the workspace's database and profiles."""
    return run(["--db", str(ws / "m.db"), "--profiles", str(ws / "profiles.yaml"), *args])


def send(ws: Path, *args: str) -> int:
    return cli(ws, "send", str(ws / "c.yaml"), "--json", *args)


def send_json(ws: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """`send --json` that must succeed: its summary."""
    code = send(ws, *args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def summary(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def db_states(ws: Path) -> dict[str, int]:
    conn = sqlite3.connect(ws / "m.db")
    return dict(conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())
