"""The promise under faults (issue 10): a book served as live is the exchange's latest, or the read is None.

Each test reproduces one way the promise used to break (the docstring says how) against fakeredis and a real
redis-server, and shows what happens now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from support.backends import Backend
from support.book_helpers import LAYOUT, book, feeder_write, set_feeder_state

import client.freshness
import client.mirror.cache
from client import (
    BookState,
    CorruptSnapshotError,
    InvalidSnapshotError,
    MarketDataError,
    OrderBookSnapshot,
    RedisMarketDataProvider,
)
from client.errors import MarketDataPermissionError
from client.layout import JOINED, encode_book, mark_down_flow, server_run_id, write_flow
from client.mirror import BookCache, PendingBook
from client.transport import run_flow
from feeder.exchanges.base import BookSides
from feeder.status import FeederIdInUseError, FeederStatus
from feeder.writer import SnapshotWriter

KEY = "md:upbit:KRW-BTC"
BINANCE_KEY = "md:binance:BTCUSDT"


def state(backend: Backend, symbol: str = "KRW-BTC", exchange: str | None = None, **kw: Any) -> BookState:
    provider = RedisMarketDataProvider(redis=backend.sync, **kw)
    return provider.snapshot_status(symbol, exchange).state


def binance_book(xid: int, tag: float = 1.0) -> OrderBookSnapshot:
    return OrderBookSnapshot("BTCUSDT", time.time(), [(70000.0 + tag, 1.0)], [(70001.0 + tag, 1.0)], xid=xid)


# ------------------------------------------------------------------------------------------------- ordering
def test_a_legacy_write_with_a_millisecond_timestamp_cannot_freeze_a_fed_book(backend: Backend) -> None:
    """Was: ``on_binance_snapshot`` used the timestamp in ms (~1.8e12) as the ordering id, above Binance's
    ``lastUpdateId`` (~4e10): every later feeder frame was rejected, the legacy book served as live forever."""
    set_feeder_state(backend.sync, "f1")
    assert feeder_write(backend.sync, binance_book(40_000_000_000), "f1", "binance") == 1
    legacy = RedisMarketDataProvider(redis=backend.sync)
    legacy.on_binance_snapshot(OrderBookSnapshot("BTCUSDT", time.time(), [(1.0, 1.0)], [(2.0, 1.0)]))
    assert backend.sync.hget(BINANCE_KEY, "xid") == b"40000000000"  # refused: a feeder holds the book
    assert feeder_write(backend.sync, binance_book(40_000_000_001, 2), "f1", "binance") == 2
    got = legacy.get_latest_snapshot("BTCUSDT")
    assert got is not None and got.xid == 40_000_000_001

    # with no feeder holding it (its connection dropped), a legacy write is taken; the feeder's next frame,
    # whose ordering id comes from another space, still wins
    assert run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("binance", "BTCUSDT")])) == 1
    assert legacy.write_snapshot(
        OrderBookSnapshot("BTCUSDT", time.time(), [(3.0, 1.0)], [(4.0, 1.0)]), "binance"
    )
    assert feeder_write(backend.sync, binance_book(40_000_000_002, 3), "f1", "binance") > 0
    got = legacy.get_latest_snapshot("BTCUSDT")
    assert got is not None and got.xid == 40_000_000_002


def test_an_ordering_id_far_ahead_of_redis_time_is_refused_with_a_clear_error(backend: Backend) -> None:
    """Was: an Upbit write stamped 60 s in the future outranked every later book of the key for 60 s."""
    provider = RedisMarketDataProvider(redis=backend.sync)
    future = OrderBookSnapshot("KRW-BTC", time.time() + 60, [(1.0, 1.0)], [(2.0, 1.0)])
    with pytest.raises(InvalidSnapshotError, match="ahead of Redis's clock") as caught:
        provider.write_snapshot(future, "upbit")
    assert isinstance(caught.value, MarketDataError)
    assert backend.sync.exists(KEY) == 0
    assert provider.write_snapshot(OrderBookSnapshot("KRW-BTC", time.time() + 2, [(1.0, 1.0)], []), "upbit")
    # a feeder's Upbit book (its ordering id is the exchange's timestamp) is held to the same bound
    encoded = encode_book(
        LAYOUT, book(xid=int((time.time() + 60) * 1000)), exchange="upbit", writer="f1", heartbeat=True,
        time_ordered=True,
    )  # fmt: skip
    assert run_flow(backend.sync, write_flow(LAYOUT, [encoded])) == [-1]


# ------------------------------------------------------------------------------------------------- redundancy
def test_a_redundant_feeder_keeps_a_quiet_book_live_when_the_other_dies_stops_or_loses_its_connection(
    backend: Backend,
) -> None:
    """Was: the book read feeder_dead / connection_down although the other feeder held the same book, because
    its equal-xid write was rejected as "another writer"."""
    set_feeder_state(backend.sync, "f1")
    set_feeder_state(backend.sync, "f2")
    assert feeder_write(backend.sync, book(xid=500), "f1") == 1
    assert feeder_write(backend.sync, book(xid=500), "f2") == JOINED
    backend.sync.delete("md:feeder:f1")  # f1 is killed: its record is gone
    assert state(backend) is BookState.LIVE
    set_feeder_state(backend.sync, "f1", state="offline")  # ... or stopped cleanly
    assert state(backend) is BookState.LIVE
    set_feeder_state(backend.sync, "f1")
    assert (
        run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")])) == 1
    )  # ... or lost upstream
    assert state(backend) is BookState.LIVE
    assert backend.sync.hget(KEY, "holders") == b"f2"
    assert run_flow(backend.sync, mark_down_flow(LAYOUT, "f2", [("upbit", "KRW-BTC")])) == 1
    assert state(backend) is BookState.CONNECTION_DOWN  # no feeder holds it any more
    # the same book delivered again after the drop makes it live again, as a new version
    assert feeder_write(backend.sync, book(xid=500), "f2") == 2
    assert state(backend) is BookState.LIVE


def test_a_feeder_restarted_under_a_new_id_takes_over_a_quiet_book(backend: Backend) -> None:
    """Was: the old id's book stayed dead (the new writer's equal xid was rejected) until the market moved."""
    set_feeder_state(backend.sync, "host-1234")
    assert feeder_write(backend.sync, book(xid=500), "host-1234") == 1
    backend.sync.delete("md:feeder:host-1234")  # the old process is gone
    assert state(backend) is BookState.FEEDER_DEAD
    set_feeder_state(backend.sync, "host-5678")
    assert feeder_write(backend.sync, book(xid=500), "host-5678") == JOINED
    assert state(backend) is BookState.LIVE


def test_the_mirror_follows_holders(backend: Backend) -> None:
    set_feeder_state(backend.sync, "f1")
    set_feeder_state(backend.sync, "f2")
    assert feeder_write(backend.sync, book(xid=500), "f1") == 1
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as mirror:
        assert feeder_write(backend.sync, book(xid=500), "f2") == JOINED
        deadline = time.monotonic() + 5
        while getattr(mirror._cache.book(KEY), "holders", None) != ("f1", "f2"):
            assert time.monotonic() < deadline, "the mirror did not learn the second holder"
            time.sleep(0.01)
        assert run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")])) == 1
        backend.sync.delete("md:feeder:f1")
        time.sleep(0.7)  # past one feeder-state refresh of the mirror (0.5 s): it knows f1 is gone
        assert mirror.snapshot_status("KRW-BTC").state is BookState.LIVE
        assert mirror.get_latest_snapshot("KRW-BTC") == book(xid=500)


# ------------------------------------------------------------------------------------------------- clocks
@pytest.mark.parametrize("shift", [-2.0, 2.0], ids=["feeder-2s-slow", "feeder-2s-fast"])
def test_max_age_is_right_when_the_feeder_clock_is_two_seconds_off(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, shift: float
) -> None:
    """Was: the reader compared its clock with the feeder's receive time: 2 s slow made every fresh book
    too_old, 2 s fast delayed stale detection by 2 s."""

    class Shifted:
        @staticmethod
        def time() -> float:
            return time.time() + shift

    monkeypatch.setattr(client.layout.codec, "time", Shifted)  # the feeder's clock, as encode_book reads it
    set_feeder_state(backend.sync, "f1")
    assert feeder_write(backend.sync, book(xid=500, recv_ts=Shifted.time()), "f1") == 1
    # a book the feeder received 1.5 s ago by its own clock: too old for max_age=1 whatever the clocks say
    old = Shifted.time() - 1.5
    assert feeder_write(backend.sync, book("KRW-ETH", xid=500, recv_ts=old), "f1") == 1
    monkeypatch.undo()
    assert state(backend, max_age=1.0) is BookState.LIVE
    status = RedisMarketDataProvider(redis=backend.sync, max_age=1.0).snapshot_status("KRW-BTC")
    assert status.age is not None and status.age < 1.0
    assert state(backend, "KRW-ETH", max_age=1.0) is BookState.TOO_OLD
    aged = RedisMarketDataProvider(redis=backend.sync).snapshot_status("KRW-ETH")
    assert aged.age is not None and 1.4 < aged.age < 2.5


def test_the_mirror_measures_ages_on_redis_time_whatever_its_own_clock(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time

    class Fast:
        monotonic = staticmethod(real.monotonic)

        @staticmethod
        def time() -> float:
            return real.time() + 2.0

    set_feeder_state(backend.sync, "f1")
    assert feeder_write(backend.sync, book(xid=500), "f1") == 1
    monkeypatch.setattr(client.mirror.cache, "time", Fast)
    monkeypatch.setattr(client.freshness, "time", Fast)
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror", max_age=1.0) as mirror:
        assert mirror.get_latest_snapshot("KRW-BTC") == book(xid=500)  # 2 s "old" by this host's clock
        assert -2.5 < mirror._cache.clock_offset < -1.5  # Redis is 2 s behind this host


# ------------------------------------------------------------------------------------------------- hostile data
def test_a_wrong_typed_book_key_reads_as_corrupt_not_as_a_raw_redis_error(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: every read path raised a raw ``redis.exceptions.ResponseError`` (WRONGTYPE)."""
    backend.sync.set(KEY, "junk")
    provider = RedisMarketDataProvider(redis=backend.sync)
    with caplog.at_level(logging.WARNING, logger="client.provider"):
        assert provider.get_latest_snapshot("KRW-BTC", "upbit") is None
        assert provider.get_latest_snapshot("KRW-BTC", "upbit") is None
    assert sum("corrupt book" in r.message or "unreadable" in r.message for r in caplog.records) == 1
    assert provider.snapshot_status("KRW-BTC", "upbit").state is BookState.CORRUPT
    with pytest.raises(CorruptSnapshotError, match="md:upbit:KRW-BTC"):
        RedisMarketDataProvider(redis=backend.sync, strict=True).get_latest_snapshot("KRW-BTC", "upbit")


