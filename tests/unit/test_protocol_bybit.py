"""BybitProtocol: the documented frames, the delta chain (gaps, duplicates, garbled levels, u=1), requests."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from support.captures import FRAMES

from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, ErrorReply, ExchangeProtocol
from feeder.exchanges.base import SequenceRestart
from feeder.exchanges.bybit import DESCRIPTOR, BybitProtocol, Settings, stream_depth
from feeder.incremental_book import Resync

SNAPSHOT = (FRAMES / "bybit-orderbook-snapshot.json").read_text().strip()
DELTA = (FRAMES / "bybit-orderbook-delta.json").read_text().strip()
CONTROL = (FRAMES / "bybit-control.txt").read_text().strip().splitlines()


def frame(kind: str, u: int, bids: Any, asks: Any, symbol: str = "BTCUSDT", **data: Any) -> str:
    return json.dumps(
        {
            "topic": f"orderbook.50.{symbol}",
            "ts": 1700000000123 + u,
            "type": kind,
            "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": 10 * u, **data},
            "cts": 1700000000120,
        }
    )


BIDS = [["100.5", "1"], ["100.4", "2"], ["100.3", "3"]]
ASKS = [["100.6", "4"], ["100.7", "5"]]


def test_is_an_exchange_protocol() -> None:
    protocol: ExchangeProtocol = BybitProtocol()
    assert protocol.book_symbol(SNAPSHOT.encode()) is None
    assert protocol.ping_frame == '{"op":"ping"}'


def test_documented_snapshot() -> None:
    (book,) = BybitProtocol().parse(SNAPSHOT, recv_ts=5.0)
    assert type(book) is OrderBookSnapshot
    assert (book.symbol, book.exchange, book.xid) == ("BTCUSDT", "bybit", 18521288)
    assert book.timestamp == 1672304484.978 and book.recv_ts == 5.0
    assert book.bids == [(16493.5, 0.006), (16493.0, 0.1)]
    assert book.asks == [(16611.0, 0.029), (16612.0, 0.213)]


def test_documented_delta_applies_to_a_snapshot_it_follows() -> None:
    protocol = BybitProtocol()
    delta = json.loads(DELTA)
    u = delta["data"]["u"]
    base = frame(
        "snapshot", u - 1, [["30247.20", "1"], ["30240.00", "9"]], [["30248.70", "1"], ["30249.60", "2"]]
    )
    protocol.parse(base, 1.0)
    (book,) = protocol.parse(DELTA, 2.0)
    assert type(book) is OrderBookSnapshot
    assert book.xid == 177400507 and book.timestamp == 1687940967.466
    # 30240.00 and 30248.70, 30249.60 were deleted (size "0"); 30247.20 resized; the rest inserted
    assert book.bids == [(30247.2, 30.028), (30245.4, 0.224), (30242.1, 1.593), (30240.3, 1.305)]
    assert book.asks == [
        (30249.3, 0.892),
        (30249.5, 1.778),
        (30251.9, 2.947),
        (30252.2, 0.659),
        (30252.5, 4.591),
    ]


def test_snapshot_then_deltas_in_order() -> None:
    protocol = BybitProtocol(depth=2)
    (book,) = protocol.parse(frame("snapshot", 10, BIDS, ASKS), 1.0)
    assert book.bids == [(100.5, 1.0), (100.4, 2.0)]
    (book,) = protocol.parse(frame("delta", 11, [["100.5", "0"], ["100.45", "7"]], [["100.6", "0.5"]]), 1.0)
    assert (book.xid, book.bids, book.asks) == (
        11,
        [(100.45, 7.0), (100.4, 2.0)],
        [(100.6, 0.5), (100.7, 5.0)],
    )
    (book,) = protocol.parse(frame("delta", 12, [], [["100.55", "1"]]), 1.0)
    assert book.asks == [(100.55, 1.0), (100.6, 0.5)]


def test_a_delta_before_any_snapshot_is_ignored() -> None:
    assert BybitProtocol().parse(frame("delta", 11, BIDS, ASKS), 1.0) == []


def test_gap_duplicate_and_out_of_order() -> None:
    protocol = BybitProtocol()
    protocol.parse(frame("snapshot", 10, BIDS, ASKS), 1.0)
    protocol.parse(frame("delta", 11, [["100.5", "2"]], []), 1.0)
    assert protocol.parse(frame("delta", 11, [["100.5", "2"]], []), 1.0) == []  # the same again: ignored
    (resync,) = protocol.parse(frame("delta", 13, [], []), 1.0)  # 12 is lost
    assert type(resync) is Resync and resync.symbol == "BTCUSDT"
    assert protocol.parse(frame("delta", 14, [], []), 1.0) == []  # not live: waits for a snapshot
    (book,) = protocol.parse(frame("snapshot", 20, BIDS, ASKS), 1.0)
    assert book.xid == 20
    (resync,) = protocol.parse(frame("delta", 19, [], []), 1.0)  # older than the last one
    assert type(resync) is Resync


@pytest.mark.parametrize("size", ["1.2.3", "nan", "-1", "inf", ""])
def test_a_garbled_level_is_a_resync(size: str) -> None:
    protocol = BybitProtocol()
    protocol.parse(frame("snapshot", 10, BIDS, ASKS), 1.0)
    (resync,) = protocol.parse(frame("delta", 11, [["100.5", size]], []), 1.0)
    assert type(resync) is Resync


@pytest.mark.parametrize(
    "change",
    [
        {"b": [["100.5"]]},
        {"b": [[100.5, "1"]]},
        {"b": ["100.5", "1"]},
        {"b": [{"p": "100.5"}]},
        {"a": None},
        {"u": "11"},
        {"s": "ETHUSDT"},
    ],
)
def test_a_malformed_delta_of_a_live_book_is_a_resync_else_bad_frame(change: dict[str, Any]) -> None:
    protocol = BybitProtocol()
    bad = json.loads(frame("delta", 11, BIDS, ASKS))
    bad["data"].update(change)
    with pytest.raises(BadFrame):
        protocol.parse(json.dumps(bad), 1.0)  # no live book: nothing lost
    protocol.parse(frame("snapshot", 10, BIDS, ASKS), 1.0)
    (resync,) = protocol.parse(json.dumps(bad), 1.0)
    assert type(resync) is Resync and "malformed" in resync.reason


def test_u1_snapshot_restarts_the_sequence() -> None:
    protocol = BybitProtocol()
    protocol.parse(frame("snapshot", 500, BIDS, ASKS), 1.0)
    restart, book = protocol.parse(frame("snapshot", 1, BIDS[:1], ASKS), 1.0)
    assert type(restart) is SequenceRestart and restart.symbol == "BTCUSDT"
    assert type(book) is OrderBookSnapshot and book.xid == 1 and book.bids == [(100.5, 1.0)]
    (book,) = protocol.parse(frame("delta", 2, [["100.4", "1"]], []), 1.0)
    assert book.xid == 2


def test_forget_keeps_the_highest_id() -> None:
    protocol = BybitProtocol()
    protocol.parse(frame("snapshot", 500, BIDS, ASKS), 1.0)
    protocol.forget(["BTCUSDT", "ETHUSDT"])
    assert protocol.parse(frame("delta", 501, [], []), 1.0) == []  # not live after the connection ended
    events = protocol.parse(frame("snapshot", 1, BIDS, ASKS), 1.0)
    assert [type(e) for e in events] == [SequenceRestart, OrderBookSnapshot]


def test_other_topics_are_ignored() -> None:
    protocol = BybitProtocol()  # subscribes orderbook.50
    assert protocol.parse(SNAPSHOT.replace("orderbook.50.", "orderbook.200."), 1.0) == []
    assert protocol.parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[]}', 1.0) == []
    with pytest.raises(BadFrame):
        protocol.parse(SNAPSHOT.replace("orderbook.50.BTCUSDT", "orderbook.50.BTC USDT"), 1.0)


def test_depth_1_is_snapshot_only() -> None:
    protocol = BybitProtocol(depth=1)
    assert protocol.stream_depth == 1
    one = frame("snapshot", 7, BIDS, ASKS).replace("orderbook.50.", "orderbook.1.")
    (book,) = protocol.parse(one, 1.0)
    assert book.bids == [(100.5, 1.0)] and book.asks == [(100.6, 4.0)]
    (book,) = protocol.parse(one, 1.0)  # pushed again unchanged, same u
    assert book.xid == 7


def test_control_frames() -> None:
    protocol = BybitProtocol()
    assert protocol.parse(CONTROL[1], 1.0) == [Ack("10001", "subscribe")]
    assert protocol.parse(CONTROL[3], 1.0) == [Ack(None, "pong")]
    failed = '{"success":false,"ret_msg":"error:invalid topic","conn_id":"x","req_id":"3","op":"subscribe"}'
    assert protocol.parse(failed, 1.0) == [ErrorReply("bybit", "subscribe", "error:invalid topic")]
    with pytest.raises(BadFrame):
        protocol.parse('{"hello":1}', 1.0)


def test_requests() -> None:
    protocol = BybitProtocol()
    symbols = [f"S{i}USDT" for i in range(12)]
    first, second = protocol.subscribe_frames(symbols)
    assert first == (
        '{"req_id":"1","op":"subscribe","args":['
        + ",".join(f'"orderbook.50.S{i}USDT"' for i in range(10))
        + "]}"
    )
    assert orjson.loads(second)["args"] == ["orderbook.50.S10USDT", "orderbook.50.S11USDT"]
    assert protocol.resync_frames("BTCUSDT") == [
        '{"req_id":"3","op":"unsubscribe","args":["orderbook.50.BTCUSDT"]}',
        '{"req_id":"4","op":"subscribe","args":["orderbook.50.BTCUSDT"]}',
    ]
    assert json.loads(CONTROL[0]).keys() == json.loads(first).keys()  # the documented request's fields
    assert protocol.url(["BTCUSDT"]) == "wss://stream.bybit.com/v5/public/spot"


@pytest.mark.parametrize(("depth", "stream"), [(1, 1), (2, 50), (50, 50), (51, 200), (200, 200)])
def test_stream_depth(depth: int, stream: int) -> None:
    assert stream_depth(depth) == stream
    assert BybitProtocol(depth=depth, max_levels=200).stream_depth == stream


def test_settings() -> None:
    settings = Settings()
    assert (settings.bybit_symbols, settings.bybit_depth) == ("BTCUSDT,ETHUSDT", 20)
    assert settings.bybit_url == "wss://stream.bybit.com/v5/public/spot"
    for bad in (0, 201):
        with pytest.raises(ValidationError, match="bybit_depth"):
            Settings(bybit_depth=bad)
    with pytest.raises(ValueError, match="MD_MAX_LEVELS"):
        BybitProtocol(depth=100, max_levels=50)
    assert DESCRIPTOR.name == "bybit" and DESCRIPTOR.keepalive.ping_interval == 20.0


def test_fuzz_raises_only_bad_frame() -> None:
    rng = random.Random(7)
    protocol = BybitProtocol()
    seeds = [SNAPSHOT, DELTA, *CONTROL, frame("delta", 18521289, BIDS, ASKS)]
    for _ in range(3000):
        text = rng.choice(seeds)
        roll = rng.random()
        if roll < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        elif roll < 0.6:
            cut = rng.randrange(len(text))
            data = (text[:cut] + text[cut + rng.randrange(1, 8) :]).encode()
        else:
            chars = list(text)
            for _ in range(rng.randrange(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice('"[]{},:0.-a1 e')
            data = "".join(chars).encode()
        try:
            events = protocol.parse(data, 1.0)
        except BadFrame:
            continue
        for event in events:
            assert type(event) in (OrderBookSnapshot, Resync, SequenceRestart, Ack, ErrorReply)
