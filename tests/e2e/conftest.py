"""The `rig` of the end-to-end tests: simulator, feeder subprocesses, a private redis-server, a provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.feeder_rig import Rig

from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.redis_server import LocalRedisServer as RedisServer


@pytest.fixture
async def rig(fresh_redis_server: RedisServer) -> AsyncIterator[Rig]:
    async with ExchangeSimulator(rate=5.0, ping_interval=1.0) as sim:
        async with RedisMarketDataProvider.from_url(fresh_redis_server.url) as provider:
            r = Rig(fresh_redis_server, sim, provider)
            try:
                yield r
            finally:
                for f in r.feeders:
                    f.cleanup()
                await r.raw.aclose()
