"""Ordering, freshness, corrupt data, symbol validation and resolution (fakeredis and real Redis)."""

from __future__ import annotations

import logging
import time

import pytest
from support.backends import Backend
from support.book_helpers import LAYOUT, book
from support.book_helpers import feeder_write as _feeder_write
from support.book_helpers import set_feeder_state as _set_feeder_state

from client import (
    AmbiguousSymbolError,
    BookState,
    CorruptSnapshotError,
    InvalidSnapshotError,
    InvalidSymbolError,
    OrderBookSnapshot,
    RedisMarketDataProvider,
    StaleSnapshotError,
)
from client.layout import JOINED, UNCHANGED, mark_down_flow
from client.transport import run_flow


def feeder_write(backend: Backend, snapshot: OrderBookSnapshot, writer: str, exchange: str = "upbit") -> int:
    return _feeder_write(backend.sync, snapshot, writer, exchange)


def set_feeder_state(backend: Backend, feeder: str, state: str = "running", ttl_ms: int = 30_000) -> None:
    _set_feeder_state(backend.sync, feeder, state, ttl_ms)


# ------------------------------------------------------------------------------------------------- ordering
def test_older_xid_is_rejected_and_nothing_changes(backend: Backend) -> None:
    set_feeder_state(backend, "f1")
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == 1
    before = backend.sync.hgetall("md:upbit:KRW-BTC")
    assert feeder_write(backend, book(tag=4, xid=499), "f1") == 0
    assert backend.sync.hgetall("md:upbit:KRW-BTC") == before
    p = RedisMarketDataProvider(redis=backend.sync)
    got = p.get_latest_snapshot("KRW-BTC")
    assert got == book(tag=5) and got is not None and got.seq == 1


def test_equal_xid_from_another_feeder_joins_as_a_holder_without_a_new_version(backend: Backend) -> None:
    set_feeder_state(backend, "f1")
    set_feeder_state(backend, "f2")
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == 1
    assert feeder_write(backend, book(tag=6, xid=500), "f2") == JOINED
    assert feeder_write(backend, book(tag=6, xid=500), "f2") == JOINED  # once a holder, always the same
    stored = backend.sync.hgetall("md:upbit:KRW-BTC")
    assert stored[b"seq"] == b"1" and stored[b"feeder"] == b"f1" and stored[b"holders"] == b"f1,f2"
    # the redundant feeder wins as soon as it has something newer
    assert feeder_write(backend, book(tag=7, xid=501), "f2") == 2
    assert backend.sync.hget("md:upbit:KRW-BTC", "feeder") == b"f2"


def test_a_feeder_marked_down_that_delivers_the_same_book_again_holds_it_again(backend: Backend) -> None:
    """Was: f1 wrote, f2 joined, f1 lost its connection and came back with the identical book: UNCHANGED,
    so f1 was no holder, and when f2 died the book f1 kept delivering read feeder_dead."""
    set_feeder_state(backend, "f1")
    set_feeder_state(backend, "f2")
    p = RedisMarketDataProvider(redis=backend.sync)
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == 1
    assert feeder_write(backend, book(tag=5, xid=500), "f2") == JOINED
    assert run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")])) == 1
    assert backend.sync.hget("md:upbit:KRW-BTC", "holders") == b"f2"
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == JOINED  # reconnected: the same snapshot
    assert backend.sync.hget("md:upbit:KRW-BTC", "holders") == b"f2,f1"
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == UNCHANGED  # a holder now: nothing to do
    backend.sync.delete("md:feeder:f2")  # the twin dies
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=5), "the book f1 delivers must stay live"
    assert backend.sync.hget("md:upbit:KRW-BTC", "seq") == b"1"


def test_equal_xid_from_the_same_writer_is_accepted(backend: Backend) -> None:
    set_feeder_state(backend, "f1")
    assert feeder_write(backend, book(tag=5, xid=500), "f1") == 1
    assert feeder_write(backend, book(tag=6, xid=500), "f1") == 2  # two frames in one millisecond
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=6)


def test_legacy_writes_use_the_timestamp_as_ordering_id(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.write_snapshot(book(tag=5), "upbit") is True
    assert p.write_snapshot(book(tag=4), "upbit") is False
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=5)


def test_every_write_publishes_what_it_stored(backend: Backend) -> None:
    pubsub = backend.sync.pubsub()
    pubsub.subscribe("md:upbit:KRW-BTC")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book(tag=1))
    p.on_upbit_snapshot(book(tag=0.5))  # rejected: older; must not be announced
    p.on_upbit_snapshot(book(tag=2))
    import orjson

    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            seen.append(orjson.loads(msg["data"]))
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()
    assert [m["seq"] for m in seen] == [1, 2]
    assert seen[1]["bids"] == [[102.0, 2.0]] and seen[1]["asks"] == [[202.0, 2.0]]
    assert seen[1]["exchange"] == "upbit" and seen[1]["symbol"] == "KRW-BTC" and seen[1]["live"] is True


