"""The last stage of a book's way, measured where it ends: Redis accepting a version → an engine seeing it.

Opt-in (`RedisMarketDataProvider.enable_latency_metrics`): the mirror then observes, for every book message it
applies, Redis's clock now (this host's clock plus the offset the mirror measures against Redis's ``TIME``)
minus the version's ``wts`` (Redis's ``TIME`` when the write script ran). Both ends are on Redis's clock, so
host clocks that disagree do not show; what remains is the offset's own error (half a round trip at most).

The histogram goes into the engine's own Prometheus registry: the engine serves it with its other metrics.
Labels are per exchange only (bounded cardinality).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

# seconds: the same buckets as the feeder's stage histograms, so that the stages line up on one dashboard
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SeenLatency:
    """``md_written_to_seen_seconds{exchange}``; called by the mirror as ``(exchange, seconds)``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.histogram = Histogram(
            "md_written_to_seen_seconds",
            "Redis accepting a book version to this engine's mirror applying it (Redis's clock both ends)",
            ["exchange"],
            buckets=BUCKETS,
            registry=REGISTRY if registry is None else registry,
        )

    def __call__(self, exchange: str, seconds: float) -> None:
        self.histogram.labels(exchange).observe(max(0.0, seconds))
