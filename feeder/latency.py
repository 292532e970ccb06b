"""Per-stage latency of the books this feeder wrote, for its status record (``md status -v``).

Two stages per exchange, from the times every book carries: the exchange's event time → receipt by the
feeder (two clocks: a skew shows here, clamped at 0), and receipt → Redis accepting the write (one clock).
The last `WINDOW` books of each exchange are kept; p50 and p99 are computed at each heartbeat, not per book.
Prometheus gets the same stages as histograms (`feeder.metrics`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from client.layout import stage_latency_field

if TYPE_CHECKING:
    from feeder.writer import BookTimes

WINDOW = 2000  # books per exchange the percentiles are taken over


class StageLatency:
    """A writer observer (`feeder.writer.WriteObserver`) that keeps recent per-stage latencies."""

    def __init__(self, window: int = WINDOW) -> None:
        self._window = window
        self._stages: dict[tuple[str, str], deque[float]] = {}

    def books_written(self, books: Sequence[BookTimes], now: float) -> None:
        sample = self._sample
        for exchange, timestamp, received in books:
            if received is None:
                continue
            sample(exchange, "recv_to_written", now - received)
            if timestamp != received:  # Binance's partial books carry no event time
                sample(exchange, "exchange_to_recv", received - timestamp)

    def round_trip_done(self, seconds: float) -> None:
        return None

    def _sample(self, exchange: str, stage: str, seconds: float) -> None:
        samples = self._stages.get((exchange, stage))
        if samples is None:
            samples = self._stages[(exchange, stage)] = deque(maxlen=self._window)
        samples.append(max(0.0, seconds))

    def fields(self) -> dict[str, str]:
        """``latency_ms:<exchange>:<stage>`` → ``p50 0.41 p99 2.3`` (milliseconds) for the status record."""
        out: dict[str, str] = {}
        for (exchange, stage), samples in sorted(self._stages.items()):
            if samples:
                ordered = sorted(samples)
                p50 = ordered[len(ordered) // 2] * 1000
                p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
                out[stage_latency_field(exchange, stage)] = f"p50 {p50:.3g} p99 {p99:.3g}"
        return out
