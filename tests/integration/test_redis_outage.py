"""Redis going away: reads return None (strict: raise), nothing crashes, service resumes when it is back."""

from __future__ import annotations

import pytest

from client import BookState, MarketDataUnavailableError, OrderBookSnapshot, RedisMarketDataProvider
from launch.redis_server import LocalRedisServer as RedisServer


def test_reads_survive_a_redis_outage(fresh_redis_server: RedisServer) -> None:
    book = OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], [(2.0, 1.0)])
    provider = RedisMarketDataProvider.from_url(fresh_redis_server.url)
    strict = RedisMarketDataProvider.from_url(fresh_redis_server.url, strict=True)
    with provider, strict:
        provider.on_upbit_snapshot(book)
        assert provider.get_latest_snapshot("KRW-BTC") == book
        fresh_redis_server.kill()
        assert provider.get_latest_snapshot("KRW-BTC") is None
        assert provider.snapshot_status("KRW-BTC").state is BookState.UNAVAILABLE
        with pytest.raises(MarketDataUnavailableError):
            strict.get_latest_snapshot("KRW-BTC")
        fresh_redis_server.start()  # back, empty
        assert provider.get_latest_snapshot("KRW-BTC") is None
        provider.on_upbit_snapshot(book)  # script cache is empty too: reloaded on NOSCRIPT
        assert provider.get_latest_snapshot("KRW-BTC") == book


async def test_async_reads_survive_a_redis_outage(fresh_redis_server: RedisServer) -> None:
    book = OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], [(2.0, 1.0)])
    async with RedisMarketDataProvider.from_url(fresh_redis_server.url) as provider:
        assert await provider.awrite_snapshot(book, "upbit")
        fresh_redis_server.kill()
        assert await provider.aget_latest_snapshot("KRW-BTC") is None
        fresh_redis_server.start()
        assert await provider.awrite_snapshot(book, "upbit")
        assert await provider.aget_latest_snapshot("KRW-BTC") == book


def test_start_does_not_fail_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    from launch.redis_server import free_port

    provider = RedisMarketDataProvider.from_url(f"redis://127.0.0.1:{free_port()}/0")
    provider.settings.redis_timeout  # noqa: B018
    with provider:
        assert provider.get_latest_snapshot("KRW-BTC") is None
    assert any("does not answer" in r.getMessage() for r in caplog.records)
