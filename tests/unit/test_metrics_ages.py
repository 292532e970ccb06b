"""The book-age metrics of a feeder: quantiles per exchange, and by symbol only for the few oldest books."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feeder.metrics import OLDEST_SHOWN, FeederCollector

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


class HeldBooks:
    """What the collector reads of a writer: its statistics, buffer, Redis state and latest books."""

    def __init__(self, ages: dict[tuple[str, str], float]) -> None:
        from feeder.writer import WriterStats

        self.stats = WriterStats()
        self.pending = 0
        self.redis_ok = True
        self._latest = [((ex, sym), NOW - age) for (ex, sym), age in ages.items()]

    def latest_received(self) -> list[tuple[tuple[str, str], float]]:
        return self._latest


def scrape(writer: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    monkeypatch.setattr("feeder.metrics.time.time", lambda: NOW)
    registry = CollectorRegistry()
    registry.register(FeederCollector(writer, list))
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {f.name: f.samples for f in families}


def test_only_the_oldest_books_are_named_and_quantiles_summarise_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ages = {("upbit", f"KRW-S{i}"): float(i) for i in range(100)}  # KRW-S99 is the oldest, 99 s
    ages[("binance", "BTCUSDT")] = 0.5
    found = scrape(HeldBooks(ages), monkeypatch)
    oldest = {
        (s.labels["exchange"], s.labels["symbol"]): s.value for s in found["md_oldest_book_age_seconds"]
    }
    named_upbit = {sym for ex, sym in oldest if ex == "upbit"}
    assert named_upbit == {f"KRW-S{i}" for i in range(100 - OLDEST_SHOWN, 100)}  # bounded, and the oldest
    assert oldest[("upbit", "KRW-S99")] == 99.0 and oldest[("binance", "BTCUSDT")] == 0.5
    quantiles = {(s.labels["exchange"], s.labels["quantile"]): s.value for s in found["md_book_age_seconds"]}
    assert quantiles[("upbit", "1")] == 99.0  # the oldest
    assert quantiles[("upbit", "0.5")] == 50.0 and quantiles[("upbit", "0.99")] == 99.0
    assert quantiles[("binance", "0.5")] == 0.5
    held = {s.labels["exchange"]: s.value for s in found["md_books_held"]}
    assert held == {"upbit": 100.0, "binance": 1.0}


def test_no_books_no_age_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    found = scrape(HeldBooks({}), monkeypatch)
    assert found.get("md_oldest_book_age_seconds", []) == [] and found.get("md_book_age_seconds", []) == []
