"""Prometheus metrics and a health check for one feeder process, served on ``MD_METRICS_PORT``.

Counters and gauges are read from the feeder's own statistics when Prometheus scrapes (a custom collector):
nothing is added to the per-frame path. Only the latency histograms are observed as books are written: once
per book Redis accepted (exchange time → receive, receive → written) and once per Redis round trip, counted
by `StageHistogram` (a bisect and an add; prometheus-client's `Histogram` took ~2 µs per observation, twice
per book).

Labels are bounded: per exchange and per connection (``upbit-1``…); per symbol only for the `OLDEST_SHOWN`
oldest books of each exchange (the ones an operator wants named), the age of the rest summarised as quantiles
per exchange. The health endpoint
answers 200 while the writer's round trips succeed and every connection is up or has been down for less than
``MD_HEALTH_GRACE`` seconds (reconnecting within its budget), else 503 with the reasons, one per line.

The server is a few lines of asyncio (`asyncio.start_server`), owned by the feeder's task group: no thread,
and it stops with the feeder.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from feeder.connection import ExchangeConnection
    from feeder.writer import BookTimes, SnapshotWriter

log = logging.getLogger(__name__)

# seconds: from a fraction of a millisecond (a local hop) to the exchanges' worst seconds-long stalls
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OLDEST_SHOWN = 5  # books per exchange named in md_oldest_book_age_seconds (bounded label cardinality)
AGE_QUANTILES = (0.5, 0.9, 0.99, 1.0)

# (metric name, help, connection statistic); per exchange and connection
_CONNECTION_COUNTERS = (
    ("md_frames_received", "WebSocket frames received", "frames"),
    ("md_books_received", "Books handed to the writer", "books"),
    ("md_bad_frames", "Malformed frames skipped", "bad_frames"),
    ("md_exchange_errors", "Error replies from the exchange", "exchange_errors"),
    ("md_reconnects", "Unplanned reconnects (drops, stalls, ping timeouts)", "reconnects"),
    ("md_rotations", "Planned connection replacements (lifetime, shutdown notices)", "rotations"),
    ("md_resyncs", "Incremental books that broke their chain and asked for a new snapshot", "resyncs"),
    ("md_unexpected_books", "Books of symbols the connection did not subscribe (dropped)", "unexpected"),
)
# (metric name, help, writer statistic)
_WRITER_COUNTERS = (
    ("md_books_written", "New book versions Redis accepted", "written"),
    (
        "md_books_coalesced",
        "Books replaced in the buffer by a newer one before they were written",
        "coalesced",
    ),
    ("md_books_rejected", "Books Redis refused as older than the stored one", "rejected"),
    ("md_books_joined", "Stored versions this feeder delivered too (redundancy)", "joined"),
    ("md_books_failed", "Books Redis refused for their key alone (a wrong-typed key...)", "failed"),
    ("md_redis_errors", "Failed Redis write round trips", "redis_errors"),
    ("md_rewrites", "Times Redis lost data and every latest book was rewritten", "rewrites"),
)


class FeederCollector(Collector):
    """The feeder's statistics as Prometheus metrics, read at scrape time."""

    def __init__(
        self, writer: SnapshotWriter, connections: Callable[[], Sequence[ExchangeConnection]]
    ) -> None:
        self._writer = writer
        self._connections = connections

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        conns = self._connections()
        for name, text, attr in _CONNECTION_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["exchange", "connection"])
            for c in conns:
                family.add_metric([c.exchange, c.name], getattr(c.stats, attr))
            yield family
        up = GaugeMetricFamily(
            "md_connection_up", "1 while the connection delivers", labels=["exchange", "connection"]
        )
        symbols = GaugeMetricFamily(
            "md_connection_symbols", "Symbols on the connection", labels=["exchange", "connection"]
        )
        missing = GaugeMetricFamily(
            "md_missing_symbols", "Subscribed symbols with no book yet", labels=["exchange"]
        )
        per_exchange: dict[str, int] = {}
        for c in conns:
            up.add_metric([c.exchange, c.name], 1.0 if c.up else 0.0)
            symbols.add_metric([c.exchange, c.name], len(c.symbols))
            per_exchange[c.exchange] = per_exchange.get(c.exchange, 0) + len(c.missing)
        for exchange, count in per_exchange.items():
            missing.add_metric([exchange], count)
        yield up
        yield symbols
        yield missing
        stats = self._writer.stats
        for name, text, attr in _WRITER_COUNTERS:
            yield CounterMetricFamily(name, text, value=getattr(stats, attr))
        yield GaugeMetricFamily(
            "md_pending_books", "Books and mark-downs waiting for Redis", value=self._writer.pending
        )
        yield GaugeMetricFamily(
            "md_redis_ok",
            "1 while the writer's round trips succeed",
            value=1.0 if self._writer.redis_ok else 0.0,
        )
        yield from self._ages(time.time())

    def _ages(self, now: float) -> Iterator[GaugeMetricFamily]:
        """How long ago each held book last changed, on this host's clock (receipt of the latest version
        Redis took), as quantiles per exchange and, for the `OLDEST_SHOWN` oldest of each, by symbol."""
        by_exchange: dict[str, list[tuple[float, str]]] = {}
        for (exchange, symbol), received in self._writer.latest_received():
            if received is not None:
                by_exchange.setdefault(exchange, []).append((max(0.0, now - received), symbol))
        quantiles = GaugeMetricFamily(
            "md_book_age_seconds",
            "Seconds since each held book last changed: quantiles over the exchange's books (1 = the oldest)",
            labels=["exchange", "quantile"],
        )
        oldest = GaugeMetricFamily(
            "md_oldest_book_age_seconds",
            f"Seconds since the book last changed, for the {OLDEST_SHOWN} oldest books of each exchange",
            labels=["exchange", "symbol"],
        )
        held = GaugeMetricFamily(
            "md_books_held", "Books this feeder holds (wrote, not marked down)", labels=["exchange"]
        )
        for exchange, ages in sorted(by_exchange.items()):
            ages.sort()
            held.add_metric([exchange], len(ages))
            for q in AGE_QUANTILES:
                quantiles.add_metric([exchange, f"{q:g}"], ages[min(len(ages) - 1, int(q * len(ages)))][0])
            for age, symbol in ages[-OLDEST_SHOWN:]:
                oldest.add_metric([exchange, symbol], age)
        yield held
        yield quantiles
        yield oldest


