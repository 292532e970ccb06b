"""End-to-end rig: the simulator in this process, md-feeder subprocesses, a private redis-server, a provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio

from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.redis_server import LocalRedisServer as RedisServer
from support.feeder_process import FeederProcess


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, message: str) -> float:
    """Await `check` until it is true; returns the seconds it took; fails with `message` at the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{message} (not within {timeout}s)")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class Rig:
    def __init__(
        self, server: RedisServer, sim: ExchangeSimulator, provider: RedisMarketDataProvider
    ) -> None:
        self.server = server
        self.sim = sim
        self.provider = provider
        self.feeders: list[FeederProcess] = []
        self.raw = redis.asyncio.Redis.from_url(server.url)

    def start_feeder(self, upbit: list[str], binance: list[str], **env: str) -> FeederProcess:
        base = {
            "MD_REDIS_URL": self.server.url,
            "MD_UPBIT_URL": self.sim.upbit_url,
            "MD_BINANCE_URL": self.sim.binance_url,
            "MD_UPBIT_SYMBOLS": ",".join(upbit),
            "MD_BINANCE_SYMBOLS": ",".join(binance),
            "MD_FEEDER_ID": f"test-feeder-{len(self.feeders) + 1}",
            "MD_EXCHANGES": ",".join(x for x, s in (("upbit", upbit), ("binance", binance)) if s),
        }
        base.update(env)
        feeder = FeederProcess(base)
        self.feeders.append(feeder)
        return feeder

    async def status(self, feeder_id: str = "test-feeder-1") -> dict[str, str]:
        raw = await self.raw.hgetall(f"md:feeder:{feeder_id}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def all_live(self, exchange: str, symbols: list[str]) -> bool:
        books = await self.provider.aget_latest_snapshots(symbols, exchange=exchange)
        return all(b is not None for b in books.values())

    def fail_log(self) -> str:
        return "\n".join(f.log()[-3000:] for f in self.feeders)
