"""Feeder settings: the client's settings, every exchange's own, and what a feeder process needs (``MD_*``).

Every field is listed with its default and meaning in `.env.example`; `load_settings` turns a bad value into
a `SettingsError` naming the variable, which `md-feeder` prints before exiting with status 2. The settings of
each exchange (``MD_UPBIT_*``, ``MD_BINANCE_*``) are declared in its module (`feeder.exchanges.registry`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator, model_validator

from client.layout import host_writer_id, validate_writer_id
from client.settings import (
    AtLeastOne,
    ClientSettings,
    NonNegativeInt,
    NonNegativeSeconds,
    OptionalPort,
    OptionalSeconds,
    PositiveSeconds,
)
from feeder.exchanges.registry import EXCHANGES, ExchangeSettings


def parse_shard(value: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): this process takes the second of four deterministic shares of each symbol list."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match:
        raise ValueError("must look like K/N, e.g. 2/4")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise ValueError("K/N needs 1 <= K <= N")
    return k, n


class FeederSettings(ClientSettings, ExchangeSettings):
    """Settings of one `md-feeder` process."""

    feeder_id: str = ""
    """Id of this feeder in Redis (md:feeder:<id>, the `feeder` field of its books). Empty: <host>-<exchanges>
    (plus -<K>of<N> for a shard), the same across restarts of the same service."""
    exchanges: str = "upbit,binance"
    """Comma-separated exchanges this process feeds."""
    shard: str = "1/1"
    """K/N: take the K-th of N deterministic shares of each symbol list (several feeders split a list)."""
    connect_timeout: PositiveSeconds = 10.0
    ping_interval: OptionalSeconds = None
    """Seconds between WebSocket pings (unset: each exchange's own, Upbit 10, Binance 20); they also keep Upbit
    from closing an idle connection."""
    ping_timeout: OptionalSeconds = None
    """A connection whose pong is this late is dead: closed and replaced (unset: Upbit 10, Binance 20)."""
    silence_timeout: NonNegativeSeconds = 0.0
    """Replace a connection that delivered no frame for this long, on every exchange (0: each exchange's own
    rule: Binance after 3 missed pushes, at least 0.5 s; Upbit after 20 mean gaps, at least 1 s)."""
    pacing_host: str = ""
    """The name under which this host's feeders share their connection budget per exchange in Redis
    (``md:pacing:<exchange>:<host>``; exchanges count per IP). Empty: this machine's host name. Feeders behind
    one NAT address should share one name."""
    resyncs_per_minute: AtLeastOne | None = None
    """Incremental books (Bybit, OKX): resubscriptions one connection may send a minute after broken chains;
    past that the connection is replaced. Unset: each exchange's own (Bybit 20; OKX 3, within its 480
    requests per connection per hour)."""
    missing_after: PositiveSeconds = 30.0
    """A subscribed symbol with no book this many seconds after its connection first subscribed is reported
    missing (log, feeder status, ``md status``): a mistyped or delisted symbol gets no frame and no error."""
    reconnect_max_delay: PositiveSeconds = 30.0
    """Cap of the exponential reconnect backoff (first retry immediately, then 0.25 s doubling, with jitter)."""
    heartbeat_interval: PositiveSeconds = 1.0
    heartbeat_ttl: PositiveSeconds = 5.0
    """The feeder key expires after this long without a heartbeat: its books then read as not live."""
    write_batch: AtLeastOne = 500
    """Most books written in one pipelined round trip."""
    simulated: bool = False
    """The exchange URLs point at the simulator (md-sim): every book is marked simulated (``md`` shows it)."""
    max_levels: AtLeastOne = 50
    """A frame whose book has more levels a side than this is malformed (counted, skipped, never written)."""
    history_maxlen: NonNegativeInt = 0
    """Keep about this many past versions of every book in a capped stream beside it (``{md:<exchange>:
    <symbol>}:hist``), appended by the write script itself; 0: no history. Memory: docs/operations.md."""
    metrics_port: OptionalPort = None
    """Serve Prometheus metrics on http://MD_METRICS_HOST:<port>/metrics and a health check on /healthz
    (unset: off; 0: any free port, logged)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server listens on (0.0.0.0 to be scraped from other machines or containers)."""
    health_grace: PositiveSeconds = 30.0
    """/healthz fails once a connection has been down (reconnecting) for longer than this."""
    summary_interval: PositiveSeconds = 60.0
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """text: one line per event for people; json: one JSON object per line (ts, time, level, logger, message,
    exc) for log shippers."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "asyncio"
    """asyncio (the default): asyncio's own loop; auto: uvloop when it is installed (the ``fast`` extra);
    uvloop: refuse to start without it. Not uvloop by default: it gave no measurable gain here, and on a
    Cluster node restart it raised RuntimeError (not a connection error) out of redis-py's reconnect, which
    stopped the feeder (docs/performance.md)."""

    @field_validator("feeder_id")
    @classmethod
    def _check_feeder_id(cls, value: str) -> str:
        return validate_writer_id(value) if value else ""

    @field_validator("pacing_host")
    @classmethod
    def _check_pacing_host(cls, value: str) -> str:
        return validate_writer_id(value) if value else host_writer_id()

    @field_validator("exchanges")
    @classmethod
    def _check_exchanges(cls, value: str) -> str:
        names = [x.strip().lower() for x in value.split(",") if x.strip()]
        unknown = [x for x in names if x not in EXCHANGES]
        if unknown or not names:
            raise ValueError(f"must be a comma-separated subset of {', '.join(EXCHANGES)}")
        return ",".join(dict.fromkeys(names))

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str) -> str:
        parse_shard(value)
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _heartbeat_fits_ttl(self) -> FeederSettings:
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError(
                f"MD_HEARTBEAT_TTL ({self.heartbeat_ttl:g} s) must be longer than MD_HEARTBEAT_INTERVAL "
                f"({self.heartbeat_interval:g} s): a record would expire between two heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _default_feeder_id(self) -> FeederSettings:
        if not self.feeder_id:
            k, n = self.shard_pair
            self.feeder_id = host_writer_id(*self.exchange_list, *([f"{k}of{n}"] if n > 1 else []))
        return self

    # -------------------------------------------------------------------------------------------- derived
    @property
    def exchange_list(self) -> list[str]:
        return self.exchanges.split(",")

    def symbols_of(self, exchange: str) -> list[str]:
        return EXCHANGES[exchange].symbols(self)

    @property
    def shard_pair(self) -> tuple[int, int]:
        return parse_shard(self.shard)
