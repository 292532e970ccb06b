"""Feeder pieces without sockets: sharding, settings, the writer's buffer and outage handling."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions
from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider
from client.layout import RedisLayout
from feeder.connection import ConnectionSettings, ExchangeConnection
from feeder.exchanges import BinanceProtocol
from feeder.exchanges.base import BookSides
from feeder.pacing import OpenRateLimiter
from feeder.writer import SnapshotWriter

SYMBOLS = [f"KRW-C{i:04d}" for i in range(2000)]


def book(symbol: str, i: int) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        symbol, 1_700_000_000 + i, [(100.0 + i, 1.0)], [(101.0 + i, 1.0)], xid=i, recv_ts=1e9 + i
    )


class FlakyRedis:
    """Wraps an asyncio client; pipelines fail while `down` is set (a Redis outage as the writer sees it)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    def pipeline(self, transaction: bool = False) -> Any:
        self.calls += 1
        if self.down:
            raise redis.exceptions.ConnectionError("Redis is down (test)")
        return self.inner.pipeline(transaction=transaction)


async def run_writer(writer: SnapshotWriter) -> asyncio.Task[None]:
    return asyncio.create_task(writer.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_writer_coalesces_per_key_and_writes_the_newest(backend: Backend, aclient: Any) -> None:
    writer = SnapshotWriter(aclient, RedisLayout(), "w1", batch=50)
    for i in range(1, 101):  # before the task runs: everything coalesces to one book per key
        writer.submit("upbit", book("KRW-BTC", i))
        writer.submit("upbit", book("KRW-ETH", i))
    assert writer.pending == 2
    assert writer.stats.coalesced == 198
    task = await run_writer(writer)
    assert await writer.flush(5)
    await stop(task)
    assert writer.stats.written == 2
    backend.sync.hset("md:feeder:w1", "state", "running")
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("KRW-BTC") == book("KRW-BTC", 100)
    assert backend.sync.smembers("md:symbols:upbit") == {b"KRW-BTC", b"KRW-ETH"}


async def test_writer_keeps_newest_books_through_an_outage(backend: Backend, aclient: Any) -> None:
    flaky = FlakyRedis(aclient)
    writer = SnapshotWriter(flaky, RedisLayout(), "w1", batch=10, max_backoff=0.05)  # type: ignore[arg-type]
    task = await run_writer(writer)
    writer.submit("binance", book("BTCUSDT", 1))
    assert await writer.flush(5)
    flaky.down = True
    for i in range(2, 500):
        writer.submit("binance", book("BTCUSDT", i))
        writer.submit("binance", book(f"S{i % 20}USDT", i))
        if i % 50 == 0:
            await asyncio.sleep(0.01)  # let the writer try (and fail) meanwhile
    assert writer.pending <= 21  # bounded by the number of keys, not by time
    assert not writer.redis_ok and writer.stats.redis_errors >= 1
    flaky.down = False
    assert await writer.flush(5)
    await stop(task)
    backend.sync.hset("md:feeder:w1", "state", "running")
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 499)
    assert p.get_latest_snapshot("S19USDT") == book("S19USDT", 499)
    assert writer.redis_ok


async def test_mark_down_discards_pending_books_and_fresh_data_revives(
    backend: Backend, aclient: Any
) -> None:
    writer = SnapshotWriter(aclient, RedisLayout(), "w1")
    backend.sync.hset("md:feeder:w1", "state", "running")
    task = await run_writer(writer)
    writer.submit("upbit", book("KRW-BTC", 1))
    assert await writer.flush(5)
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("KRW-BTC") is not None
    writer.submit("upbit", book("KRW-BTC", 2))
    writer.mark_down("upbit", ["KRW-BTC"])  # the connection dropped before book 2 was written
    assert await writer.flush(5)
    assert p.get_latest_snapshot("KRW-BTC") is None
    assert backend.sync.hget("md:upbit:KRW-BTC", "xid") == b"1"
    writer.submit("upbit", book("KRW-BTC", 3))
    assert await writer.flush(5)
    await stop(task)
    assert p.get_latest_snapshot("KRW-BTC") == book("KRW-BTC", 3)


