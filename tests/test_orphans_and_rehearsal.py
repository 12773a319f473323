"""Nothing left behind (#13 "Why" 9): after `kill -9` of a send its render workers and
multiprocessing's resource tracker exit; `mailctl sim` leaves no certificate directory; and
the README's rehearsal recipe (`mx_override` to `mailctl sim --provider google`) delivers,
because the sim offers STARTTLS as Google does. Real processes, real signals, real SMTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mailctl.sim.behaviours import SimBehaviour
from tests.helpers.workspace import make_workspace

ROWS = 3000  # past the render-process threshold (2000): workers are started


def _children(pid: int) -> dict[int, str]:
    """Every live descendant of `pid`: its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().decode()
                except OSError:
                    continue
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_kill_9_of_send_leaves_no_render_worker_or_resource_tracker(
    sim_server, tmp_path: Path
) -> None:
    server = sim_server(SimBehaviour(delays={"DATA": 0.05}))  # a run of a minute or so
    ws = make_workspace(tmp_path, server.port, rows=ROWS)
    send = subprocess.Popen(
        [sys.executable, "-m", "mailctl", "--db", str(ws / "m.db"), "--profiles"]
        + [str(ws / "profiles.yaml"), "send", str(ws / "c.yaml"), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    helpers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and send.poll() is None:
            helpers = {
                pid: cmd for pid, cmd in _children(send.pid).items() if "multiprocessing" in cmd
            }
            kinds = {"resource_tracker" in cmd for cmd in helpers.values()}
            if kinds == {True, False}:  # a worker and the tracker are up
                break
            time.sleep(0.1)
        assert send.poll() is None, "the send ended before its render workers started"
        assert any("spawn_main" in cmd for cmd in helpers.values()), helpers
        assert any("resource_tracker" in cmd for cmd in helpers.values()), helpers
        os.kill(send.pid, signal.SIGKILL)
        send.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in helpers):
            time.sleep(0.1)
        assert [pid for pid in helpers if _alive(pid)] == []
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()
        for pid in helpers:  # only what this test started, by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert len(server.deliveries) < ROWS  # it was killed mid-run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"mailctl sim did not listen on {port}")


def test_readme_rehearsal_recipe_delivers_over_starttls_and_leaves_no_key(
    tmp_path: Path,
) -> None:
    port = _free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "mailctl", "sim", "--provider", "google", "--port", str(port)]
        + ["--log", str(tmp_path / "accepted.jsonl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_port(port, sim)
        # The README's recipe: a direct profile whose gmail.com MX is the sim.
        (tmp_path / "profiles.yaml").write_text(
            textwrap.dedent(
                f"""\
                profiles:
                  rehearsal:
                    transport: direct
                    dns: false
                    helo: mta.example.com
                    mx_override: {{gmail.com: "google@127.0.0.1:{port}"}}
                    pools:
                      marketing: [127.0.0.2]
                """
            )
        )
        (tmp_path / "list.csv").write_text(
            "email\n" + "".join(f"rehearsal{i}@gmail.com\n" for i in range(5))
        )
        (tmp_path / "c.yaml").write_text(
            textwrap.dedent(
                """\
                name: rehearsal
                from: "News <news@example.com>"
                subject: "Rehearsal"
                text: "Hello {{ email }}"
                recipients: list.csv
                unsubscribe: {url: "https://example.com/u", mailto: "u@example.com"}
                """
            )
        )
        result = subprocess.run(
            [sys.executable, "-m", "mailctl", "--db", str(tmp_path / "m.db"), "--profiles"]
            + [str(tmp_path / "profiles.yaml"), "send", str(tmp_path / "c.yaml"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        # Google's limits require TLS: without STARTTLS in the sim every message was deferred.
        assert (summary["sent"], summary["deferred"]) == (5, 0), summary
        assert list(scratch.glob("mailctl-sim-tls-*")) == []  # not even while it runs
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            _, err = sim.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            sim.kill()
            _, err = sim.communicate()
    assert sim.returncode == 0, err
    assert err.splitlines()[-1] == "sim stopped"
    assert list(scratch.glob("mailctl-sim-tls-*")) == []
    accepted = [json.loads(line) for line in (tmp_path / "accepted.jsonl").read_text().splitlines()]
    assert sorted(a["rcpt"] for a in accepted) == [f"rehearsal{i}@gmail.com" for i in range(5)]
