"""Mirror mode and the event API (fakeredis and real Redis; outage tests on a redis-server of their own)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from support.backends import Backend
from support.book_helpers import book, feeder_write, set_feeder_state

from client import BookState, OrderBookSnapshot, RedisMarketDataProvider
from client.layout import RedisLayout, mark_down_flow
from client.mirror import BookCache
from client.transport import run_flow
from launch.redis_server import LocalRedisServer as RedisServer


def poll(check: Any, timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{message} not met within {timeout}s"
        time.sleep(0.01)


async def apoll(check: Any, timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{message} not met within {timeout}s"
        await asyncio.sleep(0.01)


def seed(client: Any, n: int = 3) -> None:
    set_feeder_state(client, "f1")
    for i in range(n):
        feeder_write(client, book(f"KRW-S{i}", 1, xid=1), "f1")
    feeder_write(client, book("BTCUSDT", 1, xid=1), "f1", exchange="binance")


# ------------------------------------------------------------------------------------------------ mirror mode
def test_mirror_serves_current_books_at_once_and_follows_updates(backend: Backend) -> None:
    seed(backend.sync)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as p:
        # an engine started late gets the current books immediately
        assert p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 1)
        assert p.get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 1)
        assert p.get_latest_snapshots(["KRW-S1", "KRW-S2"]) == {
            "KRW-S1": book("KRW-S1", 1),
            "KRW-S2": book("KRW-S2", 1),
        }
        feeder_write(backend.sync, book("KRW-S0", 2, xid=2), "f1")
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 2), message="update mirrored")
        feeder_write(backend.sync, book("KRW-NEW", 1, xid=1), "f1")  # a symbol that appears later
        poll(lambda: p.get_latest_snapshot("KRW-NEW") == book("KRW-NEW", 1), message="new symbol mirrored")
        assert p.snapshot_status("KRW-S0").seq == 2
        assert p.get_latest_snapshot("KRW-NONE") is None
        assert p.snapshot_status("KRW-NONE").state is BookState.MISSING
        assert len(p.latest_snapshots) == 5


def test_opt_in_latency_metrics_observe_written_to_seen(backend: Backend) -> None:
    """`enable_latency_metrics`: each mirrored version is observed once, from Redis accepting it (`wts`) to
    the mirror applying it, on Redis's clock; nothing is observed before the opt-in."""
    registry = CollectorRegistry()
    seed(backend.sync, 1)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as p:
        feeder_write(backend.sync, book("KRW-S0", 2, xid=2), "f1")
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 2), message="update mirrored")
        histogram = p.enable_latency_metrics(registry)
        assert p.enable_latency_metrics(registry) is histogram  # once per provider
        assert registry.get_sample_value("md_written_to_seen_seconds_count", {"exchange": "upbit"}) is None
        for version in (3, 4, 5):
            feeder_write(backend.sync, book("KRW-S0", version, xid=version), "f1")
            poll(lambda v=version: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", v), message="mirrored")
        count = registry.get_sample_value("md_written_to_seen_seconds_count", {"exchange": "upbit"})
        total = registry.get_sample_value("md_written_to_seen_seconds_sum", {"exchange": "upbit"})
        assert count == 3
        assert total is not None and 0 <= total < 3 * 5.0  # a local hop: well under the poll deadline


def test_the_mirror_subscribes_on_a_resp2_connection_of_its_own(real_backend: Backend) -> None:
    """redis-py 8 speaks RESP3 and reads a RESP3 pub/sub message about twice as slowly: a plain client's
    mirror subscribes on a RESP2 connection (client.transport.PubSubSource), and still mirrors every update."""
    seed(real_backend.sync, 1)
    client = real_backend.new_sync()
    assert str(client.connection_pool.connection_kwargs.get("protocol") or 3) == "3"  # the client's default
    with RedisMarketDataProvider(redis=client, mode="mirror") as p:
        subscribers = [
            c for c in real_backend.sync.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))
        ]
        assert [c.get("resp") for c in subscribers] == ["2"]
        feeder_write(real_backend.sync, book("KRW-S0", 2, xid=2), "f1")
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 2), message="update mirrored")
    poll(
        lambda: not [c for c in real_backend.sync.client_list() if int(c.get("psub", 0))],
        message="the subscriber's connection closed on stop",
    )


def test_mirror_reads_do_not_touch_redis(real_backend: Backend) -> None:
    seed(real_backend.sync)
    with RedisMarketDataProvider(redis=real_backend.new_sync(), mode="mirror") as p:
        assert p.get_latest_snapshot("KRW-S0") is not None
        before = real_backend.sync.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
        for _ in range(1000):
            assert p.get_latest_snapshot("KRW-S0") is not None
            assert p.get_latest_snapshot("BTCUSDT", exchange="binance") is not None
        after = real_backend.sync.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
        assert after == before


