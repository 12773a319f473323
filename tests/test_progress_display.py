"""Honest progress (#13 item 4), driven with the fake clock: each lane's bar counts that lane's
messages, "all lanes" counts only mail finished for good and shows deferred mail apart, the ETA
comes from the current rate of the lanes that can send, and loading shows rows/s and an
estimated total."""

from __future__ import annotations

import io

from rich.console import Console

from mailctl.cli.displays import LoadProgress, SendProgress
from mailctl.cli.progress import LoadFigures, SendFigures, format_eta
from tests.helpers.clock import FakeClock


def _lane(ip: str, provider: str, sent: int, deferred: int = 0, state: str = "normal") -> dict:
    return {
        "ip": ip,
        "provider": provider,
        "sent": sent,
        "deferred": deferred,
        "bounced": 0,
        "failed": 0,
        "state": state,
    }


def test_all_lanes_counts_finished_mail_and_shows_deferred_apart() -> None:
    clock = FakeClock(1000.0)
    figures = SendFigures(clock)
    counts = {"sent": 704, "deferred": 2206, "bounced": 0, "failed": 0, "suppressed": 0}
    figures.view(3000, {**counts, "sent": 0}, [_lane("127.0.0.3", "google", 0, 0)])
    clock.advance(10)
    view = figures.view(3000, counts, [_lane("127.0.0.3", "google", 704, 2206)])
    assert (view.done, view.deferred, view.total) == (704, 2206, 3000)
    (lane,) = view.lanes
    # The lane's bar is measured against the lane's own messages (all of this run's here).
    assert (lane.done, lane.total, lane.deferred) == (704, 3000, 2206)
    assert round(view.rate, 1) == 70.4
    assert view.eta is not None and round(view.eta) == round((3000 - 704) / 70.4)


def test_eta_uses_the_current_rate_of_lanes_that_can_send() -> None:
    clock = FakeClock(0.0)
    figures = SendFigures(clock, window=20.0)
    lanes = [_lane("127.0.0.2", "google", 0), _lane("127.0.0.2", "yahoo", 0)]
    figures.view(1000, {"sent": 0}, lanes)
    for second in range(1, 31):  # google 10/s throughout; yahoo 5/s, then suspended
        clock.advance(1)
        yahoo = min(second, 10) * 5
        state = "normal" if second <= 10 else "suspended until 10:02"
        lanes = [
            _lane("127.0.0.2", "google", second * 10),
            _lane("127.0.0.2", "yahoo", yahoo, deferred=0, state=state),
        ]
        view = figures.view(1000, {"sent": second * 10 + yahoo}, lanes)
    # After 30 s: 350 sent; the suspended lane adds nothing, google's 10/s carries the ETA.
    assert view.done == 350
    assert round(view.rate, 3) == 10.0
    assert view.eta == 65.0
    assert format_eta(view.eta) == "1:05" and format_eta(None) == "-"
    # Every lane stopped: no ETA rather than a made-up one.
    clock.advance(1)
    stopped = [
        _lane("127.0.0.2", "google", 300, state="suspended until 10:02"),
        _lane("127.0.0.2", "yahoo", 50, state="suspended until 10:02"),
    ]
    assert figures.view(1000, {"sent": 350}, stopped).eta is None


def _drive(display: SendProgress, clock: FakeClock) -> None:
    display.update(
        300, {"sent": 0}, [_lane("127.0.0.3", "google", 0), _lane("127.0.0.4", "yahoo", 0)]
    )
    clock.advance(10)
    display.update(
        300,
        {"sent": 150, "deferred": 100},
        [_lane("127.0.0.3", "google", 100), _lane("127.0.0.4", "yahoo", 50, deferred=100)],
    )


def test_send_display_draws_lane_bars_against_their_own_messages() -> None:
    clock = FakeClock(0.0)
    screen = io.StringIO()
    console = Console(file=screen, width=160, force_terminal=True, color_system=None)
    with SendProgress(clock=clock, console=console) as display:
        _drive(display, clock)
    text = screen.getvalue()
    lines = [line.rstrip() for line in text[text.rindex("all lanes") :].splitlines()[:3]]
    assert "all lanes" in lines[0] and "150/300" in lines[0]
    assert "deferred 100  15 msg/s  ETA 0:10" in lines[0]
    # 250 of 300 routed: google has 100 of them (120 of the run expected), yahoo 150 (180).
    assert "127.0.0.3 → google" in lines[1] and "100/120" in lines[1]
    assert "127.0.0.4 → yahoo" in lines[2] and "50/180" in lines[2]
    assert "deferred 100" in lines[2] and "5/s" in lines[2]


def test_loading_shows_rows_per_second_and_an_estimated_total() -> None:
    clock = FakeClock(0.0)
    figures = LoadFigures(clock, size=1_000_000)
    clock.advance(2)
    assert figures.text(250_000, 10_000) == "10,000 of ~40,000 rows, 5,000 rows/s"
    clock.advance(6)
    assert figures.text(1_000_000, 40_123) == "40,123 rows, 5,015 rows/s"
    assert LoadFigures(clock, size=None).text(10, 3) == "3 rows, 0 rows/s"

    screen = io.StringIO()
    console = Console(file=screen, width=160, force_terminal=True, color_system=None)
    clock = FakeClock(0.0)
    with LoadProgress("Loading recipients", 1_000_000, clock=clock, console=console) as load:
        clock.advance(4)
        load.update(500_000, 20_000)
    assert "Loading recipients" in screen.getvalue()
    assert "20,000 of ~40,000 rows, 5,000 rows/s" in screen.getvalue()
