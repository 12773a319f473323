"""`mailctl unsubscribe serve` as a child process on a free loopback port, for tests and the
benchmark: started, waited for (``/healthz``), stopped with SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.dovecot import free_port

ROOT = Path(__file__).resolve().parents[2]


class UnsubscribeServer:
    def __init__(self, workdir: Path, db: Path | None, *args: str) -> None:
        """`db` None: no --db at all (the default ./mailctl.db in `workdir`)."""
        self.port = free_port()
        self.log = workdir / f"serve-{self.port}.log"
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailctl",
                *(["--db", str(db)] if db is not None else []),
                "unsubscribe",
                "serve",
                "--port",
                str(self.port),
                *args,
            ],
            cwd=workdir,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            # This tree's mailctl, whatever the working directory.
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
            },
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()}")
            try:
                status, _, _ = self.request("GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("serve did not answer /healthz in 20 s")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def stop(self) -> int:
        """SIGTERM, as systemd sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
        return self.process.returncode
