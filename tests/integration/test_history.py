"""Capped history (MD_HISTORY_MAXLEN): every accepted version appended by the write script itself to a stream in
the book's slot; read back oldest first, capped exactly, refused versions never appended."""

from __future__ import annotations

import asyncio
from typing import Any

from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider
from client.layout import RedisLayout
from feeder.writer import SnapshotWriter
from md_cli.main import main as md_main

LAYOUT = RedisLayout()


def book(i: int) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        "KRW-BTC", 1_700_000_000 + i, [(100.0 + i, 1.0)], [(101.0 + i, 2.0)], xid=i, recv_ts=1.7e9 + i
    )


async def test_history_keeps_the_last_versions_in_order_and_skips_refused_ones(
    backend: Backend, aclient: Any
) -> None:
    backend.sync.hset("md:feeder:h1", "state", "running")
    writer = SnapshotWriter(aclient, LAYOUT, "h1", history=5)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(1, 13):
            writer.submit("upbit", book(i))
            assert await writer.flush(5)  # one version at a time: each is accepted and appended
        writer.submit("upbit", book(3))  # older than the stored one: refused, so not history either
        assert await writer.flush(5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert writer.stats.written == 12 and writer.stats.rejected == 1
    key = LAYOUT.history_key("upbit", "KRW-BTC")
    assert key == "md:hist:{md:upbit:KRW-BTC}"  # the book key as hash tag: the same Cluster slot
    assert backend.sync.xlen(key) == 5  # capped exactly
    provider = RedisMarketDataProvider(redis=backend.sync)
    past = provider.get_history("KRW-BTC", "upbit", last=3)
    assert [b.xid for b in past] == [10, 11, 12]  # the newest three, oldest first
    assert past[-1] == book(12) and [b.seq for b in past] == [10, 11, 12]
    assert [b.xid for b in provider.get_history("KRW-BTC", "upbit", last=100)] == [8, 9, 10, 11, 12]
    assert provider.get_history("ETHUSDT", "binance") == []


async def test_without_history_nothing_is_appended(backend: Backend, aclient: Any) -> None:
    writer = SnapshotWriter(aclient, LAYOUT, "h2")
    task = asyncio.create_task(writer.run())
    try:
        writer.submit("upbit", book(1))
        assert await writer.flush(5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert backend.sync.exists(LAYOUT.history_key("upbit", "KRW-BTC")) == 0


def test_md_history_prints_the_versions_oldest_first(real_backend: Backend, capsys: Any) -> None:
    client = real_backend.sync
    client.delete(LAYOUT.history_key("upbit", "KRW-ETH"))
    for i in (1, 2, 3):
        client.xadd(LAYOUT.history_key("upbit", "KRW-ETH"), {"seq": i, "xid": 10 + i, "ts": 1.7e9 + i, "recv_ts": 1.7e9 + i,
                    "rts": 1.7e9 + i, "feeder": "f", "bids": "[[5.0,1.0]]", "asks": "[[6.0,2.0]]"})  # fmt: skip
    assert md_main(["--redis-url", real_backend.url, "history", "upbit", "krw-eth", "--last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["2", "3"] and "bid 5 x 1" in lines[0]
    assert md_main(["--redis-url", real_backend.url, "history", "upbit", "KRW-NONE"]) == 1
    assert (
        "no history for upbit:KRW-NONE (feeders keep one with MD_HISTORY_MAXLEN)" in capsys.readouterr().err
    )
