"""The live displays: progress bars on a terminal, a plain line every few seconds elsewhere.

`progress()` for imports (bounces, recipients), `LoadProgress` for a campaign's recipients,
`SendProgress` for the send loop (an overall bar and one row per lane). They draw on
`console.err` and follow its quiet mode and log format; the figures they show are computed in
`progress.py`. Kept apart from `console.py` so that commands that draw no bar (and
`mailctl --help`) do not import rich's progress machinery.

Part of the CLI; must not be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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

from mailctl.cli.console import err, event, is_quiet, live_display
from mailctl.cli.progress import LoadFigures, SendFigures


class _PlainLines:
    """Off a terminal (cron, pipes): at most one plain status line every `interval` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def emit(self, text: str, **fields: Any) -> None:
        now = time.monotonic()
        if is_quiet() or now - self._last < self.interval:
            return
        self._last = now
        event(text, level="progress", **fields)


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
        if live_display():
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, status="")

    def set_total(self, total: int) -> None:
        """Adds to the expected total once a source says how much it holds."""
        self.total = (self.total or 0) + total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=self.total)

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


class LoadProgress(_LiveDisplay):
    """Loading a campaign's recipients: a bar over the file's bytes with rows, rows/s and the
    estimated total on a terminal; a plain line every few seconds elsewhere."""

    def __init__(
        self,
        description: str,
        size: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 5.0,
        console: Console | None = None,
    ) -> None:
        self.description = description
        self.figures = LoadFigures(clock, size)
        self._lines = _PlainLines(interval)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if console is not None or live_display():
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                TimeElapsedColumn(),
                console=console or err,
                get_time=clock,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=size or None, status="")

    def update(self, bytes_read: int, rows: int) -> None:
        text = self.figures.text(bytes_read, rows)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=bytes_read, status=text)
            return
        self._lines.emit(f"{self.description}: {text}", rows=rows)


class SendProgress(_LiveDisplay):
    """The send loop's display: an overall bar plus one row per lane on a terminal;
    a plain status line every few seconds elsewhere; nothing when quiet.

    "all lanes" counts messages finished for good (sent, failed, bounced, suppressed,
    expired) against the run's total and shows deferred ones apart; each lane's bar counts that
    lane's own messages; the ETA divides what is left by the current rate of the lanes that
    can send (see `mailctl.cli.progress`)."""

    def __init__(
        self,
        interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        console: Console | None = None,
    ) -> None:
        self.figures = SendFigures(clock)
        self._lines = _PlainLines(interval)
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._lane_tasks: dict[str, TaskID] = {}
        if console is not None or live_display():
            self._progress = Progress(
                TextColumn("{task.description:<34}", markup=False),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[count]:>15}", markup=False),
                TextColumn("{task.fields[detail]}", markup=False),
                TimeElapsedColumn(),
                console=console or err,
                get_time=clock,
                transient=False,
                refresh_per_second=4,
            )
            self._overall = self._progress.add_task("all lanes", total=None, detail="", count="")

    def update(self, total: int, counts: dict[str, int], lanes: list[dict[str, Any]]) -> None:
        if is_quiet():
            return
        view = self.figures.view(total, counts, lanes)
        if self._progress is not None and self._overall is not None:
            self._progress.update(
                self._overall,
                total=total or None,
                completed=view.done,
                count=f"{view.done:,}/{total:,}",
                detail=view.detail,
            )
            for lane in view.lanes:
                task = self._lane_tasks.get(lane.label)
                if task is None:
                    task = self._progress.add_task(lane.label[:34], total=None, detail="", count="")
                    self._lane_tasks[lane.label] = task
                self._progress.update(
                    task,
                    total=lane.total or None,
                    completed=lane.done,
                    count=f"{lane.done:,}/{lane.total:,}",
                    detail=lane.detail,
                )
            return
        self._lines.emit(
            f"sending: {view.done:,}/{total:,} done, {view.detail}, {len(lanes)} lanes",
            done=view.done,
            total=total,
            deferred=view.deferred,
        )