def test_mirror_of_chosen_symbols_and_exchanges(backend: Backend) -> None:
    seed(backend.sync)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror", mirror_symbols=["KRW-S0"]) as p:
        assert p._mirror is not None and p._mirror.keys == {"md:upbit:KRW-S0"}
        assert p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 1)
        assert p.get_latest_snapshot("KRW-S1") == book("KRW-S1", 1)  # not mirrored: read through
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror", mirror_exchanges=["binance"]) as p:
        assert p._mirror is not None and p._mirror.exchanges == {"binance"}
        assert p.get_latest_snapshot("BTCUSDT") == book("BTCUSDT", 1)
        feeder_write(backend.sync, book("ETHUSDT", 1, xid=1), "f1", exchange="binance")
        poll(lambda: p.get_latest_snapshot("ETHUSDT") is not None, message="new binance book mirrored")


def test_mirror_applies_freshness_rules(backend: Backend) -> None:
    seed(backend.sync)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as p:
        assert p.get_latest_snapshot("KRW-S0") is not None
        run_flow(backend.sync, mark_down_flow(RedisLayout(), "f1", [("upbit", "KRW-S0")]))
        poll(lambda: p.snapshot_status("KRW-S0").state is BookState.CONNECTION_DOWN, message="down seen")
        assert p.get_latest_snapshot("KRW-S0") is None
        feeder_write(backend.sync, book("KRW-S0", 3, xid=3), "f1")
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 3), message="revived")
        backend.sync.delete("md:feeder:f1")  # the feeder died
        poll(lambda: p.get_latest_snapshot("KRW-S1") is None, timeout=3, message="dead feeder seen")
        assert p.snapshot_status("KRW-S1").state is BookState.FEEDER_DEAD
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror", max_age=5) as p:
        p.write_snapshot(OrderBookSnapshot("KRW-OLD", 1.0, [], [], recv_ts=time.time() - 60), "upbit")
        poll(lambda: p.snapshot_status("KRW-OLD").state is BookState.TOO_OLD, message="old book seen as old")


def test_mirror_resyncs_after_pubsub_disconnect(real_backend: Backend) -> None:
    seed(real_backend.sync)
    with RedisMarketDataProvider(redis=real_backend.new_sync(), mode="mirror") as p:
        assert p.get_latest_snapshot("KRW-S0") is not None
        reloads = p._cache.reloads
        for _ in range(3):
            real_backend.sync.client_kill_filter(_type="pubsub")
            feeder_write(real_backend.sync, book("KRW-S0", 5 + _, xid=5 + _), "f1")  # possibly during the gap
        poll(lambda: p._cache.reloads > reloads, message="resync after disconnect")
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 7), message="missed update recovered")


def test_mirror_reports_unavailable_while_redis_is_down(fresh_redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis_server.url)
    seed(client)
    with RedisMarketDataProvider.from_url(fresh_redis_server.url, mode="mirror") as p:
        assert p.get_latest_snapshot("KRW-S0") is not None
        fresh_redis_server.kill()
        poll(lambda: p.snapshot_status("KRW-S0").state is BookState.UNAVAILABLE, message="outage seen")
        assert p.get_latest_snapshot("KRW-S0") is None
        fresh_redis_server.start()
        client = redis.Redis.from_url(fresh_redis_server.url)
        seed(client)  # the feeders write again after a restart
        poll(lambda: p.get_latest_snapshot("KRW-S0") == book("KRW-S0", 1), timeout=10, message="resynced")
    client.close()


def test_seq_gap_asks_for_a_reread() -> None:
    cache = BookCache(RedisLayout())
    import orjson

    def msg(seq: int, tag: float) -> bytes:
        b = book("KRW-BTC", tag)
        return orjson.dumps({"seq": seq, "ts": b.timestamp, "recv_ts": 1.0, "xid": seq, "feeder": "f", "hb": True,
                             "live": True, "bids": b.bids, "asks": b.asks})  # fmt: skip

    assert cache.apply("md:upbit:KRW-BTC", msg(1, 1)) is None
    assert cache.apply("md:upbit:KRW-BTC", msg(2, 2)) is None
    assert cache.apply("md:upbit:KRW-BTC", msg(2, 9)) is None  # duplicate: ignored
    assert cache.book("md:upbit:KRW-BTC").snapshot == book("KRW-BTC", 2)  # type: ignore[union-attr]
    # 3 and 4 were lost: the message is not applied, what Redis holds decides (a re-read)
    assert cache.apply("md:upbit:KRW-BTC", msg(5, 5)) == "md:upbit:KRW-BTC"
    assert cache.gaps == 1 and cache.books["md:upbit:KRW-BTC"].seq == 2
    assert cache.apply("md:upbit:KRW-BTC", b"{not json") is None
    assert cache.apply("md:upbit:KRW-BTC", orjson.dumps({"seq": 7, "live": False})) == "md:upbit:KRW-BTC"
    assert cache.apply("md:upbit:KRW-BTC", orjson.dumps({"seq": 2, "live": False})) is None
    assert cache.book("md:upbit:KRW-BTC").live is False  # type: ignore[union-attr]


