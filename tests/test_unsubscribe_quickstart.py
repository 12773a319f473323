"""The README quickstart folder, as a new user runs it: send the example campaign, serve
unsubscribes with no setting beyond the defaults, and POST one of the links it wrote."""

from __future__ import annotations

import email
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

from tests.helpers.unsubscribe_server import ROOT, UnsubscribeServer


def test_the_example_campaigns_links_unsubscribe_through_the_local_server(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    shutil.copy(ROOT / "profiles.yaml", tmp_path / "profiles.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAILCTL_DB", None)
    env.pop("MAILCTL_PROFILES", None)
    done = subprocess.run(
        [sys.executable, "-m", "mailctl", "send", "campaigns/welcome.yaml", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    key = tmp_path / "mailctl.db.unsubscribe-key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    message = email.message_from_bytes(next((tmp_path / "outbox" / "new").iterdir()).read_bytes())
    link = message["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    assert link.startswith("https://example.com/unsubscribe?t=")
    parts = urllib.parse.urlsplit(link)
    server = UnsubscribeServer(tmp_path, None)  # defaults only
    try:
        status, headers, body = server.request(
            "POST",
            f"{parts.path}?{parts.query}",
            b"List-Unsubscribe=One-Click",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    finally:
        assert server.stop() == 0
    assert (status, body) == (200, b"unsubscribed\n")
    rows = (
        sqlite3.connect(tmp_path / "mailctl.db")
        .execute("SELECT address, reason, source FROM suppression")
        .fetchall()
    )
    assert rows == [(message["To"], "unsubscribe", "one-click:welcome")]
