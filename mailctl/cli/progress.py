"""What the progress displays say, computed without drawing: the send display's overall and
per-lane figures (done, deferred, current rate, ETA) and the loading line (rows/s, estimated
total). `console` draws them; tests drive them with an injected clock.

Part of the CLI (presentation only); imports nothing from mailctl but the standard library.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Finished for good: what "all lanes" counts as done. Deferred mail is shown on its own.
DONE_STATES = ("sent", "failed", "bounced", "suppressed", "expired")
# Lanes in these states send now; a suspended or disabled lane adds nothing to the ETA.
SENDING_MODES = ("normal", "slowed")


def format_eta(seconds: float | None) -> str:
    """`1:02:03`, `4:05`, or `-` when nothing can be sent at the current rate."""
    if seconds is None:
        return "-"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Rate:
    """Events per second over the last `window` seconds (the current rate, not the average
    since the start: a lane suspended for an hour must not drag the ETA for ever)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> float:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        first_at, first = self.samples[0]
        elapsed = now - first_at
        return (count - first) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class LaneView:
    label: str  # "127.0.0.3 → google"
    done: int  # this lane's messages finished for good
    total: int  # this lane's expected messages (its share of the run so far, scaled up)
    deferred: int
    rate: float  # messages sent per second, current
    state: str  # "normal", "suspended until 10:02" …
    detail: str


@dataclass(frozen=True)
class SendView:
    total: int
    done: int
    deferred: int
    rate: float  # current sending rate of the lanes that can send
    eta: float | None
    lanes: tuple[LaneView, ...]

    @property
    def detail(self) -> str:
        return f"deferred {self.deferred:,}  {self.rate:,.0f} msg/s  ETA {format_eta(self.eta)}"


class SendFigures:
    """Turns the run's counters into what the send display shows, at `clock()` times."""

    def __init__(self, clock: Callable[[], float], window: float = 20.0) -> None:
        self.clock = clock
        self.window = window
        self._rates: dict[tuple[str, str], _Rate] = {}

    def view(
        self, total: int, counts: Mapping[str, int], lanes: Sequence[Mapping[str, Any]]
    ) -> SendView:
        now = self.clock()
        views = []
        sending_rate = 0.0
        # A message's lane is known once it is routed: each lane's total is its share of the
        # routed messages applied to the whole run (exact once everything has been routed).
        routed = sum(int(x["sent"]) + int(x["bounced"]) + int(x["failed"]) for x in lanes)
        routed += sum(int(x["deferred"]) for x in lanes)
        for lane in lanes:
            key = (str(lane["ip"]), str(lane["provider"]))
            rate = self._rates.setdefault(key, _Rate(self.window)).add(now, int(lane["sent"]))
            done = int(lane["sent"]) + int(lane["bounced"]) + int(lane["failed"])
            deferred = int(lane["deferred"])
            state = str(lane["state"])
            if state.split(" ", 1)[0] in SENDING_MODES:
                sending_rate += rate
            views.append(
                LaneView(
                    label=f"  {key[0]} → {key[1]}",
                    done=done,
                    total=max(done + deferred, round(total * (done + deferred) / routed))
                    if routed
                    else 0,
                    deferred=deferred,
                    rate=rate,
                    state=state,
                    detail=(
                        f"sent {lane['sent']:,} deferred {deferred:,} bounced "
                        f"{lane['bounced']:,} failed {lane['failed']:,} {rate:,.0f}/s {state}"
                    ),
                )
            )
        done = sum(int(counts.get(name, 0)) for name in DONE_STATES)
        left = max(total - done, 0)
        eta = left / sending_rate if sending_rate > 0 else (0.0 if left == 0 else None)
        return SendView(
            total=total,
            done=done,
            deferred=int(counts.get("deferred", 0)),
            rate=sending_rate,
            eta=eta,
            lanes=tuple(views),
        )


class LoadFigures:
    """The loading line: rows so far, rows per second and, when the file's size is known, the
    estimated total (bytes read so far give the average row size)."""

    def __init__(self, clock: Callable[[], float], size: int | None) -> None:
        self.clock = clock
        self.size = size or None
        self.started = clock()

    def estimate(self, bytes_read: int, rows: int) -> int | None:
        if self.size is None or bytes_read <= 0 or rows <= 0:
            return None
        if bytes_read >= self.size:
            return rows
        return max(rows, round(rows * self.size / bytes_read))

    def text(self, bytes_read: int, rows: int) -> str:
        elapsed = self.clock() - self.started
        rate = rows / elapsed if elapsed > 0 else 0.0
        total = self.estimate(bytes_read, rows)
        of = f" of ~{total:,}" if total is not None and bytes_read < (self.size or 0) else ""
        return f"{rows:,}{of} rows, {rate:,.0f} rows/s"
