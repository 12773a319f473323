"""CLI start-up benchmark: wall time of short `mailctl` commands, this tree against another.

Cron runs `mailctl send` every minute, and every short command pays the CLI's start-up: the
interpreter, Typer and whatever modules the command imports. Timed, each in a fresh process
(`python -m mailctl`, this tree or the baseline's on PYTHONPATH), in a throwaway copy of the
quickstart layout (profiles.yaml with the sandbox profile, campaigns/ with the welcome list
cut to 10 recipients):

* `mailctl --help`
* `mailctl send --help`
* `mailctl send campaigns/welcome.yaml`: a tiny send, 10 messages to the embedded sandbox
  (a new database each time);
* `mailctl send --all`: the cron form with nothing left to send (the database of a finished
  run).

The baseline is a git revision (default: main), exported with `git archive` to a temporary
directory, so the comparison needs no second checkout. Runs alternate between the two trees;
the figure is the median of the runs (the minimum beside it).

Bytecode: an installed mailctl has its modules compiled (pip writes the .pyc files), so by
default both trees run with a bytecode cache in the scratch directory (PYTHONPYCACHEPREFIX,
filled by one untimed round first). `--no-bytecode` compiles every module from source on
every run instead, as a checkout does under PYTHONDONTWRITEBYTECODE=1.

Run by hand:  python bench/startup_bench.py [--baseline REV] [--runs N] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPIENTS = 10

COMMANDS: list[tuple[str, list[str], str]] = [
    # (label, mailctl arguments, the database the command starts with: none, or a finished run)
    ("mailctl --help", ["--help"], "none"),
    ("mailctl send --help", ["send", "--help"], "none"),
    (f"mailctl send (tiny, {RECIPIENTS} msgs)", ["send", "campaigns/welcome.yaml"], "none"),
    ("mailctl send --all (nothing to do)", ["send", "--all", "--quiet"], "finished"),
]


def export_tree(revision: str, into: Path) -> Path:
    """The mailctl package of `revision`, exported with git archive."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "mailctl"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def make_workspace(into: Path) -> Path:
    """The quickstart layout with a 10-recipient welcome list."""
    shutil.copy(REPO / "profiles.yaml", into / "profiles.yaml")
    shutil.copytree(REPO / "campaigns", into / "campaigns")
    csv_path = into / "campaigns" / "welcome.csv"
    with csv_path.open(newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))[: RECIPIENTS + 1]
    with csv_path.open("w", newline="", encoding="utf-8") as target:
        csv.writer(target).writerows(rows)
    return into


BYTECODE: dict[str, str] = {}  # the environment that selects the bytecode mode (see main)


def mailctl(tree: Path, workspace: Path, args: list[str]) -> float:
    """Run `python -m mailctl ARGS` from `tree` in `workspace`; the wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MAILCTL_DB": str(workspace / "mailctl.db")}
    for name in ("MAILCTL_PROFILES", "MAILCTL_LOG", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    env.update(BYTECODE)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mailctl", *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"mailctl {' '.join(args)} exited {done.returncode} ({tree}):\n"
            + done.stderr.decode(errors="replace")
        )
    return elapsed


def time_command(tree: Path, scratch: Path, args: list[str], start_with: str) -> float:
    """One timed run in a fresh workspace (set up untimed)."""
    workspace = Path(tempfile.mkdtemp(dir=scratch))
    make_workspace(workspace)
    if start_with == "finished":
        mailctl(tree, workspace, ["send", "campaigns/welcome.yaml", "--quiet"])
    try:
        return mailctl(tree, workspace, args)
    finally:
        shutil.rmtree(workspace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5, help="runs per command and tree")
    parser.add_argument(
        "--no-bytecode", action="store_true", help="compile every module from source each run"
    )
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailctl-startup-") as tmp:
        scratch = Path(tmp)
        baseline = export_tree(options.baseline, Path(tempfile.mkdtemp(dir=scratch)))
        trees = {"before": baseline, "after": REPO}
        if options.no_bytecode:
            BYTECODE["PYTHONDONTWRITEBYTECODE"] = "1"
            BYTECODE["PYTHONPYCACHEPREFIX"] = str(scratch / "no-pycache")  # never written
        else:
            BYTECODE["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
            for tree in trees.values():  # fill the cache: every command once, untimed
                for _, args, start_with in COMMANDS:
                    time_command(tree, scratch, args, start_with)
        mode = "from source" if options.no_bytecode else "bytecode cached"
        print(f"before: {options.baseline} ({baseline}); after: this tree ({REPO})")
        print(f"{options.runs} runs each, alternating, {mode}; median (min) wall seconds\n")
        print(f"{'command':40} {'before':>15} {'after':>15} {'after/before':>13}")
        for label, args, start_with in COMMANDS:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(options.runs):
                for name, tree in trees.items():
                    times[name].append(time_command(tree, scratch, args, start_with))
            before, after = (statistics.median(times[n]) for n in ("before", "after"))
            cells = [f"{statistics.median(times[n]):.3f} ({min(times[n]):.3f})" for n in trees]
            print(f"{label:40} {cells[0]:>15} {cells[1]:>15} {after / before:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
