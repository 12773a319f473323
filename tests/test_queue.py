"""Every deferral says why, and the queue can be inspected and steered (`mailctl queue`).

A cold IP (127.0.0.2, bound on loopback) sends direct to a simulated provider: its warm-up
cap lets a few messages go and keeps the rest for later window slots. Real SQLite, real
SMTP; the CLI as cron runs it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
from pathlib import Path

import pytest

from mailctl.sim.behaviours import AddressRule, SimBehaviour
from mailctl.sim.replies import SimReply
from tests.helpers.workspace import cli, db_states

COLD = "127.0.0.2"


pytestmark = pytest.mark.usefixtures("backend")  # SQLite and PostgreSQL


def _warmup_workspace(tmp_path: Path, port: int, rows: int = 20, cap: int | None = 4) -> Path:
    """A direct profile sending from one IP; with a warm-up of ``cap`` messages today
    spread over the whole day (None: no warm-up)."""
    today = dt.datetime.now(dt.UTC).date()
    warmup = (
        f"""
                      warmup: {{volumes: [{cap}, {cap * 2}], start: {today.isoformat()},
                               target_daily: {cap * 2},
                               window: {{start: 0, end: 24, timezone: UTC}}}}"""
        if cap
        else ""
    )
    (tmp_path / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            default_profile: direct
            profiles:
              direct:
                transport: direct
                dns: false
                helo: mta.example.com
                retry: [5m, 10m]
                max_age: 2d
                rules: {{limits: {{default: {{per_minute: null}}}}}}
                mx_override:
                  example.com: "sandbox@127.0.0.1:{port}"
                  example.org: "sandbox@127.0.0.1:{port}"
                pools:
                  marketing:
                    - ip: {COLD}{warmup}
            """
        )
    )
    emails = [f"user{i}@example.com" for i in range(rows - 2)]
    emails += ["Busy@Example.org", "other@example.org"]
    (tmp_path / "list.csv").write_text("\n".join(["email", *emails]) + "\n")
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            name: news
            from: "News <news@example.com>"
            subject: "News"
            text: "Hello {{ email }}"
            recipients: list.csv
            unsubscribe: {url: "https://example.com/u", mailto: "u@example.com"}
            """
        )
    )
    return tmp_path


WAITING_FOR_SLOTS = f"warm-up: {COLD}'s window slots"
AT_TODAYS_CAP = f"warm-up: {COLD} at today's cap for sandbox"


def test_send_campaign_show_and_report_say_why_messages_wait(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server(SimBehaviour())
    ws = _warmup_workspace(tmp_path, server.port, rows=20, cap=4)
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    sent = result["sent"]
    assert 1 <= sent <= 4 and len(server.deliveries) == sent and result["deferred"] == 20 - sent
    # 16 past today's cap of 4; what the cap allows but the window has not reached yet
    # waits for its slot.
    expected = [{"reason": AT_TODAYS_CAP, "count": 16}]
    if sent < 4:
        expected.append({"reason": WAITING_FOR_SLOTS, "count": 4 - sent})
    assert result["deferral_reasons"] == expected
    # The table form says it too.
    assert cli(ws, "send", str(ws / "c.yaml")) == 0
    out = capsys.readouterr().out
    assert "Top deferral reasons" in out and AT_TODAYS_CAP in out
    assert cli(ws, "campaign", "show", "news", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deferral_reasons"] == expected
    assert cli(ws, "report", "news", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deferral_reasons"] == expected
    assert cli(ws, "report", "news") == 0
    tables = capsys.readouterr().out
    assert "Why deferred messages wait" in tables and AT_TODAYS_CAP in tables


def test_queue_summary_list_retry_and_drop(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule(re.compile("^busy@", re.I), SimReply(451, "4.3.0 Try again later")),
            )
        )
    )
    ws = _warmup_workspace(tmp_path, server.port, rows=6, cap=None)
    assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
    assert db_states(ws) == {"sent": 5, "deferred": 1}
    # One message waits, after a 451: the summary by lane and by domain, with its reason.
    assert cli(ws, "queue", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["waiting"] == 1
    (group,) = summary["groups"]
    assert (group["campaign"], group["lane"], group["kind"], group["count"]) == (
        "news",
        f"{COLD} -> sandbox",
        "retry after 451 4.3.0",
        1,
    )
    assert re.fullmatch(r"retry 1 at \d\d:\d\d after 451 4\.3\.0 Try again later", group["example"])
    assert group["next_attempt_at"] > group["oldest"]
    assert cli(ws, "queue", "--by", "domain", "--json") == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["domain"] == "example.org"
    # list: filters by address in any case, by reason text, and --limit.
    assert cli(ws, "queue", "list", "--address", "BUSY@example.ORG", "--json") == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["email"], row["state"], row["attempts"]) == ("Busy@example.org", "deferred", 1)
    assert cli(ws, "queue", "list", "--reason", "warm-up", "--json") == 0
    assert capsys.readouterr().out == ""
    # retry: due now, and the next run tries it at once (still refused: deferred again).
    assert cli(ws, "queue", "retry", "--domain", "Example.ORG", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"retried": 1}
    assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
    assert cli(ws, "queue", "list", "--json") == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["attempts"] == 2 and row["reason"].startswith("retry 2 at ")
    # drop: needs a target; by domain it cancels the message by hand, never sent.
    assert cli(ws, "queue", "drop") == 2
    assert "queue drop needs --campaign, --domain, --provider or --address" in (
        capsys.readouterr().err
    )
    assert cli(ws, "queue", "drop", "--domain", "example.org") == 0
    assert capsys.readouterr().err == "1 waiting messages dropped by hand\n"
    assert db_states(ws) == {"sent": 5, "cancelled": 1}
    assert cli(ws, "queue") == 0
    assert capsys.readouterr().out == "the queue is empty\n"
    assert cli(ws, "campaign", "show", "news", "--json") == 0
    assert json.loads(capsys.readouterr().out)["counts"]["cancelled"] == 1


def test_every_queue_command_takes_the_five_filters(tmp_path: Path, capsys) -> None:
    # The summary, list, retry and drop: each hands the filters it was given to the query
    # (an unknown campaign, a bad domain and a bad address are refused by every one).
    assert cli(tmp_path, "queue", "list", "--json") == 0  # an empty database
    assert capsys.readouterr().out == ""
    for command in ([], ["list"], ["retry"], ["drop"]):
        assert cli(tmp_path, "queue", *command, "--campaign", "nope") == 1
        assert capsys.readouterr().err == "Error: no campaign named 'nope'\n"
        assert cli(tmp_path, "queue", *command, "--domain", "not a domain") == 2
        assert capsys.readouterr().err == "Error: --domain: 'not a domain' is not a domain\n"
        assert cli(tmp_path, "queue", *command, "--address", "nobody") == 2
        assert capsys.readouterr().err.startswith("Error: --address: ")
    # drop needs a target: a provider is one, a reason alone is not.
    assert cli(tmp_path, "queue", "drop", "--reason", "421") == 2
    assert "queue drop needs --campaign, --domain, --provider or --address" in (
        capsys.readouterr().err
    )
    assert cli(tmp_path, "queue", "drop", "--provider", "google", "--reason", "421") == 0
    assert capsys.readouterr().err == "0 waiting messages dropped by hand\n"
