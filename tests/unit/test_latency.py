"""Per-stage latency for the status record: percentiles over a bounded window of recent books."""

from __future__ import annotations

from feeder.latency import StageLatency


def test_percentiles_per_exchange_and_stage_over_the_last_books_only() -> None:
    latency = StageLatency(window=100)
    for _ in range(1000):  # old, slow books: pushed out of the window by the 100 below
        latency.books_written([("upbit", 0.0, 1.0)], 11.0)
    for i in range(100):  # i+1 ms from the exchange, i/10 ms from receipt to the write
        received = 100.0 + (i + 1) / 1000
        latency.books_written([("upbit", 100.0, received)], received + i / 10_000)
    fields = latency.fields()
    assert fields["latency_ms:upbit:exchange_to_recv"] == "p50 51 p99 100"
    assert fields["latency_ms:upbit:recv_to_written"] == "p50 5 p99 9.9"


def test_a_book_without_an_event_time_counts_only_its_write_and_skew_is_clamped() -> None:
    latency = StageLatency()
    latency.books_written([("binance", 5.0, 5.0)], 5.002)  # Binance's partial books: timestamp = receipt
    latency.books_written([("okx", 10.0, 9.5)], 9.501)  # the exchange's clock ahead of ours: 0, not negative
    fields = latency.fields()
    assert set(fields) == {
        "latency_ms:binance:recv_to_written", "latency_ms:okx:exchange_to_recv", "latency_ms:okx:recv_to_written"
    }  # fmt: skip
    assert fields["latency_ms:okx:exchange_to_recv"] == "p50 0 p99 0"
    assert latency.fields()["latency_ms:binance:recv_to_written"] == "p50 2 p99 2"
