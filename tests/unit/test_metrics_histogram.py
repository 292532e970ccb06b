"""`feeder.metrics.StageHistogram` exposes what prometheus-client's `Histogram` would, for the same values."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feeder.metrics import _LATENCY_BUCKETS, StageHistogram


def exposed(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if not s.name.endswith("_created")
    )


def test_the_same_buckets_counts_and_sums_as_prometheus_client() -> None:
    rng = random.Random(3)
    # every bucket bound exactly (a value on a bound belongs to that bucket), around them, and past the last
    values = [*_LATENCY_BUCKETS, 0.0, 11.0, 1e9] + [rng.lognormvariate(-6, 2) for _ in range(2000)]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("md_t_seconds", "t", ["exchange"], buckets=_LATENCY_BUCKETS, registry=theirs)
    unlabelled = Histogram("md_u_seconds", "u", buckets=_LATENCY_BUCKETS, registry=theirs)
    mine, mine_unlabelled = (
        StageHistogram("md_t_seconds", "t", "exchange"),
        StageHistogram("md_u_seconds", "u", None),
    )
    ours.register(mine)
    ours.register(mine_unlabelled)
    for i, value in enumerate(values):
        exchange = ("upbit", "binance")[i % 2]
        reference.labels(exchange).observe(value)
        mine.observe(exchange, value)
        unlabelled.observe(value)
        mine_unlabelled.observe("", value)
    got, want = exposed(ours), exposed(theirs)
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in want]
    for (name, labels, a), (_, _, b) in zip(got, want, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), (name, labels, a, b)


def test_nothing_observed_exposes_the_family_without_series() -> None:
    registry = CollectorRegistry()
    registry.register(StageHistogram("md_v_seconds", "v", "exchange"))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert [(f.name, f.type, f.samples) for f in families] == [("md_v_seconds", "histogram", [])]