async def test_a_restarted_sequence_replaces_the_book_and_a_stale_one_does_not(
    backend: Backend, aclient: Any
) -> None:
    """Bybit's ``u=1`` after a service restart: without the restart mark-down the new, lower id is refused
    (the book would stay frozen behind the old id); with it, the first book of the new sequence replaces it.
    While another feeder still holds the book, a restart does not lift the guard."""
    writer = SnapshotWriter(aclient, RedisLayout(), "w1")
    backend.sync.hset("md:feeder:w1", "state", "running")
    task = await run_writer(writer)
    p = RedisMarketDataProvider(redis=backend.sync)
    writer.submit("bybit", book("BTCUSDT", 5000))
    assert await writer.flush(5)
    writer.mark_down("bybit", ["BTCUSDT"])  # a plain resync: the guard stays
    writer.submit("bybit", book("BTCUSDT", 1))
    assert await writer.flush(5)
    assert backend.sync.hget("md:bybit:BTCUSDT", "xid") == b"5000"  # the fault is real: refused as older
    assert p.get_latest_snapshot("BTCUSDT", exchange="bybit") is None  # and not live: right or None
    writer.mark_down("bybit", ["BTCUSDT"], restart=True)
    writer.submit("bybit", book("BTCUSDT", 1))  # queued at once after: the restart still runs first
    assert await writer.flush(5)
    assert p.get_latest_snapshot("BTCUSDT", exchange="bybit") == book("BTCUSDT", 1)
    writer.submit("bybit", book("BTCUSDT", 2))
    assert await writer.flush(5)
    assert p.get_latest_snapshot("BTCUSDT", exchange="bybit") == book("BTCUSDT", 2)
    # a twin (w2) holds the book too: w1's restart leaves the guard to the twin until it lets go
    backend.sync.hset("md:feeder:w2", "state", "running")
    twin = SnapshotWriter(aclient, RedisLayout(), "w2")
    twin_task = await run_writer(twin)
    twin.submit("bybit", book("BTCUSDT", 2))  # JOINED
    assert await twin.flush(5)
    writer.mark_down("bybit", ["BTCUSDT"], restart=True)
    assert await writer.flush(5)
    assert backend.sync.hget("md:bybit:BTCUSDT", "xid") == b"2"
    twin.mark_down("bybit", ["BTCUSDT"], restart=True)
    assert await twin.flush(5)
    assert backend.sync.hget("md:bybit:BTCUSDT", "xid") == b"-1"
    assert p.get_latest_snapshot("BTCUSDT", exchange="bybit") is None
    await stop(twin_task)
    await stop(task)


class FrameSourceStub:
    """A connection as the writer sees it: decodes deferred frames (``b"<i>"`` -> book i, ``b"bad"`` -> None)."""

    def __init__(self) -> None:
        self.decoded: list[tuple[bytes, str]] = []

    def book_sides(self, frame: bytes, recv_ts: float, symbol: str) -> BookSides | None:
        return None  # no text shortcut: every frame is decoded

    def decode_deferred(self, frame: bytes, recv_ts: float, symbol: str) -> OrderBookSnapshot | None:
        self.decoded.append((frame, symbol))
        return None if frame == b"bad" else book(symbol, int(frame))


async def test_deferred_frames_are_decoded_only_when_written(backend: Backend, aclient: Any) -> None:
    source = FrameSourceStub()
    writer = SnapshotWriter(aclient, RedisLayout(), "w1")
    for i in range(1, 51):  # before the task runs: only the newest frame of each key will be written
        writer.submit_frame("binance", "BTCUSDT", str(i).encode(), 1e9 + i, source)
    writer.submit("binance", book("ETHUSDT", 7))  # decoded books and deferred frames mix
    writer.submit_frame("binance", "SOLUSDT", b"3", 1e9, source)
    writer.submit_frame("binance", "SOLUSDT", b"bad", 1e9, source)  # a malformed frame replaces a good one
    task = await run_writer(writer)
    assert await writer.flush(5)
    await stop(task)
    assert sorted(source.decoded) == [(b"50", "BTCUSDT"), (b"bad", "SOLUSDT")]
    stats = writer.stats
    assert (stats.submitted, stats.coalesced, stats.written, stats.malformed) == (53, 50, 2, 1)
    backend.sync.hset("md:feeder:w1", "state", "running")
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 50)
    assert p.get_latest_snapshot("ETHUSDT") == book("ETHUSDT", 7)
    assert p.get_latest_snapshot("SOLUSDT") is None  # neither the replaced frame nor the malformed one


