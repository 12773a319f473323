"""Delivery to Postfix's smtp-sink: a real, independent SMTP server implementation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.workspace import cli, make_workspace

SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
)


@pytest.fixture()
def smtp_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if SINK is None:
        if os.environ.get("MAILCTL_REQUIRE_SMTP_SINK"):
            pytest.fail("smtp-sink is required here (apt-get install postfix)")
        pytest.skip("Postfix smtp-sink not installed (apt-get install postfix)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # smtp-sink drops privileges before writing: pytest's tmp_path is not reachable for it.
    dump = Path(tempfile.mkdtemp(prefix="mailctl-sink-"))
    os.chmod(dump, 0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SINK, *user, "-d", f"{dump}/%M.", f"127.0.0.1:{port}", "64"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, dump
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(dump, ignore_errors=True)


def test_send_delivers_every_message_to_postfix_smtp_sink(
    smtp_sink: tuple[int, Path], tmp_path: Path, capsys
) -> None:
    port, dump = smtp_sink
    ws = make_workspace(tmp_path, port, rows=50)
    code = cli(ws, "send", str(ws / "c.yaml"), "--json")
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["sent"], result["remaining"]) == (50, 0)
    for _ in range(50):
        files = list(dump.iterdir())
        if len(files) >= 50:
            break
        time.sleep(0.05)
    assert len(files) == 50
    sample = files[0].read_bytes()
    assert b"X-Mailctl-ID: mc2-" in sample
    assert b"Subject: =?utf-8?b?" in sample
