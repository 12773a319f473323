"""The smaller operator complaints of issue #13 ("Why" 8 and 9), each through the CLI as an
operator runs it: real SQLite files, real SMTP (simulated providers on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

from mailctl.store.sqlite import SqliteStore
from tests.helpers.workspace import cli, make_workspace, send_json

REPO = Path(__file__).resolve().parent.parent
COLD = "127.0.0.2"


# ------------------------------------------------------------------------------ send --dry-run


def test_dry_run_of_a_finished_campaign_queues_nothing(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=6)
    assert send_json(ws, capsys)["sent"] == 6
    assert cli(ws, "send", str(ws / "c.yaml"), "--dry-run", "--show", "2") == 0
    out = capsys.readouterr()
    assert out.out == ""  # nothing would be sent, so nothing is shown
    assert out.err.strip().endswith(
        "dry run: 0 recipients would be queued for news (6 already have a message from an "
        "earlier run); nothing was sent"
    )
    # A new row is the one a real run would queue.
    with (ws / "list.csv").open("a") as f:
        f.write("late@example.com,Late\n")
    assert cli(ws, "send", str(ws / "c.yaml"), "--dry-run") == 0
    out = capsys.readouterr()
    assert out.out.count("RCPT TO:<") == 1 and "RCPT TO:<late@example.com>" in out.out
    assert "dry run: 1 recipients would be queued for news (6 already" in out.err
    assert len(server.deliveries) == 6


def test_dry_run_does_not_need_the_relay_password(
    sim_server, tmp_path: Path, capsys, monkeypatch
) -> None:
    server = sim_server()
    ws = make_workspace(
        tmp_path, server.port, rows=3, profile_extra="    password_env: NO_SUCH_PW\n"
    )
    text = (
        (ws / "profiles.yaml")
        .read_text()
        .replace("    password_env", "    username: news\n    password_env")
    )
    (ws / "profiles.yaml").write_text(text)
    monkeypatch.delenv("NO_SUCH_PW", raising=False)
    assert cli(ws, "send", str(ws / "c.yaml"), "--dry-run") == 0
    assert "dry run: 3 recipients would be queued for news; nothing was sent" in (
        capsys.readouterr().err
    )
    # A real run still needs it, and says which variable.
    assert cli(ws, "send", str(ws / "c.yaml")) == 2
    assert "environment variable NO_SUCH_PW is not set" in capsys.readouterr().err


# ------------------------------------------------------------------------------- recipients


def test_recipients_list_json_honours_limit(sim_server, tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 25, rows=8)
    assert cli(ws, "recipients", "import", str(ws / "list.csv"), "--list", "l") == 0
    capsys.readouterr()
    assert cli(ws, "recipients", "list", "--json", "--limit", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["email"] for line in lines] == [
        "user0@example.com",
        "user1@example.com",
        "user2@example.com",
    ]
    assert cli(ws, "recipients", "list", "--json") == 0  # all without --limit
    assert len(capsys.readouterr().out.splitlines()) == 8


# ------------------------------------------------------------------------------------ rules


def test_rules_test_reports_the_reply_code(tmp_path: Path, capsys) -> None:
    assert cli(tmp_path, "rules", "test", "421 4.7.28 Our system has detected", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["code"], data["status"]) == (421, "4.7.28")
    assert cli(tmp_path, "rules", "test", "550 5.1.1 user unknown", "--json") == 0
    assert json.loads(capsys.readouterr().out)["code"] == 550


def test_rules_list_prints_human_durations(tmp_path: Path, capsys) -> None:
    assert cli(tmp_path, "rules", "list") == 0
    out = capsys.readouterr().out
    assert "1800s" not in out and "3600s" not in out
    assert " 30m " in out or "│ 30m" in out
    assert " 2h " in out or "│ 2h" in out


# ------------------------------------------------------------------------------------ lanes


def _direct_profiles(ws: Path) -> None:
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(
            f"""\
            profiles:
              direct:
                transport: direct
                dns: false
                pools:
                  marketing: [{COLD}]
            """
        )
    )


def test_lanes_suspend_refuses_unknown_ips_and_providers(tmp_path: Path, capsys) -> None:
    _direct_profiles(tmp_path)
    code = cli(tmp_path, "lanes", "suspend", "--ip", "192.0.2.99", "--provider", "google")
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"Error: --ip: 192.0.2.99 is not a sending IP (known: {COLD})\n"
    code = cli(tmp_path, "lanes", "suspend", "--ip", COLD, "--provider", "gogle")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Error: --provider: unknown provider 'gogle' (known: apple, google,")
    assert err.endswith(", or a mail domain such as example.com)\n") and err.count("\n") == 1
    assert cli(tmp_path, "lanes", "suspend", "--ip", COLD, "--provider", "google") == 0
    assert f"lane {COLD} -> google suspended until" in capsys.readouterr().err


# --------------------------------------------------------------------------------- campaign


def test_cancel_and_pause_are_worded_right(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=3)
    assert cli(ws, "send", str(ws / "c.yaml"), "--limit", "1", "--json") == 0
    capsys.readouterr()
    assert cli(ws, "campaign", "pause", "news") == 0
    result = send_json(ws, capsys)
    assert result["stop_reason"] == "campaign news is paused"
    assert cli(ws, "send", str(ws / "c.yaml")) == 0
    out = capsys.readouterr()
    assert "nothing to send" not in out.out + out.err
    assert "campaign news is paused" in out.out
    assert cli(ws, "campaign", "cancel", "news") == 0
    capsys.readouterr()
    with SqliteStore.open(ws / "m.db") as store:
        row = store.get_campaign("news")
    assert row is not None and row["stop_reason"] == "cancelled by hand"


# -------------------------------------------------------------------------------------- dkim


def test_dkim_keygen_accepts_rsa_and_lists_valid_algorithms(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k.pem"
    args = ["dkim", "keygen", "--selector", "s1", "--domain", "example.com", "--bits", "1024"]
    assert cli(tmp_path, *args, "--algorithm", "rsa", "--out", str(key)) == 0
    assert "k=rsa" in capsys.readouterr().out and key.exists()
    assert cli(tmp_path, *args, "--algorithm", "dsa", "--out", str(tmp_path / "x.pem")) == 2
    assert capsys.readouterr().err == (
        "Error: unknown DKIM algorithm 'dsa' (valid: rsa-sha256, ed25519-sha256, rsa, ed25519)\n"
    )
    assert not (tmp_path / "x.pem").exists()


# ------------------------------------------------------------------------------------ config


def test_unknown_yaml_key_suggests_the_near_one(sim_server, tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 25, rows=1)
    text = (ws / "c.yaml").read_text().replace("subject:", "subjet:")
    (ws / "c.yaml").write_text(text)
    assert cli(ws, "send", str(ws / "c.yaml")) == 2
    err = capsys.readouterr().err
    assert "unknown key 'subjet' (did you mean 'subject'?)" in err
    assert "valid keys" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------ warmup


def _warmup_profiles(ws: Path, start: dt.date) -> None:
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
                      warmup: {{preset: ses45, start: {start}, target_daily: 10000}}
            """
        )
    )


