"""The in-process provider's behaviours, kept by the Redis-backed provider (fakeredis and real Redis)."""

from __future__ import annotations

from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider


def snap(symbol: str, ts: float, bid: float, ask: float) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        symbol=symbol, timestamp=ts, bids=[(bid, 1.0), (bid - 1, 2.0)], asks=[(ask, 1.5)]
    )


def provider(backend: Backend) -> RedisMarketDataProvider:
    return RedisMarketDataProvider(redis=backend.sync)


def test_latest_snapshots_starts_empty(backend: Backend) -> None:
    p = provider(backend)
    assert len(p.latest_snapshots) == 0
    assert dict(p.latest_snapshots) == {}
    assert "KRW-BTC" not in p.latest_snapshots
    assert p.snapshot_upbit is None
    assert p.snapshot_binance is None


def test_callbacks_store_per_symbol_and_get_returns_them(backend: Backend) -> None:
    p = provider(backend)
    upbit = snap("KRW-BTC", 1000.0, 100.0, 101.0)
    binance = snap("BTCUSDT", 1000.5, 70.0, 70.5)
    p.on_upbit_snapshot(upbit)
    p.on_binance_snapshot(binance)
    assert p.get_latest_snapshot("KRW-BTC") == upbit
    assert p.get_latest_snapshot("BTCUSDT") == binance
    assert p.latest_snapshots["KRW-BTC"] == upbit
    assert p.latest_snapshots["BTCUSDT"] == binance
    got = p.get_latest_snapshot("KRW-BTC")
    assert got is not None
    assert (got.exchange, got.seq, got.xid) == ("upbit", 1, 1_000_000)
    assert got.best_bid() == 100.0
    assert got.best_ask() == 101.0


def test_unknown_symbol_is_none(backend: Backend) -> None:
    p = provider(backend)
    p.on_upbit_snapshot(snap("KRW-BTC", 1000.0, 100.0, 101.0))
    assert p.get_latest_snapshot("KRW-ETH") is None
    assert p.get_latest_snapshot("ETHUSDT") is None
    assert p.get_latest_snapshot("NOSUCH") is None
    assert "KRW-ETH" not in p.latest_snapshots


def test_exchanges_kept_apart(backend: Backend) -> None:
    p = provider(backend)
    p.on_upbit_snapshot(snap("KRW-BTC", 1000.0, 100.0, 101.0))
    p.on_binance_snapshot(snap("BTCUSDT", 1000.0, 70.0, 71.0))
    assert p.get_latest_snapshot("KRW-BTC", exchange="binance") is None
    assert p.get_latest_snapshot("BTCUSDT", exchange="upbit") is None
    assert backend.sync.smembers("md:symbols:upbit") == {b"KRW-BTC"}
    assert backend.sync.smembers("md:symbols:binance") == {b"BTCUSDT"}
    assert p.snapshot_upbit is not None and p.snapshot_upbit.symbol == "KRW-BTC"
    assert p.snapshot_binance is not None and p.snapshot_binance.symbol == "BTCUSDT"


def test_newer_book_replaces_older(backend: Backend) -> None:
    p = provider(backend)
    p.on_upbit_snapshot(snap("KRW-BTC", 1000.0, 100.0, 101.0))
    newer = snap("KRW-BTC", 1001.0, 102.0, 103.0)
    p.on_upbit_snapshot(newer)
    got = p.get_latest_snapshot("KRW-BTC")
    assert got == newer
    assert got is not None and got.seq == 2


def test_four_symbols_tracked_independently(backend: Backend) -> None:
    p = provider(backend)
    books = {
        "KRW-BTC": snap("KRW-BTC", 1000.0, 100.0, 101.0),
        "KRW-ETH": snap("KRW-ETH", 1000.0, 10.0, 11.0),
        "BTCUSDT": snap("BTCUSDT", 1000.0, 70.0, 71.0),
        "ETHUSDT": snap("ETHUSDT", 1000.0, 3.0, 3.5),
    }
    for symbol, book in books.items():
        (p.on_upbit_snapshot if "-" in symbol else p.on_binance_snapshot)(book)
    assert len(p.latest_snapshots) == 4
    assert dict(p.latest_snapshots) == books
    assert set(p.latest_snapshots) == set(books)
    assert p.get_latest_snapshots(list(books)) == books
    # updating one leaves the others alone
    p.on_upbit_snapshot(snap("KRW-ETH", 1002.0, 12.0, 13.0))
    assert p.get_latest_snapshot("KRW-BTC") == books["KRW-BTC"]
    assert p.get_latest_snapshot("KRW-ETH") == snap("KRW-ETH", 1002.0, 12.0, 13.0)


def test_snapshot_upbit_is_the_most_recent_of_that_exchange(backend: Backend) -> None:
    p = provider(backend)
    p.on_upbit_snapshot(snap("KRW-BTC", 1000.0, 100.0, 101.0))
    p.on_upbit_snapshot(snap("KRW-ETH", 1000.0, 10.0, 11.0))
    p.on_binance_snapshot(snap("BTCUSDT", 1000.0, 70.0, 71.0))
    assert p.snapshot_upbit == snap("KRW-ETH", 1000.0, 10.0, 11.0)
    assert p.snapshot_binance == snap("BTCUSDT", 1000.0, 70.0, 71.0)


def test_latest_snapshots_is_read_only(backend: Backend) -> None:
    p = provider(backend)
    mapping = p.latest_snapshots
    assert not hasattr(mapping, "__setitem__")
    assert mapping.get("KRW-BTC") is None


def test_legacy_construction_and_equality() -> None:
    a = OrderBookSnapshot(symbol="KRW-BTC", timestamp=1.0, bids=[(1.0, 2.0)], asks=[(3.0, 4.0)])
    b = OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 2.0)], [(3.0, 4.0)])
    assert a == b
    assert OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 2.0)], [(3.0, 4.0)], exchange="upbit", seq=7) == a
    assert a != OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 2.0)], [(3.0, 5.0)])
    assert a.best_bid() == 1.0 and a.best_ask() == 3.0
    empty = OrderBookSnapshot("KRW-BTC", 1.0, [], [])
    assert empty.best_bid() is None and empty.best_ask() is None
