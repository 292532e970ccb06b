"""The writer's own round trips (hiredis-packed, on a connection of the client's pool) on a real redis-server.

`SnapshotWriter` packs its batches with hiredis when it is given a plain `redis.asyncio.Redis` and drives the
layout's flows itself instead of through redis-py's pipeline (see feeder/writer.py). These tests check that
this path stores and publishes exactly what the pipeline path stores, handles error replies (NOSCRIPT) and
broken or cancelled round trips without leaking or reusing a connection, and is not used for other clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
from support.backends import Backend

from client.layout import UNCHANGED, RedisLayout, decode_book, encode_book, write_flow
from client.models import OrderBookSnapshot
from client.transport import arun_flow, packed_commands
from feeder.writer import _CHUNK, SnapshotWriter


def book(symbol: str, i: int, levels: int = 20) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        symbol,
        1_700_000_000 + i / 10,
        [(100.0 + i - j / 100, 1.0 + j) for j in range(levels)],
        [(101.0 + i + j / 100, 2.0 + j) for j in range(levels)],
        xid=i,
        recv_ts=1_700_000_000.5 + i,
    )


def in_use(pool: Any) -> int:
    return len(pool._in_use_connections)


def test_only_plain_clients_take_the_packed_path(redis_server: Any) -> None:
    plain = redis.asyncio.Redis.from_url(redis_server.url)
    assert packed_commands(plain)
    assert not packed_commands(fakeredis.FakeAsyncRedis())
    assert not packed_commands(object())
    assert not packed_commands(redis.asyncio.Redis.from_url(redis_server.url, encoding="latin-1"))
    blocking = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(redis_server.url)
    )
    assert packed_commands(blocking)


async def test_packed_writes_store_and_publish_what_the_pipeline_does(real_backend: Backend) -> None:
    layout = RedisLayout()
    client = real_backend.new_async()
    pubsub = client.pubsub()
    await pubsub.psubscribe(layout.book_pattern())
    writer = SnapshotWriter(client, layout, "w1", batch=7)
    assert packed_commands(client)
    books = [book(f"S{i % 5}USDT", i) for i in range(40)]
    for b in books[:20]:  # written by the writer, packed
        writer.submit("binance", b)
        await asyncio.sleep(0)
    task = asyncio.create_task(writer.run())
    assert await writer.flush(5)
    for b in books[20:]:
        writer.submit("binance", b)
    assert await writer.flush(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert writer.stats.written + writer.stats.coalesced == 40 and writer.stats.rejected == 0
    # the same books written through redis-py's pipeline under another exchange name
    for b in books:
        encoded = encode_book(layout, b, exchange="upbit", writer="w1", heartbeat=True, validate=False)
        await arun_flow(client, write_flow(layout, [encoded]))
    for i in range(5):
        packed = real_backend.sync.hgetall(f"md:binance:S{i}USDT")
        piped = real_backend.sync.hgetall(f"md:upbit:S{i}USDT")
        assert packed.pop(b"exchange") == b"binance" and piped.pop(b"exchange") == b"upbit"
        # the receive time on Redis's clock: Redis's TIME at each write less the writer's age of the book
        assert abs(float(packed.pop(b"rts")) - float(piped.pop(b"rts"))) < 1.0
        assert abs(float(packed.pop(b"wts")) - float(piped.pop(b"wts"))) < 1.0  # Redis's TIME at the write
        packed.pop(b"seq"), piped.pop(b"seq")
        assert packed == piped
        stored = decode_book(
            layout, f"md:binance:S{i}USDT", real_backend.sync.hgetall(f"md:binance:S{i}USDT")
        )
        assert stored is not None and stored.snapshot == books[35 + i]
    expected = writer.stats.written + 40  # one message per accepted write, packed or not
    messages: list[Any] = []
    deadline = asyncio.get_running_loop().time() + 5
    while len(messages) <= expected and asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            messages.append(message)
        elif len(messages) == expected:
            break
    assert len(messages) == expected
    assert real_backend.sync.smembers("md:symbols:binance") == {f"S{i}USDT".encode() for i in range(5)}
    await pubsub.aclose()
    await client.aclose()


async def test_noscript_after_a_script_flush_is_reloaded(real_backend: Backend) -> None:
    client = real_backend.new_async()
    writer = SnapshotWriter(client, RedisLayout(), "w1")
    task = asyncio.create_task(writer.run())
    writer.submit("upbit", book("KRW-BTC", 1))
    assert await writer.flush(5)
    real_backend.sync.script_flush()
    writer.submit("upbit", book("KRW-BTC", 2))
    assert await writer.flush(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert real_backend.sync.hget("md:upbit:KRW-BTC", "seq") == b"2"
    assert writer.stats.redis_errors == 0
    await client.aclose()


async def test_a_batch_of_several_chunks_is_written_in_order_and_reloads_the_script(
    real_backend: Backend,
) -> None:
    """A batch larger than a chunk goes out as several pipelined flows on one connection; after a SCRIPT
    FLUSH every chunk meets NOSCRIPT and gets its own reload round after all first replies were read."""
    client = real_backend.new_async()
    layout = RedisLayout()
    writer = SnapshotWriter(client, layout, "w1", batch=500)
    count = 3 * _CHUNK + 5
    for i in range(count):
        writer.submit("binance", book(f"S{i}USDT", i))
    real_backend.sync.script_flush()  # every chunk's first round answers NOSCRIPT
    task = asyncio.create_task(writer.run())
    assert await writer.flush(5)
    assert (writer.stats.written, writer.stats.batches, writer.stats.redis_errors) == (count, 1, 0)
    for i in range(count):
        writer.submit("binance", book(f"S{i}USDT", count + i))
    assert await writer.flush(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert writer.stats.written == 2 * count and writer.stats.rejected == 0
    for i in (0, _CHUNK - 1, _CHUNK, count - 1):
        stored = decode_book(
            layout, f"md:binance:S{i}USDT", real_backend.sync.hgetall(f"md:binance:S{i}USDT")
        )
        assert stored is not None and stored.seq == 2 and stored.snapshot == book(f"S{i}USDT", count + i)
    assert real_backend.sync.scard("md:symbols:binance") == count
    assert in_use(client.connection_pool) == 0
    await client.aclose()


async def test_a_killed_connection_is_dropped_and_the_books_are_written_after_all(
    real_backend: Backend,
) -> None:
    client = real_backend.new_async()
    writer = SnapshotWriter(client, RedisLayout(), "w1", max_backoff=0.05)
    task = asyncio.create_task(writer.run())
    writer.submit("upbit", book("KRW-BTC", 1))
    assert await writer.flush(5)
    real_backend.sync.client_kill_filter(_type="normal", skipme=True)  # the writer's connection dies
    for i in range(2, 50):
        writer.submit("upbit", book(f"KRW-C{i % 7}", i))
    assert await writer.flush(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert in_use(client.connection_pool) == 0
    for i in range(43, 50):
        assert real_backend.sync.hget(f"md:upbit:KRW-C{i % 7}", "xid") == str(i).encode()
    await client.aclose()


async def test_cancelling_a_round_trip_releases_and_drops_its_connection(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = real_backend.new_async()
    layout = RedisLayout()
    writer = SnapshotWriter(client, layout, "w1", batch=500)
    encoded = [
        encode_book(layout, book(f"S{i}USDT", i, levels=100), exchange="binance", writer="w1", heartbeat=True)
        for i in range(500)
    ]
    reading = asyncio.Event()
    disconnects: list[Any] = []
    connection_class = redis.asyncio.connection.Connection
    disconnect = connection_class.disconnect
    read = asyncio.StreamReader.read
    reads = 0

    async def slow_read(self: asyncio.StreamReader, n: int = -1) -> bytes:
        """The writer's socket reads: the first one returns part of the replies, the second one stalls."""
        nonlocal reads
        reads += 1
        if reads == 2:  # stall in the middle of the batch's replies
            reading.set()
            await asyncio.sleep(3600)
        return await read(self, 64 if reads == 1 else n)

    async def spy_disconnect(self: Any, *args: Any, **kwargs: Any) -> None:
        disconnects.append(self)
        await disconnect(self, *args, **kwargs)

    await writer._run_flow(write_flow(layout, encoded[:1]))  # connected: the reads counted are the batch's
    await client.delete(layout.book_key("binance", "S0USDT"))
    monkeypatch.setattr(asyncio.StreamReader, "read", slow_read)
    monkeypatch.setattr(connection_class, "disconnect", spy_disconnect)
    flow_task = asyncio.create_task(writer._run_flow(write_flow(layout, encoded)))
    await reading.wait()  # the batch is on the wire and the first of its replies are read
    flow_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flow_task
    assert disconnects  # the connection with replies in flight was closed...
    assert in_use(client.connection_pool) == 0  # ...and given back to the pool
    monkeypatch.setattr(asyncio.StreamReader, "read", read)
    # the pool still works, and no stale reply is read by the next round trip
    seqs = await writer._run_flow(write_flow(layout, encoded[:3]))
    # Redis ran the whole cancelled batch: the same books again are unchanged, not errors or stale replies
    assert all(s == UNCHANGED or s >= 1 for s in seqs)
    assert await client.ping()
    await client.aclose()


async def test_the_writer_keeps_one_connection_for_its_round_trips_and_gives_it_back(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking a connection from redis-py's pool per batch cost more than a small batch's round trip: the writer
    takes one for all of them, takes a fresh one after a failure (Redis closed it), and gives it back when
    its task ends."""
    client = real_backend.new_async()
    layout = RedisLayout()
    writer = SnapshotWriter(client, layout, "w1")
    taken = 0
    real_get = redis.asyncio.connection.ConnectionPool.get_connection

    async def counting_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal taken
        taken += 1
        return await real_get(self, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.connection.ConnectionPool, "get_connection", counting_get)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(20):  # 20 batches: each waits for the previous one to be written
            writer.submit("binance", book(f"S{i}USDT", i))
            assert await writer.flush(5)
        assert writer.stats.written == 20 and writer.stats.batches == 20
        assert taken == 1 and in_use(client.connection_pool) == 1
        await client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # Redis drops it
        writer.submit("binance", book("S99USDT", 99))
        assert await writer.flush(10)
        assert writer.stats.written == 21 and taken >= 2  # a fresh connection after the failure
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert in_use(client.connection_pool) == 0  # given back when the task ended
    await client.aclose()