def test_warmup_start_with_linear_shows_linear_and_its_stage_count(tmp_path: Path, capsys) -> None:
    today = dt.date.today()
    _warmup_profiles(tmp_path, today - dt.timedelta(days=3))
    assert cli(tmp_path, "warmup", "start", COLD, "--preset", "linear") == 0
    assert capsys.readouterr().err == (
        f"{COLD}: warm-up start (linear: 30 stages, 50 to 10,000/day) from {today}\n"
    )
    assert cli(tmp_path, "warmup", "plan", "--ip", COLD, "--days", "2") == 0
    out = capsys.readouterr().out
    assert f"{COLD} (direct): linear to 10,000/day, stage 1/30" in out
    assert "ses45" not in out


def test_warmup_plan_today_row_shows_what_was_sent(tmp_path: Path, capsys) -> None:
    today = dt.datetime.now(dt.UTC).date()
    _warmup_profiles(tmp_path, today)
    with SqliteStore.open(tmp_path / "m.db") as store:
        store.bump_ip_day(COLD, today.isoformat(), "google", sent=17)
        store.bump_ip_day(COLD, today.isoformat(), "yahoo", sent=4)
    assert cli(tmp_path, "warmup", "plan", "--ip", COLD, "--days", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["sent_today"] == 21
    assert cli(tmp_path, "warmup", "plan", "--ip", COLD, "--days", "2") == 0
    today_row = next(
        line for line in capsys.readouterr().out.splitlines() if today.isoformat() in line
    )
    assert "│ 21 " in today_row.replace("  ", " ")


# ------------------------------------------------------------------------------ repository


def test_gitignore_covers_the_lock_and_key_files() -> None:
    patterns = (REPO / ".gitignore").read_text().splitlines()
    for pattern in ("*.db", "*.db.lock", "*.key", "*.unsubscribe-key"):
        assert pattern in patterns


def test_shell_completion_is_offered(tmp_path: Path, capsys) -> None:
    assert cli(tmp_path, "--show-completion", "bash") == 0
    out = capsys.readouterr().out
    assert "_mailctl_completion()" in out and "_MAILCTL_COMPLETE=complete_bash" in out