def test_a_wrong_typed_feeder_key_is_not_alive(backend: Backend) -> None:
    """Was: an error reply for the feeder's state read as alive."""
    assert feeder_write(backend.sync, book(xid=500), "f1") == 1
    backend.sync.set("md:feeder:f1", "junk")
    assert state(backend) is BookState.FEEDER_DEAD


def test_an_oversized_stored_book_is_corrupt_without_decoding_it(backend: Backend) -> None:
    """Was: a 1,000,000-level hash took a reader a second to decode, and was served."""
    set_feeder_state(backend.sync, "f1")
    assert feeder_write(backend.sync, book(xid=500), "f1") == 1
    backend.sync.hset(KEY, "bids", orjson.dumps([[1.0 + i, 1.0] for i in range(1_000_000)]))
    assert state(backend) is BookState.CORRUPT
    values = backend.sync.hmget(KEY, ["bids"])
    assert len(values[0]) > 256 * 1024


@contextlib.contextmanager
def provider_without(backend: Backend, command: str) -> Iterator[RedisMarketDataProvider]:
    """A provider logged in as a user that may run everything but `command` (removed when done)."""
    user = f"no{command}"
    backend.sync.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                             commands=["+@all", f"-{command}"])  # fmt: skip
    assert backend.url is not None
    client = redis.Redis.from_url(backend.url.replace("redis://", f"redis://{user}:pw@"))
    try:
        yield RedisMarketDataProvider(redis=client)
    finally:
        client.close()
        backend.sync.acl_deluser(user)