async def test_a_deferred_frame_is_decoded_once_even_when_its_write_fails(
    backend: Backend, aclient: Any
) -> None:
    source = FrameSourceStub()
    flaky = FlakyRedis(aclient)
    writer = SnapshotWriter(flaky, RedisLayout(), "w1", max_backoff=0.05)  # type: ignore[arg-type]
    flaky.down = True
    writer.submit_frame("binance", "BTCUSDT", b"5", 1e9, source)
    writer.submit_frame("binance", "ETHUSDT", b"bad", 1e9, source)
    task = await run_writer(writer)

    deadline = asyncio.get_running_loop().time() + 5
    while writer.stats.redis_errors < 2:  # failed, backed off, failed again
        assert asyncio.get_running_loop().time() < deadline, "the writer did not retry"
        await asyncio.sleep(0.01)
    flaky.down = False
    assert await writer.flush(5)
    await stop(task)
    assert sorted(source.decoded) == [(b"5", "BTCUSDT"), (b"bad", "ETHUSDT")]  # once each, not per attempt
    assert writer.stats.malformed == 1 and writer.stats.written == 1
    backend.sync.hset("md:feeder:w1", "state", "running")
    assert RedisMarketDataProvider(redis=backend.sync).get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 5)


async def test_deferred_decoding_counts_malformed_frames_and_survives_a_parser_bug(
    aclient: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`decode_deferred` runs in the writer, which every connection shares: a bad frame or even a parser bug
    costs that frame (counted as bad), never the writer."""
    protocol = BinanceProtocol()
    connection = ExchangeConnection(
        protocol,
        ["BTCUSDT"],
        SnapshotWriter(aclient, RedisLayout(), "w1"),
        ConnectionSettings(),
        OpenRateLimiter(5.0, 5),
        name="binance-1",
    )
    good = b'{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":7,"bids":[["100.5","1.25"]],"asks":[["100.6","0.5"]]}}'
    book_ = connection.decode_deferred(good, 1.5, "BTCUSDT")
    assert book_ is not None and book_.xid == 7 and book_.bids == [(100.5, 1.25)] and book_.recv_ts == 1.5
    assert connection.decode_deferred(good, 1.5, "ETHUSDT") is None  # not the symbol it was queued for
    assert connection.decode_deferred(good.replace(b'"1.25"', b'"x"'), 1.5, "BTCUSDT") is None
    assert connection.stats.bad_frames == 2

    def broken_parse(frame: bytes | str, recv_ts: float | None = None) -> list[OrderBookSnapshot]:
        raise RuntimeError("a parser bug")

    protocol.parse = broken_parse  # type: ignore[method-assign]
    assert connection.decode_deferred(good, 1.5, "BTCUSDT") is None
    assert connection.stats.bad_frames == 3
    assert "decoding a frame failed unexpectedly" in caplog.text


async def test_a_cancelled_writer_ends_even_when_the_client_swallows_the_cancellation() -> None:
    """fakeredis waits for replies with Python 3.11's wait_for, which loses a cancellation arriving as the reply
    does; the transport re-raises it, so the owner's cancel-and-wait (feeder shutdown) never hangs."""
    import fakeredis

    for round_ in range(40):
        writer = SnapshotWriter(fakeredis.FakeAsyncRedis(), RedisLayout(), "w1")
        task = asyncio.create_task(writer.run())
        for i in range(1 + round_ * 5):
            writer.submit("upbit", book(f"KRW-S{i % 7}", i))
            if i % 10 == 0:
                await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, f"round {round_}: the writer did not end after cancel()"
        assert task.cancelled()


async def test_a_writer_cancelled_at_any_point_of_a_write_ends(real_backend: Backend) -> None:
    """Was: cancelled while its connection was being opened, redis-py returned normally and the writer went on
    waiting for work, so a feeder's shutdown (which cancels it) could wait forever. Cancelled at each step of
    its first write on a fresh connection, the writer ends every time."""
    client = real_backend.new_async()
    stuck = []
    try:
        for i in range(48):
            await client.connection_pool.disconnect()  # the write opens a connection, as after an outage
            writer = SnapshotWriter(client, RedisLayout("md"), "f1")
            task = asyncio.create_task(writer.run())
            writer.submit("upbit", book("KRW-BTC", i))
            for _ in range(i % 12):
                await asyncio.sleep(0)  # let the write get that far
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                stuck.append(i % 12)
                task.cancel()  # a second cancel ends it, so that the test leaves nothing behind
                await asyncio.wait({task}, timeout=2)
            assert task.done()
    finally:
        await client.aclose()
    assert stuck == [], f"cancelled after these many loop steps, the writer went on: {stuck}"
