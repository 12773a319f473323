"""A throwaway mailctl workspace (profiles.yaml, a recipient CSV, one campaign) and the CLI
run against it: ``make_workspace``, ``cli``, ``send``, ``send_json``, ``summary``, ``db_states``;
``workspace_engine`` for a send loop run in the test's own process.

The workspace's database is ``m.db`` in it, unless the ``backend`` fixture (tests/conftest.py)
chose PostgreSQL for the test: it names the database in the workspace's ``DB_URL_FILE``, and
``db_of`` / ``db_rows`` read whichever it is.

The workspace's relay profile points at a simulated provider on 127.0.0.1 (see the
``sim_server`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mailctl.cli import run
from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import Engine
from mailctl.store.base import Store

DB_URL_FILE = ".mailctl-db-url"


def db_of(ws: Path) -> str:
    """The workspace's database: the URL the ``backend`` fixture chose, else ``ws/m.db``."""
    marker = ws / DB_URL_FILE
    return marker.read_text().strip() if marker.exists() else str(ws / "m.db")


def db_rows(ws: Path, sql: str) -> list[tuple]:
    """Rows of one plain SQL query (no parameters) on the workspace's database, either
    backend: what a test checks beneath the store's interface."""
    target = db_of(ws)
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]
    conn = sqlite3.connect(target)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


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
    return run(["--db", db_of(ws), "--profiles", str(ws / "profiles.yaml"), *args])


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
    return dict(db_rows(ws, "SELECT state, count(*) FROM messages GROUP BY state"))


def reputation_workspace(
    ws: Path,
    port: int,
    addresses: list[str],
    *,
    source: str = "127.0.0.4",
    domain: str = "rep.example",
    campaigns: tuple[str, ...] = ("spring", "summer"),
) -> None:
    """profiles.yaml (a direct profile sending from `source`, its mail for `domain` to the
    reputation sim on `port`, nothing else configured), list.csv (`addresses`) and one
    campaign YAML per name in `campaigns`, each to the whole list."""
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            default_profile: direct
            profiles:
              direct:
                transport: direct
                dns: false
                preflight: false
                helo: mta.example.com
                pools:
                  marketing: [{source}]
                mx_override: {{{domain}: "reputation@127.0.0.1:{port}"}}
            """
        )
    )
    (ws / "list.csv").write_text("email\n" + "".join(f"{a}\n" for a in addresses))
    for campaign in campaigns:
        (ws / f"{campaign}.yaml").write_text(
            textwrap.dedent(
                f"""\
                name: {campaign}
                from: "News <news@example.com>"
                subject: "{campaign} news"
                text: "Hello {{{{ email }}}}, this season's news. {{{{ unsubscribe_url }}}}"
                recipients: list.csv
                unsubscribe: {{url: "https://example.com/u/{{{{ email | urlencode }}}}"}}
                """
            )
        )


def postfix_workspace(
    ws: Path, port: int, rows: int, *, connections: int = 4, transactional: bool = False
) -> Path:
    """profiles.yaml (a relay profile to 127.0.0.1:`port`, usually a real Postfix:
    `connections` sessions, no configured rate, so whatever limits the sending is the
    receiver's), list.csv (`rows`
    addresses) and c.yaml: marketing mail with an unsubscribe link, or `transactional` mail
    without one."""
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            default_profile: relay
            profiles:
              relay:
                transport: relay
                host: 127.0.0.1
                port: {port}
                tls: none
                dns: false
                preflight: false
                connections: {connections}
                messages_per_connection: 1000
                retry: [1m, 2m]
                max_age: 1h
                rules: {{limits: {{default: {{per_minute: null}}}}}}
            """
        )
    )
    lines = ["email"] + [f"user{i}@example.com" for i in range(rows)]
    (ws / "list.csv").write_text("\n".join(lines) + "\n")
    kind = (
        'text: "Hi"\nclass: transactional\n'
        if transactional
        else 'text: "Hi, unsubscribe at {{ unsubscribe_url }}"\n'
        'unsubscribe: {url: "https://example.com/u/{{ email | urlencode }}"}\n'
    )
    (ws / "c.yaml").write_text(
        'name: news\nfrom: "News <news@example.com>"\nsubject: "Hello"\n'
        + kind
        + "recipients: list.csv\n"
    )
    return ws


def workspace_engine(
    store: Store, ws: Path, options: SendOptions, *, engine_store: Any = None
) -> Engine:
    """The workspace's campaign (c.yaml, profiles.yaml) prepared in ``store`` and a send run
    of it on the real clock, as host mta1; ``engine_store``: what the engine is given instead
    of ``store`` (a wrapper around it)."""
    prepared = prepare(store, ws / "c.yaml", load_profiles(ws / "profiles.yaml"), now=time.time())
    return Engine(
        engine_store if engine_store is not None else store,
        [prepared.job],
        run_id=store.start_run(1, "mta1", time.time()),
        options=options,
    )