def test_a_permission_error_is_a_market_data_error_naming_the_command(real_backend: Backend) -> None:
    """Was: a raw ``NoPermissionError``."""
    with provider_without(real_backend, "hmget") as provider:
        with pytest.raises(MarketDataPermissionError, match="HMGET") as caught:
            provider.get_latest_snapshot("KRW-BTC", "upbit")
    assert "md:upbit:KRW-BTC" in str(caught.value) and isinstance(caught.value, MarketDataError)


def test_a_command_refused_inside_a_script_is_a_permission_error_too(real_backend: Backend) -> None:
    """Redis reports an ACL refusal inside a script as a script error (no NOPERM code): a client's write
    refused that way is a MarketDataPermissionError naming the script and key, not a generic error."""
    with provider_without(real_backend, "publish") as provider:
        with pytest.raises(MarketDataPermissionError, match="write_book") as caught:
            provider.write_snapshot(book(xid=1), "upbit")
    assert "md:upbit:KRW-BTC" in str(caught.value)


# ------------------------------------------------------------------------------------------------- the mirror
def test_the_mirror_replaces_its_copy_with_what_redis_holds_after_an_empty_restart(backend: Backend) -> None:
    """Was: the mirror kept books by seq: after Redis restarted empty (seq starting again at 1) it kept the old
    books as live and went silent until the new seq passed the old one."""
    cache = BookCache(LAYOUT)
    for seq in range(1, 501):
        encoded = encode_book(LAYOUT, book(xid=seq), exchange="upbit", writer="f1", heartbeat=True)
        assert cache.apply(KEY, encoded.message(seq, "1.000", "1.000", "f1")) is None
    assert cache.books[KEY].seq == 500
    # Redis restarts empty; the feeder writes the next book, which is seq 1 there
    encoded = encode_book(LAYOUT, book(xid=501), exchange="upbit", writer="f1", heartbeat=True)
    assert run_flow(backend.sync, write_flow(LAYOUT, [encoded])) == [1]
    assert cache.apply(KEY, encoded.message(1, "1.000", "1.000", "f1")) == KEY  # out of step: re-read
    run_flow_cache(backend, cache, cache.reload_flow([KEY]))
    assert cache.books[KEY].seq == 1 and cache.book(KEY).snapshot.xid == 501  # type: ignore[union-attr]
    backend.sync.delete(KEY)  # and a book Redis no longer holds leaves the cache
    run_flow_cache(backend, cache, cache.reload_flow([KEY]))
    assert KEY not in cache.books