def test_lost_script_is_reloaded(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book(tag=1))
    backend.sync.script_flush()  # what a Redis restart looks like to the script cache
    assert p.write_snapshot(book(tag=2), "upbit") is True
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=2)


# ------------------------------------------------------------------------------------------------- freshness
def test_max_age_counts_from_receipt_not_exchange_time(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync, max_age=5.0)
    ancient = OrderBookSnapshot("KRW-BTC", 1000.0, [(1.0, 1.0)], [(2.0, 1.0)])
    p.on_upbit_snapshot(ancient)  # timestamp from 1970, received now: live
    assert p.get_latest_snapshot("KRW-BTC") == ancient
    p.on_binance_snapshot(
        OrderBookSnapshot("BTCUSDT", 1000.0, [(1.0, 1.0)], [(2.0, 1.0)], recv_ts=time.time() - 10)
    )
    assert p.get_latest_snapshot("BTCUSDT") is None
    status = p.snapshot_status("BTCUSDT")
    assert status.state is BookState.TOO_OLD and status.stale and status.age is not None and status.age >= 10
    strict = RedisMarketDataProvider(redis=backend.sync, max_age=5.0, strict=True)
    with pytest.raises(StaleSnapshotError, match="too_old") as info:
        strict.get_latest_snapshot("BTCUSDT")
    assert info.value.status.state is BookState.TOO_OLD  # type: ignore[attr-defined]
    assert (
        RedisMarketDataProvider(redis=backend.sync).get_latest_snapshot("BTCUSDT") is not None
    )  # no max_age


def test_feeder_heartbeat_decides_liveness(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    feeder_write(backend, book(tag=1, xid=1), "feeder-a")
    assert p.get_latest_snapshot("KRW-BTC") is None  # no heartbeat key at all
    assert p.snapshot_status("KRW-BTC").state is BookState.FEEDER_DEAD
    set_feeder_state(backend, "feeder-a")
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=1)
    status = p.snapshot_status("KRW-BTC")
    assert status.live and status.feeder == "feeder-a" and status.seq == 1
    set_feeder_state(backend, "feeder-a", state="offline")
    assert p.get_latest_snapshot("KRW-BTC") is None
    set_feeder_state(backend, "feeder-a")
    assert p.get_latest_snapshot("KRW-BTC") is not None
    backend.sync.delete("md:feeder:feeder-a")
    assert p.get_latest_snapshot("KRW-BTC") is None
    with pytest.raises(StaleSnapshotError, match="feeder_dead"):
        RedisMarketDataProvider(redis=backend.sync, strict=True).get_latest_snapshot("KRW-BTC")


