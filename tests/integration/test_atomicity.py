"""Readers never see half a book, and every announced seq is already stored (fakeredis and real Redis)."""

from __future__ import annotations

import threading
import time

import orjson
from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider

WRITES = 3000


def tagged(i: int) -> OrderBookSnapshot:
    # bids and asks carry the write number in their sizes, on several levels
    return OrderBookSnapshot(
        "KRW-BTC",
        1_700_000_000.0 + i / 1000,
        [(1000.0 - j, float(i)) for j in range(10)],
        [(1001.0 + j, float(i)) for j in range(10)],
        xid=i,
    )


def test_readers_never_see_a_torn_book_and_publishes_are_stored(backend: Backend) -> None:
    writer = RedisMarketDataProvider(redis=backend.new_sync())
    reader = RedisMarketDataProvider(redis=backend.new_sync())
    checker = backend.new_sync()
    writer.write_snapshot(tagged(0), "upbit")
    pubsub = backend.new_sync().pubsub()
    pubsub.subscribe("md:upbit:KRW-BTC")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"

    done = threading.Event()
    errors: list[str] = []

    def write() -> None:
        try:
            for i in range(1, WRITES + 1):
                writer.write_snapshot(tagged(i), "upbit")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))
        finally:
            done.set()

    messages: list[int] = []

    def listen() -> None:
        while len(messages) < WRITES:
            msg = pubsub.get_message(timeout=0.5)
            if msg is None:
                if done.is_set() and len(messages) < WRITES and not errors:
                    # the writer is done; anything still to come is already buffered
                    msg = pubsub.get_message(timeout=2)
                    if msg is None:
                        errors.append(f"only {len(messages)} messages arrived")
                        return
                else:
                    continue
            if msg["type"] != "message":
                continue
            data = orjson.loads(msg["data"])
            stored = int(checker.hget("md:upbit:KRW-BTC", "seq"))
            if stored < data["seq"]:
                errors.append(f"message seq {data['seq']} announced before it was stored (stored {stored})")
            if {q for _, q in data["bids"]} != {q for _, q in data["asks"]}:
                errors.append(f"torn message {data['seq']}")
            messages.append(data["seq"])

    threads = [threading.Thread(target=write), threading.Thread(target=listen)]
    for t in threads:
        t.start()
    reads = 0
    last_seq = 0
    while not done.is_set() or reads < 100:
        got = reader.get_latest_snapshot("KRW-BTC")
        assert got is not None and got.seq is not None
        tags = {q for _, q in got.bids} | {q for _, q in got.asks}
        assert len(tags) == 1, f"torn book: bids of one write with asks of another: {tags}"
        assert got.seq >= last_seq, "seq went backwards"
        last_seq = got.seq
        reads += 1
    for t in threads:
        t.join(30)
    pubsub.close()
    assert not errors, errors[:5]
    assert reads >= 100
    assert messages == list(range(2, WRITES + 2))  # seq 1 was the initial write before subscribing
    final = reader.get_latest_snapshot("KRW-BTC")
    assert final == tagged(WRITES) and final is not None and final.seq == WRITES + 1


def test_concurrent_writers_keep_the_newest(backend: Backend) -> None:
    """Two writers racing with interleaved xids: the key never goes back in time."""
    a = RedisMarketDataProvider(redis=backend.new_sync(), writer_id="writer-a")
    b = RedisMarketDataProvider(redis=backend.new_sync(), writer_id="writer-b")
    reader = RedisMarketDataProvider(redis=backend.new_sync())

    def run(p: RedisMarketDataProvider, start: int) -> None:
        for i in range(start, 1000, 2):
            p.write_snapshot(tagged(i), "upbit")

    threads = [threading.Thread(target=run, args=(a, 0)), threading.Thread(target=run, args=(b, 1))]
    for t in threads:
        t.start()
    last_xid = -1
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads):
        got = reader.get_latest_snapshot("KRW-BTC")
        if got is not None:
            assert got.xid is not None and got.xid >= last_xid
            last_xid = got.xid
        assert time.monotonic() < deadline
    for t in threads:
        t.join()
    final = reader.get_latest_snapshot("KRW-BTC")
    assert final is not None and final.xid == 999
