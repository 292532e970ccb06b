"""Connection pacing: how fast the feeders of one host may open WebSockets to one exchange.

Exchanges limit new connections per IP (Upbit 5 a second, Binance 300 per 5 minutes, OKX 3 a second...) and
ban IPs that keep reconnecting. A token bucket is not enough: with a burst of 10 and a rate of 1/s it lets 10
opens into one second and 310 into five minutes. Both limiters here are sliding-window logs, which never let
more than `limit` opens into any window of `window` seconds, wherever the window starts:

- `OpenRateLimiter`: this process's own log (also the fallback while Redis is unreachable);
- `SharedOpenLimiter`: one log per exchange and host in Redis (`client.layout.PACE`, a single script on
  Redis's clock), so that every feeder process on the host, which shares its IP, takes from the same budget,
  reconnect storms included. Each open is recorded in the local log as well, so a Redis outage starts the
  fallback from this process's real recent history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Protocol

import redis.asyncio
import redis.exceptions

from client.layout import RedisLayout, pace_flow
from client.transport import arun_flow

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
_ASK_TIMEOUT = 1.0  # seconds one ask to Redis may take before this open is paced locally
_RETRY_AFTER = 5.0  # after a failed ask, pace locally this long before asking Redis again


class OpenLimiter(Protocol):
    async def acquire(self) -> None:
        """Return when one more connection may be opened (and count it)."""
        ...


class OpenRateLimiter:
    """At most `burst` opens in any `burst / rate` seconds (Upbit 5/s: 5 per second; Binance 1/s with a burst
    of 10: 10 per 10 s, so never more than 300 in 5 minutes), for this process."""

    def __init__(self, rate: float, burst: int) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"pacing needs rate > 0 and burst >= 1, got {rate!r}, {burst!r}")
        self.limit = burst
        self.window = burst / rate
        self._opens: deque[float] = deque()
        self._lock = asyncio.Lock()

    def wait_time(self, now: float) -> float:
        """Seconds until one more open fits the window (0: now)."""
        opens = self._opens
        while opens and opens[0] <= now - self.window:
            opens.popleft()
        return 0.0 if len(opens) < self.limit else opens[0] + self.window - now

    def record(self, now: float) -> None:
        self._opens.append(now)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                wait = self.wait_time(time.monotonic())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)  # a time, not an event: the oldest open leaves the window
            self.record(time.monotonic())


class SharedOpenLimiter:
    """The same limit, counted in Redis for every feeder of `host` (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        layout: RedisLayout,
        exchange: str,
        host: str,
        local: OpenRateLimiter,
    ) -> None:
        self._redis = client
        self._layout = layout
        self.exchange = exchange
        self.host = host
        self.local = local
        self._window_ms = max(1, round(local.window * 1000))
        self._shared = True  # False while Redis is unreachable (logged once per outage)
        self._local_until = 0.0  # monotonic time until which opens are paced locally (Redis failed)
        self._lock = asyncio.Lock()  # one open at a time in this process: the log decides in order

    async def acquire(self) -> None:
        """Ask Redis's log (at most `_ASK_TIMEOUT` per ask); while it cannot answer, pace with the local log
        and ask Redis again only every `_RETRY_AFTER` seconds: a Redis outage must not slow reconnects to
        the exchange, which go on while the writer waits for Redis."""
        local = self.local
        async with self._lock:
            while True:
                if time.monotonic() >= self._local_until:
                    try:
                        async with asyncio.timeout(_ASK_TIMEOUT):
                            wait_ms = await self._ask()
                    except _REDIS_ERRORS as exc:
                        self._local_until = time.monotonic() + _RETRY_AFTER
                        if self._shared:
                            log.warning(
                                "%s: connection pacing falls back to this process's own log (Redis: %s)",
                                self.exchange, exc or type(exc).__name__,
                            )  # fmt: skip
                            self._shared = False
                    else:
                        if not self._shared:
                            log.info("%s: connection pacing is shared through Redis again", self.exchange)
                            self._shared = True
                        if wait_ms <= 0:
                            break
                        await asyncio.sleep(wait_ms / 1000)
                        continue
                wait = local.wait_time(time.monotonic())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            local.record(time.monotonic())

    async def _ask(self) -> int:
        flow = pace_flow(
            self._layout, self.exchange, self.host, self.local.limit, self._window_ms, secrets.token_hex(8)
        )
        wait_ms, _ = await arun_flow(self._redis, flow)
        return wait_ms