def test_expired_heartbeat_makes_books_stale(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    set_feeder_state(backend, "feeder-b", ttl_ms=300)
    feeder_write(backend, book(tag=1, xid=1), "feeder-b")
    assert p.get_latest_snapshot("KRW-BTC") is not None
    deadline = time.monotonic() + 5
    while p.get_latest_snapshot("KRW-BTC") is not None:
        assert time.monotonic() < deadline, "book still served as live after its feeder's heartbeat expired"
        time.sleep(0.05)
    assert p.snapshot_status("KRW-BTC").state is BookState.FEEDER_DEAD


def test_connection_down_is_stale_at_once_and_fresh_data_revives(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    set_feeder_state(backend, "fa")
    set_feeder_state(backend, "fb")
    feeder_write(backend, book("KRW-BTC", tag=1, xid=1), "fa")
    feeder_write(backend, book("KRW-ETH", tag=1, xid=1), "fb")
    # another feeder's drop does not touch a book it did not write
    assert run_flow(backend.sync, mark_down_flow(LAYOUT, "fb", [("upbit", "KRW-BTC")])) == 0
    assert p.get_latest_snapshot("KRW-BTC") is not None
    assert (
        run_flow(backend.sync, mark_down_flow(LAYOUT, "fa", [("upbit", "KRW-BTC"), ("upbit", "KRW-ETH")]))
        == 1
    )
    assert p.get_latest_snapshot("KRW-BTC") is None
    assert p.snapshot_status("KRW-BTC").state is BookState.CONNECTION_DOWN
    assert p.get_latest_snapshot("KRW-ETH") is not None
    feeder_write(backend, book("KRW-BTC", tag=2, xid=2), "fa")
    assert p.get_latest_snapshot("KRW-BTC") == book("KRW-BTC", tag=2)


def test_quiet_book_of_a_live_feeder_stays_live(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    set_feeder_state(backend, "fa")
    feeder_write(backend, book(tag=1, xid=1, recv_ts=time.time() - 3600), "fa")  # an hour without a change
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=1)


def test_missing_is_none_even_in_strict_mode(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync, strict=True)
    assert p.get_latest_snapshot("KRW-BTC") is None
    assert p.snapshot_status("KRW-BTC").state is BookState.MISSING


# ------------------------------------------------------------------------------------------------- corrupt data
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("bids", "not json", "not valid JSON"),
        ("asks", '{"a": 1}', "JSON array"),
        ("asks", '[["x", 1]]', "JSON array"),
        ("bids", "[[-1, 1]]", "finite price"),
        ("ts", "yesterday", "not a number"),
        ("recv_ts", "nan", "not finite"),
        ("seq", "1.5", "not a number"),
        ("xid", "", "not a number"),
        ("wts", "inf", "not finite"),
        ("wts", "soon", "not a number"),
    ],
)
def test_corrupt_field(
    backend: Backend, caplog: pytest.LogCaptureFixture, field: str, value: str, reason: str
) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book(tag=1))
    backend.sync.hset("md:upbit:KRW-BTC", field, value)
    with caplog.at_level(logging.WARNING, logger="client.provider"):
        assert p.get_latest_snapshot("KRW-BTC") is None
        assert p.get_latest_snapshot("KRW-BTC") is None
        assert p.get_latest_snapshots(["KRW-BTC"]) == {"KRW-BTC": None}
    warnings = [r for r in caplog.records if "md:upbit:KRW-BTC" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert field in warnings[0].getMessage()
    assert p.snapshot_status("KRW-BTC").state is BookState.CORRUPT
    strict = RedisMarketDataProvider(redis=backend.sync, strict=True)
    with pytest.raises(CorruptSnapshotError, match=reason) as info:
        strict.get_latest_snapshot("KRW-BTC")
    assert info.value.key == "md:upbit:KRW-BTC" and info.value.field == field


def test_missing_field_is_corrupt_not_keyerror(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync, strict=True)
    p.on_upbit_snapshot(book(tag=1))
    backend.sync.hdel("md:upbit:KRW-BTC", "asks")
    with pytest.raises(CorruptSnapshotError) as info:
        p.get_latest_snapshot("KRW-BTC")
    assert info.value.field == "asks"


def test_a_book_written_before_wts_existed_is_served_without_a_write_time(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book(tag=1))
    status = p.snapshot_status("KRW-BTC")
    assert status.written_at is not None and status.received_at is not None
    assert status.received_at <= status.written_at + 0.001  # rts in ms, wts in µs, both Redis's clock
    backend.sync.hdel("md:upbit:KRW-BTC", "wts")
    assert p.get_latest_snapshot("KRW-BTC") == book(tag=1)
    assert p.snapshot_status("KRW-BTC").written_at is None


def test_hand_made_hash_is_corrupt(backend: Backend) -> None:
    backend.sync.hset("md:upbit:KRW-BTC", mapping={"bid": "1"})
    backend.sync.sadd("md:symbols:upbit", "KRW-BTC")
    backend.sync.sadd("md:exchanges", "upbit")
    p = RedisMarketDataProvider(redis=backend.sync)
    assert p.get_latest_snapshot("KRW-BTC") is None
    assert dict(p.latest_snapshots) == {}


def test_a_new_write_repairs_a_corrupt_book(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book(tag=1))
    backend.sync.hset("md:upbit:KRW-BTC", mapping={"xid": "garbage", "seq": "x", "bids": "["})
    assert p.get_latest_snapshot("KRW-BTC") is None
    p.on_upbit_snapshot(book(tag=2))
    got = p.get_latest_snapshot("KRW-BTC")
    assert got == book(tag=2) and got is not None and got.seq == 1


def test_invalid_snapshot_is_refused(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    for bad in (
        OrderBookSnapshot("KRW-BTC", 1.0, [(float("nan"), 1.0)], []),
        OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, -1.0)], []),
        OrderBookSnapshot("KRW-BTC", 1.0, [(1.0,)], []),  # type: ignore[list-item]
        OrderBookSnapshot("KRW-BTC", float("inf"), [], []),
        OrderBookSnapshot("KRW-BTC", 1.0, [(True, 1.0)], []),
        OrderBookSnapshot("KRW-BTC", -1.0, [], []),
        OrderBookSnapshot("KRW-BTC", 1.0, [], [], xid=2**60),
        OrderBookSnapshot("KRW-BTC", 1.0, [], [], recv_ts=float("nan")),
        OrderBookSnapshot("KRW-BTC", 1.0, "[[1, 2]]", []),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidSnapshotError):
            p.on_upbit_snapshot(bad)
    assert backend.sync.keys("*") == []