def test_a_forged_or_invalid_message_is_not_served(backend: Backend) -> None:
    """Was: a forged PUBLISH with seq=10**12 (or a NaN / negative price) was served and outlived its feeder."""
    set_feeder_state(backend.sync, "f1")
    encoded = encode_book(LAYOUT, book(xid=500), exchange="upbit", writer="f1", heartbeat=True)
    assert run_flow(backend.sync, write_flow(LAYOUT, [encoded])) == [1]
    cache = BookCache(LAYOUT)
    run_flow_cache(backend, cache, cache.reload_flow([KEY]))
    good = cache.books[KEY]
    forged = orjson.loads(encoded.message(1, "1.000", "1.000", "f1"))
    for fake in (
        {**forged, "seq": 10**12, "bids": [[999999.0, 1.0]]},  # far ahead: a gap, Redis decides
        {**forged, "seq": 1, "xid": 10**9},  # newer content under the stored seq: out of step
    ):
        assert cache.apply(KEY, orjson.dumps(fake)) == KEY  # not applied; the key is re-read
        assert cache.book(KEY) == good
        run_flow_cache(backend, cache, cache.reload_flow([KEY]))
        assert cache.book(KEY) == good
    for fake in (
        {**forged, "seq": 2, "asks": [[-5.0, 1.0]]},  # not a book an exchange sends
        {**forged, "seq": 2, "bids": [[1.0, 1.0]] * 5000},  # more levels than any book
        {**forged, "seq": 2, "holders": ["not a feeder id!"]},
    ):
        # the next seq: applied as it came, decoded when first read, and found corrupt then
        assert cache.apply(KEY, orjson.dumps(fake)) is None
        assert type(cache.books[KEY]) is PendingBook
        found = cache.book(KEY)
        assert isinstance(found, CorruptSnapshotError) and found.key == KEY
        assert cache.take_reloads() == {KEY} and cache.take_reloads() == set()  # asked once
        run_flow_cache(backend, cache, cache.reload_flow([KEY]))  # what Redis holds decides
        assert cache.book(KEY) == good
    nan = encoded.message(2, "1.000", "1.000", "f1").replace(b'"bids":[[101.0', b'"bids":[[NaN')
    assert cache.apply(KEY, nan) is None
    assert isinstance(cache.book(KEY), CorruptSnapshotError)  # not even JSON
    run_flow_cache(backend, cache, cache.reload_flow(cache.take_reloads()))
    assert cache.book(KEY) == good


