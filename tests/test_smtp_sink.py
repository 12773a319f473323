"""Delivery to Postfix's smtp-sink: a real, independent SMTP server implementation."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mailctl.cli import run
from tests.helpers.workspace import make_workspace


def test_send_delivers_every_message_to_postfix_smtp_sink(
    smtp_sink: tuple[int, Path], tmp_path: Path, capsys, store_url: str
) -> None:
    port, dump = smtp_sink
    ws = make_workspace(tmp_path, port, rows=50)
    code = run(["--db", store_url, "--profiles", str(ws / "profiles.yaml"), "send",
                str(ws / "c.yaml"), "--json"])  # fmt: skip
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
