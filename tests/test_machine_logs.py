"""Logs fit for machines (#13 item 5): off a terminal one event is one line, an import
warning is given once per file version (not once per cron run), and `--log-format json` /
`MAILCTL_LOG=json` writes one JSON object per event. Real SQLite, real SMTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.workspace import cli, make_workspace

REJECTS = "1 rows of {csv} were rejected (see `mailctl recipients import --rejects FILE`)"


def _with_bad_row(tmp_path: Path, port: int) -> Path:
    # A long directory name: the warning is far wider than 80 columns.
    ws = tmp_path / ("a-rather-long-directory-name-for-the-campaign-workspace-" + "x" * 40)
    ws.mkdir()
    make_workspace(ws, port, rows=3)
    with (ws / "list.csv").open("a") as f:
        f.write("bob@@example.com,Bob\n")
    return ws


def test_rejected_rows_are_warned_once_per_file_version_on_one_line(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = _with_bad_row(tmp_path, server.port)
    warning = "Warning: " + REJECTS.format(csv=ws / "list.csv")
    assert len(warning) > 160
    code = cli(ws, "send", str(ws / "c.yaml"), "--quiet")
    err = capsys.readouterr().err
    assert code == 0
    assert err == warning + "\n"  # one event, one line: never wrapped off a terminal
    # The next cron run imports the same file again: no repeat.
    assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
    assert capsys.readouterr().err == ""
    # A new version of the file (another row) is a new cause: warned again, once.
    with (ws / "list.csv").open("a") as f:
        f.write("carol@example.com,Carol\n")
    assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
    assert capsys.readouterr().err == warning + "\n"
    assert cli(ws, "send", str(ws / "c.yaml"), "--quiet") == 0
    assert capsys.readouterr().err == ""
    assert len(server.deliveries) == 4


def test_json_log_events_from_option_and_environment(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = _with_bad_row(tmp_path, server.port)
    code = cli(ws, "--log-format", "json", "send", str(ws / "c.yaml"))
    out = capsys.readouterr()
    assert code == 0
    events = [json.loads(line) for line in out.err.splitlines()]
    assert events[0]["level"] == "warning"
    assert events[0]["message"] == REJECTS.format(csv=ws / "list.csv")
    assert all(set(e) >= {"time", "level", "message"} for e in events)
    assert "Run summary" in out.out or "sent" in out.out  # data on stdout stays a table

    # The same through the environment, in a real process (as cron runs it); an error too.
    env = {**os.environ, "MAILCTL_LOG": "json"}
    result = subprocess.run(
        [sys.executable, "-m", "mailctl", "--db", str(ws / "m.db"), "campaign", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["message"]) == (
        "error",
        "no campaign named 'nope' (see `mailctl campaign list`)",
    )


def test_unknown_log_format_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert cli(tmp_path, "--log-format", "xml", "rules", "list") == 2
    assert capsys.readouterr().err == (
        "Error: --log-format: 'xml' is not a log format (text, json)\n"
    )