class StageHistogram(Collector):
    """A latency histogram, one series per label value (or one without a label), counted here and turned into
    Prometheus's cumulative buckets when it is scraped. Only the owner's event loop touches it (the metrics
    server runs on that loop), so there is no lock."""

    def __init__(
        self, name: str, documentation: str, label: str | None, buckets: Sequence[float] = _LATENCY_BUCKETS
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._label = label
        self._bounds = tuple(buckets)
        self._counts: dict[str, list[int]] = {}  # per label value: one count per bucket, then the overflow
        self._sums: dict[str, float] = {}

    def observe(self, key: str, seconds: float) -> None:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self._bounds) + 1)
            self._sums[key] = 0.0
        counts[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        self._sums[key] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=[self._label] if self._label is not None else None
        )
        for key, counts in sorted(self._counts.items()):
            cumulative, total = [], 0
            for bound, count in zip(self._bounds, counts, strict=False):
                total += count
                cumulative.append(
                    (repr(float(bound)), total)
                )  # 0.0005, 1.0: as prometheus-client writes them
            cumulative.append(("+Inf", total + counts[-1]))
            family.add_metric([key] if self._label is not None else [], cumulative, self._sums[key])
        yield family


class FeederMetrics:
    """The registry of one feeder: the collector plus the latency histograms the writer observes."""

    def __init__(
        self, writer: SnapshotWriter, connections: Callable[[], Sequence[ExchangeConnection]], *, grace: float
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FeederCollector(writer, connections))
        self._writer = writer
        self._connections = connections
        self.grace = grace
        self.exchange_to_receive = StageHistogram(
            "md_exchange_to_receive_seconds",
            "Exchange event time to receipt by the feeder (across two clocks: never below 0 here)",
            "exchange",
        )
        self.receive_to_written = StageHistogram(
            "md_receive_to_written_seconds",
            "Receipt by the feeder to Redis accepting the book (one clock)",
            "exchange",
        )
        self.round_trip = StageHistogram(
            "md_redis_round_trip_seconds", "One pipelined write round trip to Redis", None
        )
        for histogram in (self.exchange_to_receive, self.receive_to_written, self.round_trip):
            self.registry.register(histogram)
        writer.observers.append(self)

    # the writer's observer -----------------------------------------------------------------------------
    def books_written(self, books: Sequence[BookTimes], now: float) -> None:
        written, delivered = self.receive_to_written.observe, self.exchange_to_receive.observe
        for exchange, stamped, received in books:
            if received is None:
                continue
            written(exchange, now - received if now > received else 0.0)
            if stamped != received:  # Binance's partial books carry no event time: nothing to measure
                delivered(exchange, received - stamped if received > stamped else 0.0)

    def round_trip_done(self, seconds: float) -> None:
        self.round_trip.observe("", seconds)

    # health --------------------------------------------------------------------------------------------
    def problems(self, now: float | None = None) -> list[str]:
        """Why this feeder is not healthy (empty: it is)."""
        now = time.monotonic() if now is None else now
        found = []
        if not self._writer.redis_ok:
            found.append(f"redis: {self._writer.last_error or 'writes fail'}")
        for c in self._connections():
            down = c.down_since
            if not c.up and down is not None and now - down > self.grace:
                found.append(f"{c.name}: down for {now - down:.0f}s ({c.stats.last_error or 'connecting'})")
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` (the Prometheus text format) and ``GET /healthz`` on one port; `start`, `stop`."""

    def __init__(self, metrics: FeederMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing in them matters here
            parts = request.split()
            path = parts[1].decode("latin-1").partition("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, kind, body = (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.exposition(),
                )
            elif path == "/healthz":
                problems = self.metrics.problems()
                status = "503 Service Unavailable" if problems else "200 OK"
                kind, body = "text/plain; charset=utf-8", ("\n".join(problems) or "ok").encode() + b"\n"
            else:
                status, kind, body = (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    b"try /metrics or /healthz\n",
                )
            head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
