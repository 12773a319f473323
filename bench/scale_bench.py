"""Scale benchmark: one queue, several senders. SQLite with one sender, then PostgreSQL with
1, 2 and 4 `mailctl send --all` processes (each its own --host and loopback IP), all into
one Postfix smtp-sink that dumps every message, so duplicates are counted at the receiver.

Prints per configuration: messages/s (wall time of the sending processes), the database
server's share of CPU (PostgreSQL's postmaster and its reaped backends; SQLite runs inside
the senders), the claim and commit latency per batch (median and p99, timed around
`claim_due` and `record_outcomes` in each sender), and the CPU time per message of the
senders (with their render workers), the database server and smtp-sink: on one small
machine extra senders only help while these do not grow. The PostgreSQL cluster is a throwaway one
(tests.helpers.postgres), torn down at the end.

Needs Debian's `postfix` (smtp-sink) and `postgresql` packages. Run by hand:
    python bench/scale_bench.py [--count 100000] [--senders 1,2,4]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.postgres import PgCluster, free_port, remove_cluster, start_cluster  # noqa: E402

# A sender: mailctl's CLI with claim_due and record_outcomes timed (both backends), the
# timings and the process's CPU written to a JSON file at exit.
SENDER = r"""
import json, multiprocessing, resource, sys, time
from mailctl.store.postgres import PostgresStore
from mailctl.store.sqlite import SqliteStore
timings = {"claim": [], "commit": []}
def timed(cls, name, key):
    original = getattr(cls, name)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timings[key].append(time.perf_counter() - start)
    setattr(cls, name, wrapper)
for cls in (PostgresStore, SqliteStore):
    timed(cls, "claim_due", "claim")
    timed(cls, "record_outcomes", "commit")
from mailctl.cli import run
code = run(sys.argv[2:])
for child in multiprocessing.active_children():  # render workers: their CPU counts too
    child.join(10)
own = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "cpu": cpu, **timings}, f)
sys.exit(code)
"""

PROFILES = """\
default_profile: relay
profiles:
  relay:
    transport: relay
    host: 127.0.0.1
    port: {port}
    tls: none
    dns: false
    preflight: false
    connections: 4
    messages_per_connection: 1000
    rules: {{limits: {{default: {{per_minute: null}}}}}}
    pools:
      default:
{ips}
"""

CAMPAIGN = """\
name: scale
from: "News <news@example.com>"
subject: "Hello {{ first_name }}"
text: "Hi {{ first_name }}, your {{ plan }} plan. Unsubscribe: {{ unsubscribe_url }}"
recipients: list.csv
unsubscribe: {url: "https://example.com/u/{{ email | urlencode }}"}
"""

HOSTS = [f"mta{i}" for i in range(1, 5)]
IPS = [f"127.0.0.{i}" for i in range(2, 6)]


def start_sink(port: int, dump: Path) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink not found: apt-get install postfix")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, "-d", f"{dump}/%M.", f"127.0.0.1:{port}", "1024"])
    time.sleep(0.5)
    return proc


def workspace(root: Path, port: int, count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ips = "".join(
        f"        - {{ip: {ip}, host: {host}}}\n" for host, ip in zip(HOSTS, IPS, strict=True)
    )
    (root / "profiles.yaml").write_text(PROFILES.format(port=port, ips=ips))
    (root / "c.yaml").write_text(CAMPAIGN)
    with (root / "list.csv").open("w") as f:
        f.write("email,first_name,plan\n")
        for i in range(count):
            f.write(f"user{i}@example.com,User{i},plan{i % 7}\n")
    return root


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def postmaster_cpu(cluster: PgCluster) -> float:
    """CPU seconds of the postmaster and every backend it has reaped."""
    return process_cpu(int((cluster.data / "postmaster.pid").read_text().split()[0]))


def deliveries(dump: Path) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for path in dump.iterdir():
        with path.open(errors="replace") as f:
            for _ in range(6):
                line = f.readline()
                if line.startswith("X-Rcpt-Args: "):
                    seen[line[13:].strip().strip("<>")] += 1
                    break
    return seen


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run_config(
    label: str, db: str, senders: int, count: int, work: Path, cluster: PgCluster | None
) -> dict[str, object]:
    dump = Path(tempfile.mkdtemp(prefix="scale-sink-"))
    os.chmod(dump, 0o777)
    port = free_port()
    sink = start_sink(port, dump)
    ws = workspace(work / label, port, count)
    base = [sys.executable, "-c", SENDER]
    args = ["--db", db, "--profiles", str(ws / "profiles.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        # Load the campaign (import + queue; one message goes out).
        load = subprocess.run(
            [*base, str(ws / "load.json"), *args, "send", str(ws / "c.yaml"), "--host",
             HOSTS[0], "--limit", "1", "--quiet"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if load.returncode != 0:
            sys.exit(f"{label}: loading failed: {load.stderr}")
        db_cpu_before = postmaster_cpu(cluster) if cluster else 0.0
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    *base,
                    str(ws / f"s{i}.json"),
                    *args,
                    "send",
                    "--all",
                    "--host",
                    HOSTS[i],
                    "--quiet",
                ],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(senders)
        ]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"{label}: a sender failed: {err}")
        wall = time.perf_counter() - started
        db_cpu = (postmaster_cpu(cluster) - db_cpu_before) if cluster else 0.0
        results = [json.loads((ws / f"s{i}.json").read_text()) for i in range(senders)]
        time.sleep(1.0)
        seen = deliveries(dump)
    finally:
        sink_cpu = process_cpu(sink.pid)
        sink.terminate()
        sink.wait()
        shutil.rmtree(dump, ignore_errors=True)
    claims = [t for r in results for t in r["claim"]]
    commits = [t for r in results for t in r["commit"]]
    sender_cpu = sum(float(r["cpu"]) for r in results)
    return {
        "config": label,
        "senders": senders,
        "delivered": len(seen),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "missing": count - len(seen),
        "msg_s": (count - 1) / wall,
        "wall_s": wall,
        "db_cpu_s": db_cpu,
        "db_cpu_share": db_cpu / (db_cpu + sender_cpu) if cluster else None,
        "claims": len(claims),
        "claim_ms_p50": statistics.median(claims) * 1000 if claims else 0.0,
        "claim_ms_p99": pct(claims, 99) * 1000,
        "commits": len(commits),
        "commit_ms_p50": statistics.median(commits) * 1000 if commits else 0.0,
        "commit_ms_p99": pct(commits, 99) * 1000,
        "sender_cpu_us_per_msg": sender_cpu * 1e6 / count,
        "db_cpu_us_per_msg": db_cpu * 1e6 / count,
        "sink_cpu_us_per_msg": sink_cpu * 1e6 / count,
        "db_cpu_ms_per_claim": db_cpu * 1000 / max(len(claims), 1) if cluster else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--senders", default="1,2,4", help="PostgreSQL sender counts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    cluster = start_cluster()
    rows = []
    try:
        rows.append(run_config("sqlite-x1", str(work / "m.db"), 1, options.count, work, None))
        for n in (int(x) for x in options.senders.split(",")):
            url = cluster.new_database(f"scale{n}")
            rows.append(run_config(f"postgresql-x{n}", url, n, options.count, work, cluster))
    finally:
        remove_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{'config':<15}{'msg/s':>9}{'dups':>6}{'miss':>6}{'db cpu':>8}{'claims':>8}"
        f"{'claim p50/p99 ms':>18}{'commit p50/p99 ms':>19}{'db ms/claim':>12}"
    )
    for r in rows:
        share = "-" if r["db_cpu_share"] is None else f"{r['db_cpu_share']:.0%}"
        per_claim = "-" if r["db_cpu_ms_per_claim"] is None else f"{r['db_cpu_ms_per_claim']:.2f}"
        print(
            f"{r['config']:<15}{r['msg_s']:>9.0f}{r['duplicates']:>6}{r['missing']:>6}"
            f"{share:>8}{r['claims']:>8}"
            f"{r['claim_ms_p50']:>9.1f}/{r['claim_ms_p99']:<8.1f}"
            f"{r['commit_ms_p50']:>9.1f}/{r['commit_ms_p99']:<9.1f}{per_claim:>12}"
            f"{r['sender_cpu_us_per_msg']:>13.0f}/{r['db_cpu_us_per_msg']:.0f}"
            f"/{r['sink_cpu_us_per_msg']:.0f}"
        )
    base = rows[0]["msg_s"]
    pg1 = next((r["msg_s"] for r in rows if r["config"] == "postgresql-x1"), None)
    for r in rows[1:]:
        line = f"{r['config']}: {float(r['msg_s']) / float(base):.2f}x sqlite-x1"  # type: ignore[arg-type]
        if pg1 and r["config"] != "postgresql-x1":
            line += f", {float(r['msg_s']) / float(pg1):.2f}x postgresql-x1"  # type: ignore[arg-type]
        print(line)
    if options.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