async def test_async_mirror(backend: Backend, aclient: Any) -> None:
    seed(backend.sync)
    before = set(asyncio.all_tasks())
    async with RedisMarketDataProvider(async_redis=aclient, mode="mirror") as p:
        assert await p.aget_latest_snapshot("KRW-S0") == book("KRW-S0", 1)
        feeder_write(backend.sync, book("KRW-S0", 2, xid=2), "f1")

        async def updated() -> bool:
            return await p.aget_latest_snapshot("KRW-S0") == book("KRW-S0", 2)

        await apoll(updated, message="async mirror update")
    assert set(asyncio.all_tasks()) == before, "the mirror task outlived astop()"


# ------------------------------------------------------------------------------------------------ events
@pytest.mark.parametrize("mode", ["read-through", "mirror"])
def test_wait_for_update_returns_the_next_update(backend: Backend, mode: str) -> None:
    seed(backend.sync)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode=mode) as p:
        assert p.wait_for_update(["KRW-S0"], timeout=0.2) == []  # nothing new yet
        writer = threading.Timer(0.1, feeder_write, args=(backend.sync, book("KRW-S0", 2, xid=2), "f1"))
        writer.start()
        got = p.wait_for_update(["KRW-S0"], timeout=5)
        writer.join()
        assert got == [book("KRW-S0", 2)]
        assert got[0].seq == 2 and got[0].skipped == 0
        # other symbols do not wake this waiter
        feeder_write(backend.sync, book("KRW-S1", 2, xid=2), "f1")
        assert p.wait_for_update(["KRW-S0"], timeout=0.3) == []


def test_slow_consumer_sees_the_newest_book_and_what_it_skipped(backend: Backend) -> None:
    seed(backend.sync)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as p:
        assert p.wait_for_update(["KRW-S0", "KRW-S1"], timeout=0.05) == []
        for i in range(2, 52):
            feeder_write(backend.sync, book("KRW-S0", i, xid=i), "f1")
        feeder_write(backend.sync, book("KRW-S1", 2, xid=2), "f1")
        poll(lambda: p.snapshot_status("KRW-S1").seq == 2, message="writes mirrored")
        got = {s.symbol: s for s in p.wait_for_update(["KRW-S0", "KRW-S1"], timeout=5)}
        assert got["KRW-S0"] == book("KRW-S0", 51) and got["KRW-S0"].skipped == 49
        assert got["KRW-S1"] == book("KRW-S1", 2) and got["KRW-S1"].skipped == 0
        assert len(p._wait_queues) == 1


def test_on_update_callback(backend: Backend) -> None:
    seed(backend.sync)
    seen: list[OrderBookSnapshot] = []
    arrived = threading.Event()

    def callback(snapshot: OrderBookSnapshot) -> None:
        seen.append(snapshot)
        arrived.set()

    with RedisMarketDataProvider(redis=backend.new_sync()) as p:
        unregister = p.on_update(callback, ["BTCUSDT"])
        feeder_write(backend.sync, book("KRW-S0", 2, xid=2), "f1")
        feeder_write(backend.sync, book("BTCUSDT", 2, xid=2), "f1", exchange="binance")
        assert arrived.wait(5)
        assert seen == [book("BTCUSDT", 2)] and seen[0].exchange == "binance"
        unregister()
        assert p.wait_for_update(["BTCUSDT"], timeout=0) == []  # registers this waiter before the write
        feeder_write(backend.sync, book("BTCUSDT", 3, xid=3), "f1", exchange="binance")
        assert p.wait_for_update(["BTCUSDT"], timeout=5)
        assert len(seen) == 1


async def test_async_updates_iterator(backend: Backend, aclient: Any) -> None:
    seed(backend.sync)
    before = set(asyncio.all_tasks())
    async with RedisMarketDataProvider(async_redis=aclient) as p:
        received: list[OrderBookSnapshot] = []

        async def consume() -> None:
            async for snapshot in p.updates(["KRW-S0", "BTCUSDT"]):
                received.append(snapshot)
                if len(received) == 2:
                    return

        consumer = asyncio.create_task(consume())
        await apoll(lambda: _subscribed(p), message="subscriber ready")
        feeder_write(backend.sync, book("KRW-S0", 2, xid=2), "f1")
        feeder_write(backend.sync, book("BTCUSDT", 2, xid=2), "f1", exchange="binance")
        await asyncio.wait_for(consumer, 5)
        assert sorted(s.symbol for s in received) == ["BTCUSDT", "KRW-S0"]
        assert await p.await_for_update(["KRW-S0"], timeout=0.1) == []
        assert list(p._cache.consumers) == [q for q in p._cache.consumers if q in p._wait_queues.values()]
    assert set(asyncio.all_tasks()) == before


async def _subscribed(p: RedisMarketDataProvider) -> bool:
    return p._subscriber is not None and p._cache.connected
