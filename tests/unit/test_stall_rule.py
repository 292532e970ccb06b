"""The adaptive stall rule's arithmetic (`ArrivalWindow`), with the times passed in: no clock, no socket.

What it must get right: a busy connection has a rate within a second of opening (so a stall right after a
reconnect is caught), the subscription's opening snapshots are not taken for its rate, and a connection of
quiet codes gets no rate until it has half a window of its own history.
"""

from __future__ import annotations

from feeder.connection import _MIN_FRAMES, _WARM_UP, _WINDOW, ArrivalWindow


def feed(window: ArrivalWindow, start: float, gap: float, count: int, frames: int) -> tuple[float, int]:
    """`count` frames every `gap` seconds from `start`, observed as the watchdog does; returns (t, frames)."""
    t = start
    for _ in range(count):
        t += gap
        frames += 1
        window.observe(t, t, frames)
    return t, frames


def test_a_busy_connection_has_its_rate_after_twenty_frames() -> None:
    window = ArrivalWindow(first_frame=0.0, frames=0, skip=5)
    window.observe(0.0, 0.0, 5)  # the five snapshots, at once
    t, frames = feed(window, 0.0, 0.02, _MIN_FRAMES - 1, 5)
    assert window.mean_gap() is None, "too few arrivals to trust a rate"
    feed(window, t, 0.02, 1, frames)
    gap = window.mean_gap()
    assert gap is not None and abs(gap - 0.02) < 1e-9
    assert t < 1.0, "judged within a second of opening"


def test_the_opening_snapshots_are_not_taken_for_the_rate() -> None:
    window = ArrivalWindow(first_frame=0.0, frames=0, skip=30)
    for n in range(1, 31):  # 30 snapshots within 30 ms
        window.observe(n * 0.001, n * 0.001, n)
    assert window.mean_gap() is None
    # then a quiet connection: one change every 2 s
    t, frames = feed(window, 0.03, 2.0, 2, 30)
    assert window.mean_gap() is None, "2 frames over 4 s: not yet half a window"
    feed(window, t, 2.0, 1, frames)
    gap = window.mean_gap()
    assert gap is not None and abs(gap - 2.0) < 1e-9, "the snapshots would have made it ~0.2 s"


def test_arrivals_count_after_the_warm_up_when_fewer_snapshots_came() -> None:
    window = ArrivalWindow(first_frame=0.0, frames=0, skip=10)  # 10 symbols, 2 unknown: 8 snapshots
    window.observe(0.01, 0.01, 8)
    window.observe(1.0, 0.01, 8)
    assert not window._samples, "still waiting for the snapshots"
    window.observe(_WARM_UP + 0.1, 0.01, 8)
    assert window._samples, "armed by the warm-up"


def test_the_window_forgets_arrivals_older_than_its_length() -> None:
    window = ArrivalWindow(first_frame=0.0, frames=0, skip=0)
    t, frames = feed(window, 0.0, 0.01, 200, 0)  # busy for 2 s
    t, frames = feed(window, t, 1.0, 2 * int(_WINDOW), frames)  # then one frame a second for 20 s
    gap = window.mean_gap()
    assert gap is not None and abs(gap - 1.0) < 1e-9, "the busy start is out of the window"


def test_silence_adds_no_arrivals() -> None:
    window = ArrivalWindow(first_frame=0.0, frames=0, skip=0)
    t, frames = feed(window, 0.0, 0.05, 40, 0)
    before = window.mean_gap()
    for k in range(1, 30):  # the watchdog keeps observing while nothing arrives
        window.observe(t + k * 0.1, t, frames)
    assert window.mean_gap() == before