def test_a_mirror_reader_gets_none_for_a_forged_next_version_then_what_redis_holds(backend: Backend) -> None:
    """A write message is decoded when first read (client.mirror.cache): a forged next version is applied as
    it came, the read that decodes it answers None (corrupt), and the subscriber re-reads what Redis holds."""
    set_feeder_state(backend.sync, "f1")
    encoded = encode_book(LAYOUT, book(xid=500), exchange="upbit", writer="f1", heartbeat=True)
    assert run_flow(backend.sync, write_flow(LAYOUT, [encoded])) == [1]
    with RedisMarketDataProvider(redis=backend.new_sync(), mode="mirror") as mirror:
        assert mirror.get_latest_snapshot("KRW-BTC") == book(xid=500)
        applied = mirror._cache.messages
        forged = {**orjson.loads(encoded.message(1, "1.000", "1.000", "f1")), "seq": 2, "asks": [[-5.0, 1.0]]}
        assert backend.sync.publish(KEY, orjson.dumps(forged)) == 1
        deadline = time.monotonic() + 5
        while mirror._cache.messages == applied:
            assert time.monotonic() < deadline, "the forged message did not arrive"
            time.sleep(0.01)
        assert type(mirror._cache.books[KEY]) is PendingBook  # the fault is in place, not yet decoded
        assert mirror.get_latest_snapshot("KRW-BTC") is None
        assert mirror.snapshot_status("KRW-BTC").state is BookState.CORRUPT
        while mirror.get_latest_snapshot("KRW-BTC") != book(xid=500):  # re-read: Redis holds seq 1
            assert time.monotonic() < deadline, "the mirror did not re-read the key"
            time.sleep(0.01)
        assert mirror._cache.books[KEY].seq == 1


def run_flow_cache(backend: Backend, cache: BookCache, flow: Any) -> None:
    run_flow(backend.sync, flow)


# ------------------------------------------------------------------------------------------------- writes
async def test_out_of_memory_stops_the_heartbeat_so_books_go_stale(real_backend: Backend) -> None:
    """Was: with Redis out of memory the heartbeat HSET was refused but its PEXPIRE accepted: frozen books
    stayed live."""
    client = real_backend.new_async()
    status = FeederStatus(client, LAYOUT, "oom-1", dict, ttl=2.0)
    await status.claim(0.2)
    assert await status.beat()
    real_backend.sync.pexpire("md:feeder:oom-1", 500)
    real_backend.sync.config_set("maxmemory", "1")
    try:
        assert await status.beat() is False  # refused as a whole: the expiry was not pushed out
        assert 0 < real_backend.sync.pttl("md:feeder:oom-1") <= 500
    finally:
        real_backend.sync.config_set("maxmemory", "0")
    assert await status.beat()


