"""Several sending hosts on one PostgreSQL queue: real `mailctl send --all` processes, each
with its own --host and loopback IPs (127.0.0.2/.3/.4), one smtp-sink, one throwaway cluster.

Guarantees under test: every recipient is delivered exactly once and only from its sender's
own IPs; a sender killed with SIGKILL loses nothing (its claims come back after the lease,
flagged) while the others never stop and nothing a live run holds is sent twice; a
suppression made on one host stops another at once; a server restart mid-send loses and
doubles nothing.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from mailctl.store.factory import open_store
from tests.helpers.workspace import make_workspace

HOSTS = {"mta1": "127.0.0.2", "mta2": "127.0.0.3", "mta3": "127.0.0.4"}

POOLS = "    pools:\n      default:\n" + "".join(
    f"        - {{ip: {ip}, host: {host}}}\n" for host, ip in HOSTS.items()
)


def workspace(tmp_path: Path, port: int, rows: int) -> Path:
    return make_workspace(tmp_path, port, rows=rows, profile_extra=POOLS)


def mailctl(url: str, ws: Path, *args: str, lease: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailctl", "--db", url, "--profiles", str(ws / "profiles.yaml"),
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MAILCTL_LEASE_SECONDS": str(lease)},
    )  # fmt: skip


def load(url: str, ws: Path) -> None:
    """Load the campaign on mta1 (one message goes out), so `send --all` finds it."""
    proc = mailctl(url, ws, "send", str(ws / "c.yaml"), "--host", "mta1", "--limit", "1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def sink_deliveries(dump: Path) -> list[tuple[str, str]]:
    """(client IP, recipient) of every message smtp-sink received."""
    found = []
    for path in dump.iterdir():
        head = dict(
            line.split(": ", 1)
            for line in path.read_text(errors="replace").splitlines()[:5]
            if ": " in line
        )
        found.append((head["X-Client-Addr"], head["X-Rcpt-Args"].strip("<>")))
    return found


def wait_for_files(dump: Path, count: int) -> None:
    for _ in range(200):
        if sum(1 for _ in dump.iterdir()) >= count:
            return
        time.sleep(0.05)


def db_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def sent_from_own_ips(url: str) -> None:
    """Every message went out from an IP of the host whose run sent it."""
    rows = db_rows(
        url,
        """SELECT r.host, m.ip, count(*) FROM messages m JOIN runs r ON r.id = m.run_id
           WHERE m.state = 'sent' GROUP BY 1, 2""",
    )
    assert rows and all(HOSTS[host] == ip for host, ip, _ in rows), rows


@pytest.mark.timeout(600)
def test_three_hosts_share_one_campaign_each_recipient_once_from_its_own_ips(
    pg_cluster, smtp_sink: tuple[int, Path], tmp_path: Path
) -> None:
    port, dump = smtp_sink
    rows = 30_000
    url = pg_cluster.new_database("three")
    ws = workspace(tmp_path, port, rows)
    load(url, ws)
    procs = {host: mailctl(url, ws, "send", "--all", "--host", host, "--json") for host in HOSTS}
    results = {}
    for host, proc in procs.items():
        out, err = proc.communicate(timeout=420)
        assert proc.returncode == 0, err
        results[host] = json.loads(out)
    assert sum(r["sent"] for r in results.values()) == rows - 1
    assert all(r["sent"] > 0 for r in results.values()), results  # all three shared it
    wait_for_files(dump, rows)
    deliveries = sink_deliveries(dump)
    by_recipient = collections.Counter(rcpt for _, rcpt in deliveries)
    assert len(by_recipient) == rows and set(by_recipient.values()) == {1}
    assert {ip for ip, _ in deliveries} <= set(HOSTS.values())
    sent_from_own_ips(url)


@pytest.mark.timeout(300)
def test_kill_9_one_host_the_others_go_on_and_its_claims_return_after_the_lease(
    pg_cluster, sim_server, tmp_path: Path
) -> None:
    from mailctl.sim.behaviours import SimBehaviour

    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.002}), jsonl=jsonl)
    rows = 3000
    url = pg_cluster.new_database("kill")
    ws = workspace(tmp_path, server.port, rows)
    load(url, ws)
    procs = {
        host: mailctl(url, ws, "send", "--all", "--host", host, "--json", "--max-time", "3m",
                      lease=3)
        for host in HOSTS
    }  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        if db_rows(url, "SELECT count(*) FROM messages m JOIN runs r ON r.id = m.run_id "
                        "WHERE r.host = 'mta2' AND m.state = 'sent'")[0][0] > 50:  # fmt: skip
            break
        time.sleep(0.05)
    procs["mta2"].send_signal(signal.SIGKILL)
    procs["mta2"].wait(timeout=30)
    # What it held when it died (counted before the kill, a claim in between went uncounted);
    # its claims return to the others only after the 3 s lease.
    in_flight_at_kill = db_rows(
        url,
        "SELECT count(*) FROM messages m JOIN runs r ON r.id = m.run_id "
        "WHERE r.host = 'mta2' AND m.state = 'sending'",
    )[0][0]
    for host in ("mta1", "mta3"):
        out, err = procs[host].communicate(timeout=240)
        assert procs[host].returncode == 0, err
        assert json.loads(out)["stop_reason"] == "finished", out
    delivered = collections.Counter(
        json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()
    )
    assert len(delivered) == rows  # nothing lost
    twice = {rcpt for rcpt, n in delivered.items() if n > 1}
    flagged = {
        email
        for (email,) in db_rows(url, "SELECT email FROM messages WHERE possible_duplicate = 1")
    }
    assert twice <= flagged  # only the killed run's in-flight messages may go twice
    assert len(flagged) <= max(in_flight_at_kill, 1) + 200  # bounded by what it held
    assert {state for (state,) in db_rows(url, "SELECT DISTINCT state FROM messages")} == {"sent"}


@pytest.mark.timeout(300)
def test_a_suppression_on_one_host_stops_another_host_sending_at_once(
    pg_cluster, sim_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailctl.sim.behaviours import SimBehaviour

    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.02}), jsonl=jsonl)
    rows = 1200
    url = pg_cluster.new_database("suppress")
    ws = workspace(tmp_path, server.port, rows)
    load(url, ws)
    proc = mailctl(url, ws, "send", "--all", "--host", "mta1", "--json")
    while not jsonl.exists() or len(jsonl.read_text().splitlines()) < 50:
        time.sleep(0.02)
    # Another host (this process, its own connection) suppresses the last 100 in queue
    # order (recipients are stored in address order).
    late = sorted(f"user{i}@example.com" for i in range(rows))[-100:]
    with open_store(url) as store, store.transaction():
        for address in late:
            store.suppress(address, "manual", source="mta2")
    delivered_before = {json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()}
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    delivered = {json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()}
    assert len(delivered_before) < rows - 100  # it was still sending
    assert not delivered & set(late)
    assert len(delivered) == rows - 100
    states = db_rows(url, "SELECT state, count(*) FROM messages GROUP BY 1 ORDER BY 1")
    assert states == [("sent", rows - 100), ("suppressed", 100)]


@pytest.mark.timeout(300)
def test_a_server_restart_mid_send_loses_nothing_and_sends_nothing_twice(
    pg_cluster, sim_server, tmp_path: Path
) -> None:
    from mailctl.sim.behaviours import SimBehaviour

    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.005}), jsonl=jsonl)
    rows = 1500
    url = pg_cluster.new_database("restart")
    ws = workspace(tmp_path, server.port, rows)
    load(url, ws)
    proc = mailctl(url, ws, "send", "--all", "--host", "mta1", "--json")
    while not jsonl.exists() or len(jsonl.read_text().splitlines()) < 100:
        time.sleep(0.02)
    pg_cluster.restart()
    out, err = proc.communicate(timeout=240)
    # The run either rode out the restart or stopped with one clear line; the next resumes.
    assert proc.returncode == 0 or err.strip().startswith("Error: "), err
    again = mailctl(url, ws, "send", "--all", "--host", "mta1", "--json")
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    delivered = collections.Counter(
        json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()
    )
    assert len(delivered) == rows
    assert max(delivered.values()) == 1


def _zone_where_it_is_late() -> tuple[str, dt.date]:
    """An Etc/GMT zone where it is now 22:xx (and that local date): a 0-24 h window is then
    22/24 gone, so a cap of 12 is wholly allowed (the even spread plus one burst)."""
    now = dt.datetime.now(dt.UTC)
    offset = (22 - now.hour) % 24
    if offset > 14:
        offset -= 24
    zone = f"Etc/GMT{-offset:+d}" if offset else "UTC"  # Etc/GMT-14 is UTC+14
    return zone, (now + dt.timedelta(hours=offset)).date()


@pytest.mark.timeout(300)
def test_two_overlapping_runs_on_one_warming_ip_never_pass_its_cap(
    pg_cluster, sim_server, tmp_path: Path
) -> None:
    from mailctl.sim.behaviours import SimBehaviour

    cap = 12
    zone, today = _zone_where_it_is_late()
    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.3}), jsonl=jsonl)
    # One IP with no `host:` (both hosts may send from it), in its first warm-up day.
    warmup = (
        f"{{volumes: [{cap}, {2 * cap}], start: {today.isoformat()}, target_daily: {2 * cap},"
        f" window: {{start: 0, end: 24, timezone: {zone}}}}}"
    )
    pools = f"    pools:\n      default:\n        - {{ip: 127.0.0.2, warmup: {warmup}}}\n"
    ws = make_workspace(tmp_path, server.port, rows=800, profile_extra=pools)
    url = pg_cluster.new_database("overlap")
    load(url, ws)  # one of the twelve
    runs = [mailctl(url, ws, "send", "--all", "--host", host, "--json") for host in HOSTS]
    results = []
    for proc in runs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["sent"] for r in results) == cap - 1
    # Every run met the cap (the one that got there first took the day's sends).
    assert all(r["deferred"] or r["remaining"] for r in results), results
    delivered = [json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()]
    assert len(delivered) == len(set(delivered)) == cap
    day = today.isoformat()
    sent = db_rows(url, f"SELECT sum(sent) FROM ip_days WHERE ip = '127.0.0.2' AND day = '{day}'")
    assert sent == [(cap,)]
    # What the runs took and did not use went back: the grants add up to what was sent.
    granted = db_rows(url, "SELECT sum(granted) FROM send_grants WHERE ip = '127.0.0.2'")
    assert granted == [(cap,)]


@pytest.mark.timeout(300)
def test_a_provider_wide_hourly_limit_holds_across_hosts(
    pg_cluster, sim_server, tmp_path: Path
) -> None:
    from mailctl.sim.behaviours import SimBehaviour

    limit = 10
    jsonl = tmp_path / "delivered.jsonl"
    server = sim_server(SimBehaviour(delays={"DATA": 0.05}), jsonl=jsonl)
    # DNS is off in the workspace, so the provider is the recipients' domain.
    extra = POOLS + f"    providers: {{example.com: {{max_per_hour: {limit}}}}}\n"
    ws = make_workspace(tmp_path, server.port, rows=600, profile_extra=extra)
    url = pg_cluster.new_database("hourly")
    hour = time.gmtime().tm_hour
    load(url, ws)  # one of the hour's ten
    runs = [mailctl(url, ws, "send", "--all", "--host", host, "--json") for host in HOSTS]
    results = []
    for proc in runs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    delivered = [json.loads(line)["rcpt"] for line in jsonl.read_text().splitlines()]
    if time.gmtime().tm_hour != hour:  # a new hour began mid-test: its allowance too
        assert len(delivered) <= 2 * limit
        return
    assert len(delivered) == len(set(delivered)) == limit
    assert sum(r["sent"] for r in results) == limit - 1
    reasons = {kind for r in results for kind in (w["reason"] for w in r["deferral_reasons"])}
    assert reasons == {"provider limit: example.com per hour"}, reasons
    sent_from_own_ips(url)