# ------------------------------------------------------------------------------------------------- symbols
@pytest.mark.parametrize(
    "bad", ["KRW-BTC *", "a:b", "", "X" * 200, "krw-btc", "KRW BTC", "md:upbit:X", None, 5]
)
def test_invalid_symbol_rejected_before_any_key(backend: Backend, bad: object) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    with pytest.raises(InvalidSymbolError):
        p.get_latest_snapshot(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidSymbolError):
        p.get_latest_snapshots(["KRW-BTC", bad])  # type: ignore[list-item]
    with pytest.raises(InvalidSymbolError):
        p.on_upbit_snapshot(OrderBookSnapshot(bad, 1.0, [], []))  # type: ignore[arg-type]
    assert backend.sync.keys("*") == []


@pytest.mark.parametrize("bad", ["UPBIT", "up:bit", "", "feeder", "symbols"])
def test_invalid_exchange_rejected(backend: Backend, bad: str) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    with pytest.raises(InvalidSymbolError):
        p.get_latest_snapshot("KRW-BTC", exchange=bad)
    with pytest.raises(InvalidSymbolError):
        p.write_snapshot(book(), bad)
    assert backend.sync.keys("*") == []


def test_bare_symbols_resolve_through_the_indexes(backend: Backend) -> None:
    writer = RedisMarketDataProvider(redis=backend.sync)
    writer.write_snapshot(book("BTC-PERP", tag=1), "okx")  # neither convention: found through md:symbols:okx
    writer.write_snapshot(book("SOLBTC", tag=1), "binance")
    reader = RedisMarketDataProvider(redis=backend.sync)
    got = reader.get_latest_snapshot("BTC-PERP")
    assert got == book("BTC-PERP", tag=1) and got is not None and got.exchange == "okx"
    assert reader.get_latest_snapshot("SOLBTC") == book("SOLBTC", tag=1)


def test_symbol_on_two_exchanges_needs_exchange(backend: Backend) -> None:
    writer = RedisMarketDataProvider(redis=backend.sync)
    writer.write_snapshot(book("BTCUSDT", tag=1), "binance")
    writer.write_snapshot(book("BTCUSDT", tag=2), "bybit")
    reader = RedisMarketDataProvider(redis=backend.sync)
    with pytest.raises(AmbiguousSymbolError, match="binance, bybit"):
        reader.get_latest_snapshot("BTCUSDT")
    assert reader.get_latest_snapshot("BTCUSDT", exchange="bybit") == book("BTCUSDT", tag=2)
    assert reader.get_latest_snapshot("BTCUSDT", exchange="binance") == book("BTCUSDT", tag=1)
    assert "BTCUSDT" not in reader.latest_snapshots
    assert len(reader.latest_snapshots) == 0


def test_batch_read_mixes_exchanges_and_missing(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync)
    p.on_upbit_snapshot(book("KRW-BTC", tag=1))
    p.on_binance_snapshot(book("BTCUSDT", tag=2))
    got = p.get_latest_snapshots(["KRW-BTC", "BTCUSDT", "KRW-XRP", "ODD"])
    assert got == {
        "KRW-BTC": book("KRW-BTC", tag=1),
        "BTCUSDT": book("BTCUSDT", tag=2),
        "KRW-XRP": None,
        "ODD": None,
    }


def test_rereads_of_an_unchanged_book_are_not_decoded_again_but_any_change_is(backend: Backend) -> None:
    p = RedisMarketDataProvider(redis=backend.sync, strict=True)
    p.on_upbit_snapshot(book(tag=1))
    first = p.get_latest_snapshot("KRW-BTC")
    assert first is not None and p.get_latest_snapshot("KRW-BTC") is first  # served from the decoded copy
    backend.sync.hset("md:upbit:KRW-BTC", "bids", "[[5.0, 1.0]]")  # a hand edit that leaves seq alone
    changed = p.get_latest_snapshot("KRW-BTC")
    assert changed is not None and changed.bids == [(5.0, 1.0)]
    backend.sync.hset("md:upbit:KRW-BTC", "asks", "not json")
    with pytest.raises(CorruptSnapshotError):
        p.get_latest_snapshot("KRW-BTC")
