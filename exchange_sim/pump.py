"""`Pump`: when each subscribed symbol's next generated update is due.

A heap of due times, ``1/rate`` apart with a random phase per symbol. The server's pump task wakes every
``tick_interval`` and steps every symbol that is due, encoding each frame variant once for all its
subscribers; ticks instead of one sleep per frame keep the per-frame cost at a few microseconds, which is
what lets one process send tens of thousands of frames per second. Pure code: the caller passes the time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Iterator


class Pump:
    """Due times of the subscribed symbols' next updates."""

    def __init__(self, rate: float, *, seed: int, name: str) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = float(rate)
        self._heap: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        self._phase_rng = random.Random(f"{seed}:{name}:phase")

    @property
    def idle(self) -> bool:
        """Nothing will ever be due: the rate is 0 or no symbol is scheduled."""
        return self.rate <= 0 or not self._heap

    def schedule(self, symbol: str, now: float) -> None:
        """Start updating `symbol` (within one period from `now`); nothing if it is scheduled already."""
        if self.rate <= 0 or symbol in self._scheduled:
            return
        self._scheduled.add(symbol)
        heapq.heappush(self._heap, (now + self._phase_rng.random() / self.rate, symbol))

    def set_rate(self, rate: float, symbols: Iterable[str], now: float | None) -> None:
        """A new rate (0 stops updates) for `symbols`, scheduled afresh from `now` (None: not running)."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = float(rate)
        self.clear()
        if now is not None:
            for symbol in symbols:
                self.schedule(symbol, now)

    def clear(self) -> None:
        self._heap.clear()
        self._scheduled.clear()

    def due(self, now: float, subscribed: Callable[[str], bool]) -> Iterator[str]:
        """Every symbol due by `now`, each rescheduled a period later; one no longer `subscribed` leaves."""
        heap = self._heap
        period = 1.0 / self.rate
        while heap and heap[0][0] <= now:
            due_at, symbol = heap[0]
            if not subscribed(symbol):
                heapq.heappop(heap)
                self._scheduled.discard(symbol)
                continue
            nxt = due_at + period
            if nxt < now - 1.0:
                # More than a second behind (the loop was blocked): skip the backlog, don't burst it.
                nxt = now + self._phase_rng.random() * period
            heapq.heapreplace(heap, (nxt, symbol))
            yield symbol
