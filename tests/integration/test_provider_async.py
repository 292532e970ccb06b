"""The asyncio half of the provider: same rules, same layout, run by the async client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.backends import Backend

from client import BookState, MarketDataError, OrderBookSnapshot, RedisMarketDataProvider, StaleSnapshotError


def book(symbol: str, tag: float) -> OrderBookSnapshot:
    return OrderBookSnapshot(symbol, 1_700_000_000.0 + tag, [(100.0 + tag, 1.0)], [(101.0 + tag, 2.0)])


async def test_async_reads_see_sync_writes(backend: Backend, aclient: Any) -> None:
    writer = RedisMarketDataProvider(redis=backend.sync)
    symbols = ["KRW-BTC", "KRW-ETH", "BTCUSDT", "ETHUSDT"]
    for i, s in enumerate(symbols):
        (writer.on_upbit_snapshot if "-" in s else writer.on_binance_snapshot)(book(s, i))
    async with RedisMarketDataProvider(async_redis=aclient) as reader:
        results = await asyncio.gather(*(reader.aget_latest_snapshot(s) for s in symbols))
        assert results == [book(s, i) for i, s in enumerate(symbols)]
        assert await reader.aget_latest_snapshots(symbols) == {s: book(s, i) for i, s in enumerate(symbols)}
        assert await reader.aget_latest_snapshot("KRW-XRP") is None
        status = await reader.asnapshot_status("KRW-BTC")
        assert status.state is BookState.LIVE and status.seq == 1
        last = await reader.aget_last_snapshot("binance")
        assert last == book("ETHUSDT", 3)
        assert sorted(await reader.aall_books()) == sorted(
            [("upbit", "KRW-BTC"), ("upbit", "KRW-ETH"), ("binance", "BTCUSDT"), ("binance", "ETHUSDT")]
        )


async def test_async_write_and_legacy_callback_without_sync_client(backend: Backend, aclient: Any) -> None:
    provider = RedisMarketDataProvider(async_redis=aclient)
    assert await provider.awrite_snapshot(book("KRW-BTC", 1), "upbit") is True
    assert await provider.awrite_snapshot(book("KRW-BTC", 0), "upbit") is False
    provider.on_binance_snapshot(book("BTCUSDT", 2))  # sync callback, async client: runs as an owned task
    await provider.astop()  # waits for that write
    reader = RedisMarketDataProvider(redis=backend.sync)
    assert reader.get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 2)
    assert reader.get_latest_snapshot("KRW-BTC") == book("KRW-BTC", 1)


async def test_async_strict_mode(backend: Backend, aclient: Any) -> None:
    RedisMarketDataProvider(redis=backend.sync).write_snapshot(
        OrderBookSnapshot("KRW-BTC", 1.0, [], [], recv_ts=1.0), "upbit"
    )
    provider = RedisMarketDataProvider(async_redis=aclient, strict=True, max_age=1.0)
    with pytest.raises(StaleSnapshotError):
        await provider.aget_latest_snapshot("KRW-BTC")


async def test_wrong_client_kind_is_a_clear_error(backend: Backend, aclient: Any) -> None:
    with pytest.raises(MarketDataError, match="only an asyncio"):
        RedisMarketDataProvider(async_redis=aclient).get_latest_snapshot("KRW-BTC")
    with pytest.raises(MarketDataError, match="only a sync"):
        await RedisMarketDataProvider(redis=backend.sync).aget_latest_snapshot("KRW-BTC")


async def test_a_sync_only_provider_awaiting_updates_never_blocks_the_event_loop(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event consumers may await on a provider that has only a sync client: its Redis calls then run on a
    worker thread, never in the event loop."""
    import threading

    import client.provider as provider_module

    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    real_run_flow = provider_module.run_flow

    def recording_run_flow(client: Any, flow: Any) -> Any:
        threads.append(threading.current_thread())
        return real_run_flow(client, flow)

    monkeypatch.setattr(provider_module, "run_flow", recording_run_flow)
    provider = RedisMarketDataProvider(redis=backend.sync)
    provider.write_snapshot(book("KRW-BTC", 1), "upbit")  # from the test itself: not counted
    threads.clear()
    try:
        assert await provider.await_for_update(["KRW-BTC"], timeout=0.05) == []
        assert threads and all(t is not loop_thread for t in threads)
    finally:
        await asyncio.to_thread(provider.stop)
