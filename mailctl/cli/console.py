"""The two consoles: data on stdout, messages and progress on stderr.

Only this module and the command modules in mailctl/cli print. Library code reports
progress through callbacks.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(highlight=False, soft_wrap=False)
if not out.is_terminal:
    out.width = 160  # tables in files and pipes: wide enough not to wrap every cell
err = Console(stderr=True, highlight=False)

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def emit_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout, never wrapped or coloured."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")


def info(message: str) -> None:
    if not _quiet:
        err.print(message, markup=False, highlight=False)


def warn(message: str) -> None:
    err.print(f"Warning: {message}", style="yellow", markup=False, highlight=False)


def error(message: str) -> None:
    err.print(f"Error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


class _PlainLines:
    """Off a terminal (cron, pipes): at most one plain status line every `interval` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def emit(self, text: str) -> None:
        now = time.monotonic()
        if _quiet or now - self._last < self.interval:
            return
        self._last = now
        err.print(text, markup=False, highlight=False)


class _LiveDisplay:
    """A rich Progress shown while the `with` block runs (None off a terminal)."""

    _progress: Progress | None = None

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class ProgressReporter(_LiveDisplay):
    """A task-based progress display: a rich bar on a terminal, plain periodic lines elsewhere.

    Library code is handed `advance`/`update` callbacks; it never sees rich.
    """

    def __init__(self, description: str, total: int | None, *, interval: float = 5.0) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self._lines = _PlainLines(interval)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        if not _quiet and err.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, status="")

    def advance(self, n: int = 1, status: str = "") -> None:
        self.completed += n
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, status=status)
            return
        self._maybe_line(status)

    def _maybe_line(self, status: str) -> None:
        total = f"/{self.total}" if self.total else ""
        rate = self.completed / max(time.monotonic() - self._started, 1e-9)
        extra = f" {status}" if status else ""
        self._lines.emit(f"{self.description}: {self.completed}{total} ({rate:.0f}/s){extra}")


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[ProgressReporter]:
    with ProgressReporter(description, total) as reporter:
        yield reporter


class SendProgress(_LiveDisplay):
    """The send loop's display: an overall bar plus one row per lane on a terminal;
    a plain status line every few seconds elsewhere; nothing when quiet."""

    def __init__(self, interval: float = 5.0) -> None:
        self._lines = _PlainLines(interval)
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._lane_tasks: dict[Any, TaskID] = {}
        if not _quiet and err.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description:<34}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[count]:>13}"),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
                refresh_per_second=4,
            )
            self._overall = self._progress.add_task(
                "[bold]all lanes", total=None, detail="", count=""
            )

    def update(self, total: int, done: int, rate: float, lanes: list[dict[str, Any]]) -> None:
        if _quiet:
            return
        if self._progress is not None and self._overall is not None:
            self._progress.update(
                self._overall,
                total=total or None,
                completed=done,
                count=f"{done:,}/{total:,}",
                detail=f"{rate:,.0f} msg/s",
            )
            for lane in lanes:
                key = (lane["ip"], lane["provider"])
                task = self._lane_tasks.get(key)
                label = f"  {lane['ip']} → {lane['provider']}"[:34]
                if task is None:
                    # A lane has no total of its own: its bar shows its share of the run.
                    task = self._progress.add_task(label, total=total or None, detail="", count="")
                    self._lane_tasks[key] = task
                state = lane["state"] if lane["state"] == "normal" else f"[yellow]{lane['state']}"
                detail = (
                    f"sent {lane['sent']} deferred {lane['deferred']} bounced {lane['bounced']} "
                    f"failed {lane['failed']} {state}"
                )
                self._progress.update(
                    task, total=total or None, completed=lane["sent"], count="", detail=detail
                )
            return
        self._lines.emit(f"sending: {done}/{total} done, {rate:,.0f} msg/s, {len(lanes)} lanes")
