"""OkxProtocol: the documented frames, the prevSeqId chain (heartbeats, resets), the checksum, requests."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError
from support.captures import FRAMES

from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, ErrorReply, ExchangeProtocol
from feeder.exchanges.base import SequenceRestart, ShutdownNotice
from feeder.exchanges.okx import DESCRIPTOR, OkxProtocol, Settings, okx_checksum
from feeder.incremental_book import Resync

SNAPSHOT = (FRAMES / "okx-books-snapshot.json").read_text().strip()
UPDATE = (FRAMES / "okx-books-update.json").read_text().strip()
LEGACY = (FRAMES / "okx-books-snapshot-legacy-checksum.json").read_text().strip()
CONTROL = (FRAMES / "okx-control.txt").read_text().strip().splitlines()
KEEPALIVE = (FRAMES / "okx-keepalive.txt").read_text().strip().splitlines()
CHECKSUM_CASES = json.loads((FRAMES / "okx-checksum-examples.json").read_text())["cases"]

DOC_BIDS = [(8476.97, 256.0), (8475.55, 101.0), (8475.54, 100.0), (8475.3, 1.0)]
DOC_BIDS += [(8447.32, 6.0), (8447.02, 246.0), (8446.83, 24.0), (8446.0, 95.0)]
DOC_ASKS = [(8476.98, 415.0), (8477.0, 7.0), (8477.34, 85.0), (8477.56, 1.0)]
DOC_ASKS += [(8505.84, 8.0), (8506.37, 85.0), (8506.49, 2.0), (8506.96, 100.0)]


def push(
    action: str, prev: int, seq: int, bids: Any, asks: Any, checksum: int = 0, inst: str = "BTC-USDT"
) -> str:
    item = {
        "asks": asks,
        "bids": bids,
        "ts": "1700000000123",
        "checksum": checksum,
        "prevSeqId": prev,
        "seqId": seq,
    }
    return json.dumps({"arg": {"channel": "books", "instId": inst}, "action": action, "data": [item]})


def lv(price: str, size: str) -> list[str]:
    return [price, size, "0", "1"]


BIDS = [lv("100.5", "1"), lv("100.4", "2")]
ASKS = [lv("100.6", "4"), lv("100.7", "5")]


def test_is_an_exchange_protocol() -> None:
    protocol: ExchangeProtocol = OkxProtocol()
    assert protocol.book_symbol(SNAPSHOT.encode()) is None
    assert protocol.ping_frame == "ping"


def test_documented_snapshot_and_update() -> None:
    protocol = OkxProtocol()
    (book,) = protocol.parse(SNAPSHOT, recv_ts=3.0)
    assert type(book) is OrderBookSnapshot
    assert (book.symbol, book.exchange, book.xid, book.timestamp, book.recv_ts) == (
        "BTC-USDT",
        "okx",
        123456,
        1597026383.085,
        3.0,
    )
    assert (book.bids, book.asks) == (DOC_BIDS, DOC_ASKS)
    (book,) = protocol.parse(UPDATE.encode(), 4.0)  # prevSeqId 123456 -> 123457; same levels again
    assert (book.xid, book.bids, book.asks) == (123457, DOC_BIDS, DOC_ASKS)


def test_legacy_checksum_does_not_match_its_levels() -> None:
    (resync,) = OkxProtocol().parse(LEGACY, 1.0)
    assert type(resync) is Resync and "checksum" in resync.reason


@pytest.mark.parametrize("case", CHECKSUM_CASES, ids=lambda c: c["name"])
def test_checksum_examples(case: dict[str, Any]) -> None:
    expected = {
        "more than 25 levels (only 2 shown)": -1881014294,
        "less than 25 levels of bid or ask": 831078360,
    }
    assert okx_checksum(case["bids"], case["asks"]) == case["crc32_signed_computed"] == expected[case["name"]]
    protocol = OkxProtocol()
    (book,) = protocol.parse(push("snapshot", -1, 5, case["bids"], case["asks"], expected[case["name"]]), 1.0)
    assert type(book) is OrderBookSnapshot
    (resync,) = protocol.parse(push("update", 5, 6, [], [], expected[case["name"]] + 1), 1.0)
    assert type(resync) is Resync


def test_checksum_after_updates_and_zero_is_absent() -> None:
    protocol = OkxProtocol(depth=2)
    protocol.parse(
        push(
            "snapshot",
            -1,
            10,
            BIDS,
            ASKS,
            okx_checksum([("100.5", "1"), ("100.4", "2")], [("100.6", "4"), ("100.7", "5")]),
        ),
        1.0,
    )
    good = okx_checksum([("100.5", "3"), ("100.4", "2")], [("100.6", "4"), ("100.7", "5")])
    (book,) = protocol.parse(push("update", 10, 12, [lv("100.5", "3")], [], good), 1.0)
    assert book.bids == [(100.5, 3.0), (100.4, 2.0)]
    (book,) = protocol.parse(push("update", 12, 13, [lv("100.4", "9")], [], 0), 1.0)  # 0: not checked
    assert book.bids == [(100.5, 3.0), (100.4, 9.0)]
    (resync,) = protocol.parse(push("update", 13, 14, [lv("100.4", "8")], [], good), 1.0)
    assert type(resync) is Resync


def test_chain_heartbeat_duplicate_gap() -> None:
    protocol = OkxProtocol()
    protocol.parse(push("snapshot", -1, 10, BIDS, ASKS), 1.0)
    (book,) = protocol.parse(push("update", 10, 15, [lv("100.5", "0")], []), 1.0)
    assert book.xid == 15 and book.bids == [(100.4, 2.0)]
    (book,) = protocol.parse(push("update", 15, 15, [], []), 1.0)  # heartbeat keeps the chain
    assert book.xid == 15
    (book,) = protocol.parse(push("update", 15, 18, [lv("100.45", "1")], []), 1.0)
    assert protocol.parse(push("update", 15, 18, [lv("100.45", "1")], []), 1.0) == []  # duplicate
    (resync,) = protocol.parse(push("update", 20, 22, [], []), 1.0)  # 18 -> 20 lost
    assert type(resync) is Resync
    assert protocol.parse(push("update", 22, 23, [], []), 1.0) == []
    (book,) = protocol.parse(push("snapshot", -1, 30, BIDS, ASKS), 1.0)
    assert book.xid == 30


def test_reset_update_restarts_and_keeps_the_chain() -> None:
    protocol = OkxProtocol()
    protocol.parse(push("snapshot", -1, 10, BIDS, ASKS), 1.0)
    protocol.parse(push("update", 10, 15, [], [lv("100.6", "1")]), 1.0)
    restart, book = protocol.parse(push("update", 15, 3, [lv("100.4", "7")], []), 1.0)  # the docs' example
    assert type(restart) is SequenceRestart and restart.symbol == "BTC-USDT"
    assert type(book) is OrderBookSnapshot and book.xid == 3
    assert book.bids == [(100.5, 1.0), (100.4, 7.0)] and book.asks == [(100.6, 1.0), (100.7, 5.0)]
    (book,) = protocol.parse(push("update", 3, 5, [], []), 1.0)
    assert book.xid == 5


@pytest.mark.parametrize("size", ["1.2.3", "nan", "-1", "1e999"])
def test_garbled_level_is_a_resync(size: str) -> None:
    protocol = OkxProtocol()
    protocol.parse(push("snapshot", -1, 10, BIDS, ASKS), 1.0)
    (resync,) = protocol.parse(push("update", 10, 11, [lv("100.5", size)], []), 1.0)
    assert type(resync) is Resync


@pytest.mark.parametrize(
    "change",
    [
        {"bids": [["100.5", "1"]]},
        {"bids": [[100.5, "1", "0", "1"]]},
        {"bids": ["100.5"]},
        {"asks": {}},
        {"seqId": "11"},
        {"ts": 1700000000123},
        {"ts": "soon"},
    ],
)
def test_malformed_update_of_a_live_book_is_a_resync_else_bad_frame(change: dict[str, Any]) -> None:
    protocol = OkxProtocol()
    bad = json.loads(push("update", 10, 11, BIDS, ASKS))
    bad["data"][0].update(change)
    with pytest.raises(BadFrame):
        protocol.parse(json.dumps(bad), 1.0)
    protocol.parse(push("snapshot", -1, 10, BIDS, ASKS), 1.0)
    (resync,) = protocol.parse(json.dumps(bad), 1.0)
    assert type(resync) is Resync


def test_control_frames() -> None:
    protocol = OkxProtocol()
    assert KEEPALIVE == ["ping", "pong"]
    assert protocol.parse(KEEPALIVE[1], 1.0) == [Ack(None, "pong")]
    assert protocol.parse(b"pong", 1.0) == [Ack(None, "pong")]
    assert protocol.parse(CONTROL[1], 1.0) == [Ack("1512", "subscribe")]
    (error,) = protocol.parse(CONTROL[2], 1.0)
    assert type(error) is ErrorReply and (error.exchange, error.name) == ("okx", "60012")
    assert error.message.startswith("Invalid request: ")
    notice = '{"event":"notice","code":"64008","msg":"The connection will soon be closed","connId":"a"}'
    assert protocol.parse(notice, 1.0) == [ShutdownNotice("okx")]
    assert protocol.parse((FRAMES / "okx-books5.json").read_text(), 1.0) == []  # another channel
    with pytest.raises(BadFrame):
        protocol.parse("ping", 1.0)  # not JSON (and never sent by the server)


def test_requests() -> None:
    protocol = OkxProtocol()
    (first,) = protocol.subscribe_frames(["BTC-USDT", "eth-usdt"])
    assert first == (
        '{"id":"1","op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"},'
        '{"channel":"books","instId":"ETH-USDT"}]}'
    )
    assert json.loads(CONTROL[0]).keys() == json.loads(first).keys()
    assert len(protocol.subscribe_frames([f"S{i}-USDT" for i in range(45)])) == 3  # 20 channels a request
    assert protocol.resync_frames("BTC-USDT") == [
        '{"id":"5","op":"unsubscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}',
        '{"id":"6","op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}',
    ]
    assert protocol.url(["BTC-USDT"]) == "wss://ws.okx.com:8443/ws/v5/public"


def test_forget() -> None:
    protocol = OkxProtocol()
    protocol.parse(push("snapshot", -1, 900, BIDS, ASKS), 1.0)
    protocol.forget(["BTC-USDT"])
    assert protocol.parse(push("update", 900, 901, [], []), 1.0) == []
    events = protocol.parse(push("snapshot", -1, 4, BIDS, ASKS), 1.0)
    assert [type(e) for e in events] == [SequenceRestart, OrderBookSnapshot]


def test_settings() -> None:
    settings = Settings()
    assert (settings.okx_symbols, settings.okx_depth) == ("BTC-USDT,ETH-USDT", 20)
    assert settings.okx_url == "wss://ws.okx.com:8443/ws/v5/public"
    for bad in (0, 401):
        with pytest.raises(ValidationError, match="okx_depth"):
            Settings(okx_depth=bad)
    with pytest.raises(ValueError, match="MD_MAX_LEVELS"):
        OkxProtocol(depth=60)
    assert OkxProtocol(depth=400, max_levels=400).depth == 400
    assert DESCRIPTOR.name == "okx" and DESCRIPTOR.keepalive.ping_interval < 30


def test_fuzz_raises_only_bad_frame() -> None:
    rng = random.Random(3)
    protocol = OkxProtocol()
    seeds = [SNAPSHOT, UPDATE, LEGACY, *CONTROL, push("update", 123457, 123458, BIDS, ASKS)]
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
            assert type(event) in (
                OrderBookSnapshot,
                Resync,
                SequenceRestart,
                Ack,
                ErrorReply,
                ShutdownNotice,
            )
