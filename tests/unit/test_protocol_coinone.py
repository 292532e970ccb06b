"""CoinoneProtocol (`feeder.exchanges.coinone`) against Coinone's documented frames."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from support.captures import FRAMES

from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, ErrorReply, ExchangeProtocol
from feeder.exchanges.coinone import DESCRIPTOR, CoinoneProtocol, Settings

DEFAULT_FRAME = (FRAMES / "coinone-orderbook-default.json").read_bytes().strip()
SHORT_FRAME = (FRAMES / "coinone-orderbook-short.json").read_bytes().strip()
CONTROL = (FRAMES / "coinone-control.txt").read_text().splitlines()


def only(events: list[Any]) -> Any:
    assert len(events) == 1
    return events[0]


def test_default_frame_decodes_best_first() -> None:
    book = only(CoinoneProtocol().parse(DEFAULT_FRAME, recv_ts=3.5))
    assert isinstance(book, OrderBookSnapshot)
    assert (book.exchange, book.symbol, book.xid, book.timestamp, book.recv_ts) == (
        "coinone",
        "KRW-XRP",
        1693560155038001,
        1693560155.038,
        3.5,
    )
    # the document lists asks highest first (best ask last): the snapshot has them ascending
    assert book.asks == [(687.5, 47022.8803), (687.6, 85887.7396), (687.7, 40036.8193)]
    assert book.bids == [(687.4, 6704.0994), (687.3, 4542.9611), (687.2, 71156.78279601)]


def test_short_frame_decodes_best_first() -> None:
    book = only(CoinoneProtocol(format="SHORT").parse(SHORT_FRAME.decode(), recv_ts=1.0))
    assert (book.symbol, book.xid, book.timestamp) == ("KRW-XRP", 1693560323040001, 1693560323.04)
    assert book.asks == [(687.8, 5541.7343), (687.9, 8046.2201), (688.3, 84992.9448)]
    assert book.bids == [(687.7, 26178.9839), (687.6, 17821.3816), (687.5, 53004.6312)]


def test_unordered_levels_are_sorted_zero_quantities_dropped_depth_kept() -> None:
    obj = orjson.loads(DEFAULT_FRAME)
    data = obj["data"]
    data["asks"] = [{"price": "3", "qty": "1"}, {"price": "1", "qty": "1"}, {"price": "2", "qty": "0"}]
    data["bids"] = [
        {"price": "0.5", "qty": "2"},
        {"price": "0.7", "qty": "1.5"},
        {"price": "0.6", "qty": "1"},
    ]
    book = only(CoinoneProtocol().parse(orjson.dumps(obj), 1.0))
    assert book.asks == [(1.0, 1.0), (3.0, 1.0)]
    assert book.bids == [(0.7, 1.5), (0.6, 1.0), (0.5, 2.0)]
    book = only(CoinoneProtocol(depth=2).parse(orjson.dumps(obj), 1.0))
    assert book.bids == [(0.7, 1.5), (0.6, 1.0)] and len(book.asks) == 2


def test_control_frames() -> None:
    protocol = CoinoneProtocol()
    assert only(protocol.parse(CONTROL[0], 1.0)) == Ack(None, "CONNECTED")
    assert only(protocol.parse(CONTROL[2], 1.0)) == Ack(None, "SUBSCRIBED")
    assert only(protocol.parse(CONTROL[5], 1.0)) == Ack(None, "PONG")
    assert only(protocol.parse(CONTROL[6], 1.0)) == ErrorReply("coinone", "160012", "Invalid Topic")
    ticker = b'{"response_type":"DATA","channel":"TICKER","data":{}}'
    assert protocol.parse(ticker, 1.0) == []


def test_subscribe_and_ping_frames_are_the_documented_requests() -> None:
    xrp = CoinoneProtocol().subscribe_frames(["KRW-XRP"])
    assert xrp == [CONTROL[1]]
    assert CoinoneProtocol(format="SHORT").subscribe_frames(["krw-xrp"]) == [CONTROL[3]]
    frames = CoinoneProtocol().subscribe_frames(["KRW-BTC", "KRW-ETH", "KRW-BTC"])
    assert [orjson.loads(f)["topic"]["target_currency"] for f in frames] == ["BTC", "ETH"]
    assert CoinoneProtocol.ping_frame == CONTROL[4] == '{"request_type":"PING"}'
    assert CoinoneProtocol().url(["KRW-BTC"]) == "wss://stream.coinone.co.kr"
    with pytest.raises(ValueError):  # noqa: PT011
        CoinoneProtocol().subscribe_frames(["BTCKRW"])


@pytest.mark.parametrize("kwargs", [{"format": "SIMPLE"}, {"depth": 0}, {"depth": 51}, {"url": "http://x"}])
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        CoinoneProtocol(**kwargs)


def test_settings_and_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.coinone_symbols == "KRW-BTC,KRW-ETH"
    assert (settings.coinone_format, settings.coinone_depth) == ("SHORT", 15)
    assert settings.coinone_url == "wss://stream.coinone.co.kr"
    monkeypatch.setenv("MD_COINONE_DEPTH", "16")
    monkeypatch.setenv("MD_COINONE_FORMAT", "DEFAULT")
    assert Settings().coinone_depth == 16
    for name, value in (("MD_COINONE_DEPTH", "0"), ("MD_COINONE_FORMAT", "SIMPLE")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)
    assert DESCRIPTOR.name == "coinone" and not DESCRIPTOR.time_ordered_ids
    assert DESCRIPTOR.keepalive.idle_timeout == 1800.0 and DESCRIPTOR.stall.adaptive
    protocol: ExchangeProtocol = CoinoneProtocol()
    assert protocol.ping_frame == '{"request_type":"PING"}' and protocol.book_symbol(DEFAULT_FRAME) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"[]",
        b'{"response_type":"ERROR","error_code":null}',
        b'{"response_type":5}',
        b"{}",
        DEFAULT_FRAME.replace(b'"id":"1693560155038001"', b'"id":1693560155038001'),
        DEFAULT_FRAME.replace(b'"id":"1693560155038001"', b'"id":"' + b"9" * 19 + b'"'),
        DEFAULT_FRAME.replace(b'"687.7"', b'"nan"'),
        DEFAULT_FRAME.replace(b'"687.7"', b'"-687.7"'),
        DEFAULT_FRAME.replace(b'"687.7"', b"687.7"),
        DEFAULT_FRAME.replace(b'"XRP"', b'"X RP"'),
        DEFAULT_FRAME.replace(b'"timestamp":1693560155038', b'"timestamp":"1"'),
    ],
)
def test_malformed_frames_are_bad_frames(frame: bytes) -> None:
    with pytest.raises(BadFrame):
        CoinoneProtocol().parse(frame, 1.0)


def test_garbage_raises_bad_frame_only() -> None:
    rng = random.Random(7)
    protocol = CoinoneProtocol()
    seeds = [DEFAULT_FRAME, SHORT_FRAME, *(line.encode() for line in CONTROL)]
    for _ in range(3000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(frame))
            if rng.random() < 0.5:
                frame[i] = rng.choice(b'"{}[],:.-0123456789eE ax')
            else:
                del frame[i]
        if rng.random() < 0.05:
            frame = bytearray(rng.randbytes(rng.randint(0, 40)))
        try:
            events = protocol.parse(bytes(frame), 1.0)
        except BadFrame:
            continue
        for event in events:
            if isinstance(event, OrderBookSnapshot):
                assert all(p > 0 < q for p, q in event.bids + event.asks)
                assert type(event.xid) is int