async def test_a_wrong_typed_key_costs_that_key_only(backend: Backend, aclient: Any) -> None:
    """Was: a wrong-typed key plus a dropped connection left a mark-down retrying forever ahead of every write,
    so the feeder's other books stopped updating while still served as live."""
    backend.sync.set("md:upbit:KRW-BAD", "junk")
    writer = SnapshotWriter(aclient, LAYOUT, "f1")
    task = asyncio.create_task(writer.run())
    try:
        writer.submit("upbit", book("KRW-BAD", xid=1))
        writer.submit("upbit", book("KRW-BTC", xid=1))
        assert await writer.flush(5)
        writer.mark_down("upbit", ["KRW-BAD"])
        writer.submit("upbit", book("KRW-BTC", 2, xid=2))
        assert await writer.flush(5)
        assert writer.stats.failed == 1 and writer.redis_ok
        assert backend.sync.hget(KEY, "xid") == b"2"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_books_lost_by_redis_are_rewritten_at_the_next_heartbeat(
    backend: Backend, aclient: Any
) -> None:
    """Quiet books lost in an empty restart (or a flush) were never rewritten: the feeder rewrites them."""
    writer = SnapshotWriter(aclient, LAYOUT, "f1")
    status = FeederStatus(aclient, LAYOUT, "f1", dict, ttl=5.0, on_loss=writer.rewrite_all)
    task = asyncio.create_task(writer.run())
    try:
        await status.claim(0.2)
        for i in range(20):
            writer.submit("upbit", book(f"KRW-Q{i}", xid=100 + i))
        assert await writer.flush(5)
        backend.sync.flushall()
        assert await status.beat()  # finds its record gone: Redis lost data
        assert await writer.flush(5)
        assert writer.stats.rewrites == 1
        stored = [backend.sync.hget(f"md:upbit:KRW-Q{i}", "xid") for i in range(20)]
        assert stored == [str(100 + i).encode() for i in range(20)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class UpbitFrames:
    """A frame source as a connection is one: decodes (and counts) the frames it handed to the writer."""

    def __init__(self) -> None:
        from feeder.exchanges.upbit import UpbitProtocol

        self.protocol = UpbitProtocol()
        self.decoded = 0

    def book_sides(self, frame: bytes, recv_ts: float, symbol: str) -> BookSides | None:
        sides = self.protocol.book_sides(frame, recv_ts)
        if sides is not None:
            self.decoded += 1
            assert sides.symbol == symbol
        return sides

    def decode_deferred(self, frame: bytes, recv_ts: float, symbol: str) -> OrderBookSnapshot | None:
        self.decoded += 1
        (snapshot,) = self.protocol.parse(frame, recv_ts)
        assert isinstance(snapshot, OrderBookSnapshot) and snapshot.symbol == symbol
        return snapshot


def upbit_frame(symbol: str, tms: int) -> bytes:
    units = [{"ap": 101.0 + i, "as": 1.5, "bp": 100.0 - i, "bs": 2.5} for i in range(15)]
    return orjson.dumps({"ty": "orderbook", "cd": symbol, "tms": tms, "tas": 22.5, "tbs": 37.5, "obu": units})


async def test_books_that_came_as_frames_are_decoded_again_for_a_rewrite(
    backend: Backend, aclient: Any
) -> None:
    """The writer keeps a frame it wrote as the frame (its decoded levels are freed at once): a rewrite after
    Redis lost data decodes it again and stores the same book."""
    writer = SnapshotWriter(aclient, LAYOUT, "f1")
    source = UpbitFrames()
    status = FeederStatus(aclient, LAYOUT, "f1", dict, ttl=5.0, on_loss=writer.rewrite_all)
    task = asyncio.create_task(writer.run())
    try:
        await status.claim(0.2)
        for i in range(10):
            writer.submit_frame(
                "upbit", f"KRW-F{i}", upbit_frame(f"KRW-F{i}", 1_700_000_000_000 + i), 5.0, source
            )
        assert await writer.flush(5)
        assert source.decoded == 10
        before = [backend.sync.hmget(f"md:upbit:KRW-F{i}", "xid", "bids", "asks") for i in range(10)]
        backend.sync.flushall()
        assert await status.beat()  # finds its record gone: Redis lost data
        assert await writer.flush(5)
        assert writer.stats.rewrites == 1 and source.decoded == 20  # each frame decoded once more
        after = [backend.sync.hmget(f"md:upbit:KRW-F{i}", "xid", "bids", "asks") for i in range(10)]
        assert after == before and before[0][0] == b"1700000000000"
        assert {exchange for (exchange, _), _ in writer.latest_received()} == {"upbit"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_feeder_refused_info_says_so_once_and_beats_on(
    real_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A feeder ACL without +info (the lines before the run-id check) costs the detection of a different server
    behind the same address, not the heartbeat: said once in the log."""
    real_backend.sync.acl_setuser(
        "no-info", enabled=True, passwords=["+pw"], keys=["md:*"], channels=["md:*"],
        commands=["-@all", "+evalsha", "+eval", "+hget", "+hgetall", "+hset", "+pexpire"],
    )  # fmt: skip
    client = redis.asyncio.Redis.from_url(real_backend.url.replace("redis://", "redis://no-info:pw@"))
    try:
        status = FeederStatus(client, LAYOUT, "no-info-1", dict, ttl=2.0)
        with caplog.at_level(logging.WARNING, logger="feeder.status"):
            await status.claim(0.2)
            assert await status.beat() and await status.beat()
        said = [r for r in caplog.records if "does not tell its run id" in r.getMessage()]
        assert len(said) == 1 and "+info" in said[0].getMessage(), caplog.text
        assert real_backend.sync.pttl("md:feeder:no-info-1") > 0
    finally:
        await client.aclose()
        real_backend.sync.acl_deluser("no-info")
        real_backend.sync.delete("md:feeder:no-info-1")


def test_the_run_id_is_read_from_parsed_and_raw_info_replies() -> None:
    run_id = "3f1c0c7bdc1f4a5e9a3e1e8f0d2b4c6a8e0f1a2b"
    assert server_run_id({"redis_version": "7.2.4", "run_id": run_id}) == run_id
    assert server_run_id(f"# Server\r\nredis_version:7.2.4\r\nrun_id:{run_id}\r\n".encode()) == run_id
    assert server_run_id(redis.exceptions.NoPermissionError("NOPERM info")) is None
    assert server_run_id({"redis_version": "7.2.4"}) is None


async def test_a_different_server_behind_the_address_gets_every_book_rewritten(
    real_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The run id that answers the heartbeat changes (a replica promoted behind a virtual IP holds the record,
    so nothing looks lost): every book is rewritten, once."""
    aclient = real_backend.new_async()
    writer = SnapshotWriter(aclient, LAYOUT, "f1")
    status = FeederStatus(aclient, LAYOUT, "f1", dict, ttl=5.0, on_loss=writer.rewrite_all)
    task = asyncio.create_task(writer.run())
    try:
        await status.claim(0.2)
        writer.submit("upbit", book("KRW-Q1", xid=7))
        assert await writer.flush(5)
        assert await status.beat() and writer.stats.rewrites == 0  # the same server: nothing to do
        status._server = "0" * 40  # as if the last heartbeat had reached another server
        with caplog.at_level(logging.WARNING):
            assert await status.beat()
        assert writer.stats.rewrites == 1 and "different server" in caplog.text
        assert await status.beat() and writer.stats.rewrites == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await aclient.aclose()


async def test_a_second_process_with_a_live_feeder_id_is_refused(backend: Backend, aclient: Any) -> None:
    first = FeederStatus(aclient, LAYOUT, "same-id", dict, ttl=2.0)
    await first.claim(0.2)

    async def beating() -> None:
        while True:
            await first.beat()
            await asyncio.sleep(0.1)

    beater = asyncio.create_task(beating())
    try:
        second = FeederStatus(aclient, LAYOUT, "same-id", dict, ttl=2.0)
        with pytest.raises(FeederIdInUseError, match="same-id"):
            await second.claim(0.2)
    finally:
        beater.cancel()
        await asyncio.gather(beater, return_exceptions=True)
    # a predecessor that died (its record stands still) is taken over
    successor = FeederStatus(aclient, LAYOUT, "same-id", dict, ttl=2.0)
    await successor.claim(0.2)
    assert backend.sync.hget("md:feeder:same-id", "instance") == successor.instance.encode()
    with pytest.raises(FeederIdInUseError):
        await first.beat()  # the old owner, if it came back, finds its id taken


def test_a_stopped_redis_makes_mirror_books_unavailable_within_a_second_and_timeouts_hold(
    fresh_redis_server: Any,
) -> None:
    """Was: with Redis stopped (SIGSTOP) the mirror served frozen books for 5.5 s, and
    ``wait_for_update(timeout=1)`` returned after 11 s."""
    import signal

    client = redis.Redis.from_url(fresh_redis_server.url)
    set_feeder_state(client, "f1")
    assert feeder_write(client, book(xid=500), "f1") == 1
    with RedisMarketDataProvider(redis=redis.Redis.from_url(fresh_redis_server.url), mode="mirror") as mirror:
        assert mirror.get_latest_snapshot("KRW-BTC") == book(xid=500)
        assert mirror.wait_for_update(["KRW-BTC"], timeout=0.1, exchange="upbit") == []
        fresh_redis_server.process.send_signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            while mirror.get_latest_snapshot("KRW-BTC") is not None:
                assert time.monotonic() - stopped < 1.5, "a frozen book was served as live"
                time.sleep(0.02)
            assert mirror.snapshot_status("KRW-BTC").state is BookState.UNAVAILABLE
            started = time.monotonic()
            assert mirror.wait_for_update(["KRW-BTC"], timeout=1.0, exchange="upbit") == []
            assert time.monotonic() - started < 1.1
        finally:
            fresh_redis_server.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while mirror.get_latest_snapshot("KRW-BTC") is None:
            assert time.monotonic() < deadline, "the mirror did not come back after Redis did"
            time.sleep(0.05)
    client.close()


async def _feeding(client: Any, feeder_id: str) -> tuple[SnapshotWriter, FeederStatus, asyncio.Task[None]]:
    """A feeder's writer and heartbeat on `client`, the heartbeat tied to the writer's success (as in the app)."""
    writer = SnapshotWriter(client, LAYOUT, feeder_id)
    status = FeederStatus(client, LAYOUT, feeder_id, dict, ttl=1.0, writing=lambda: writer.redis_ok)
    task = asyncio.create_task(writer.run())
    await status.claim(0.2)
    writer.submit("upbit", book(xid=1))
    assert await writer.flush(5) and await status.beat()
    return writer, status, task


async def _wait_state(provider: RedisMarketDataProvider, state: BookState, timeout: float) -> float:
    start = time.monotonic()
    while (await provider.asnapshot_status("KRW-BTC", "upbit")).state is not state:
        assert time.monotonic() - start < timeout, f"not {state.value} within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_a_feeder_refused_permission_to_write_lets_its_books_go_stale(real_backend: Backend) -> None:
    """NOPERM on the writes (an ACL changed under a running feeder): no heartbeat while writes fail, so its
    books are not live within the heartbeat TTL; writes and liveness come back with the permission."""
    admin = real_backend.sync
    admin.acl_setuser(
        "feeder", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    assert real_backend.url is not None
    client = redis.asyncio.Redis.from_url(real_backend.url.replace("redis://", "redis://feeder:pw@"))
    reader = RedisMarketDataProvider(async_redis=real_backend.new_async())
    writer, status, task = await _feeding(client, "perm-1")
    try:
        assert (await reader.asnapshot_status("KRW-BTC", "upbit")).state is BookState.LIVE
        admin.execute_command("ACL", "SETUSER", "feeder", "-hset")  # applies to open connections at once
        writer.submit("upbit", book(tag=2, xid=2))
        assert not await writer.flush(
            2
        ), f"the refused write must stay pending (retried), not be dropped: {writer.stats}, {writer.last_error}"
        assert not writer.redis_ok and "can't run this command" in writer.last_error
        assert await status.beat() is False  # writes fail: the feeder does not vouch for its books
        assert await _wait_state(reader, BookState.FEEDER_DEAD, 3) < 1.5
        admin.execute_command("ACL", "SETUSER", "feeder", "+hset")
        assert await writer.flush(5) and await status.beat()
        assert (await reader.aget_latest_snapshot("KRW-BTC", "upbit")) == book(tag=2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        await reader.astop()
        admin.acl_deluser("feeder")


async def test_a_feeder_writing_to_a_demoted_master_lets_its_books_go_stale(
    fresh_redis_server: Any,
) -> None:
    """READONLY: the feeder's Redis was demoted to a replica (a fail-over the feeder was not told about). Its
    writes and heartbeats are refused, so readers of the new master see its books go not live within the TTL
    instead of the frozen copy staying live."""
    from launch.redis_server import LocalRedisServer

    old, new = fresh_redis_server, LocalRedisServer()
    new.start()
    admin_old, admin_new = redis.Redis.from_url(old.url), redis.Redis.from_url(new.url)
    client = redis.asyncio.Redis.from_url(old.url)
    reader = RedisMarketDataProvider(async_redis=redis.asyncio.Redis.from_url(new.url))
    task: asyncio.Task[None] | None = None
    try:
        for admin in (admin_old, admin_new):
            admin.config_set("repl-diskless-sync-delay", "0")  # a full sync at once, not after 5 s
        admin_new.replicaof("127.0.0.1", old.url.rsplit(":", 1)[1].split("/")[0])
        writer, status, task = await _feeding(client, "ro-1")
        deadline = time.monotonic() + 10
        while admin_new.hget(KEY, "xid") != b"1" or not admin_new.exists("md:feeder:ro-1"):
            assert time.monotonic() < deadline, "the replica did not get the book and the feeder record"
            assert await status.beat()  # the record lives 1 s: keep it alive until the replica has it
            await asyncio.sleep(0.05)
        admin_new.replicaof("NO", "ONE")  # the fail-over: the replica is the master now
        admin_old.replicaof("127.0.0.1", new.url.rsplit(":", 1)[1].split("/")[0])
        assert (await reader.asnapshot_status("KRW-BTC", "upbit")).state is BookState.LIVE
        writer.submit("upbit", book(tag=2, xid=2))
        deadline = time.monotonic() + 10
        while writer.redis_ok:  # the demotion is visible once the old master refuses a write
            assert time.monotonic() < deadline, "the demoted master kept accepting writes"
            writer.submit("upbit", book(tag=3, xid=3))
            await asyncio.sleep(0.05)
        assert "read only replica" in writer.last_error
        assert await status.beat() is False
        assert await _wait_state(reader, BookState.FEEDER_DEAD, 3) < 1.5
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        await reader.astop()
        admin_old.close()
        admin_new.close()
        new.cleanup()
