"""BithumbProtocol (Upbit's dialect, `feeder.exchanges.bithumb`) against Bithumb's documented frames."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from support.captures import FRAMES

from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, ErrorReply, ExchangeProtocol
from feeder.exchanges.bithumb import DESCRIPTOR, BithumbProtocol, Settings

DEFAULT_FRAME = (FRAMES / "bithumb-orderbook-default.json").read_bytes().strip()
BIDS = [(478300.0, 5.637), (477900.0, 0.9705), (471200.0, 3.9279)]
ASKS = [(478800.0, 4.3478), (489700.0, 2.3642), (493100.0, 411.8686)]


def only(events: list[Any]) -> Any:
    assert len(events) == 1
    return events[0]


def simple_spelling(frame: bytes) -> bytes:
    """The documented frame with SIMPLE keys, in the same order (no SIMPLE example is published)."""
    obj = orjson.loads(frame)
    names = {"type": "ty", "code": "cd", "total_ask_size": "tas", "total_bid_size": "tbs", "level": "lv"}
    names |= {"orderbook_units": "obu", "timestamp": "tms", "stream_type": "st"}
    units = {"ask_price": "ap", "bid_price": "bp", "ask_size": "as", "bid_size": "bs"}
    out = {names[k]: v for k, v in obj.items()}
    out["obu"] = [{units[k]: v for k, v in u.items()} for u in obj["orderbook_units"]]
    return orjson.dumps(out)


@pytest.mark.parametrize("spelling", ["DEFAULT", "SIMPLE"])
@pytest.mark.parametrize("kind", [bytes, str])
def test_documented_frame_decodes_to_the_exact_book(spelling: str, kind: type) -> None:
    frame = DEFAULT_FRAME if spelling == "DEFAULT" else simple_spelling(DEFAULT_FRAME)
    protocol = BithumbProtocol()
    assert protocol._parse_fast(frame, 2.5) is not None  # the documented shape takes the fast path
    book = only(protocol.parse(frame if kind is bytes else frame.decode(), recv_ts=2.5))
    assert isinstance(book, OrderBookSnapshot)
    assert (book.exchange, book.symbol, book.xid, book.timestamp) == (
        "bithumb",
        "KRW-BTC",
        1725930007672,
        1725930007.672,
    )
    assert book.bids == BIDS and book.asks == ASKS
    assert all(type(x) is float for level in book.bids + book.asks for x in level)
    assert book.recv_ts == 2.5
    # the general path decides the same
    slow = BithumbProtocol()
    slow._parse_fast = lambda frame, recv_ts: None  # type: ignore[method-assign]
    assert only(slow.parse(frame, recv_ts=2.5)) == book


def test_depth_keeps_that_many_units_a_side() -> None:
    for fast in (True, False):
        protocol = BithumbProtocol(depth=2)
        if not fast:
            protocol._parse_fast = lambda frame, recv_ts: None  # type: ignore[method-assign]
        book = only(protocol.parse(DEFAULT_FRAME, 1.0))
        assert book.bids == BIDS[:2] and book.asks == ASKS[:2]


def test_upbit_order_and_code_suffix_are_accepted() -> None:
    obj = orjson.loads(DEFAULT_FRAME)
    reordered = {"type": "orderbook", "code": "KRW-ETH.3", "timestamp": obj["timestamp"]}
    reordered |= {k: v for k, v in obj.items() if k not in reordered}
    book = only(BithumbProtocol().parse(orjson.dumps(reordered), 1.0))
    assert book.symbol == "KRW-ETH" and book.bids == BIDS and book.asks == ASKS


def test_errors_and_status_reply() -> None:
    lines = (FRAMES / "bithumb-errors.txt").read_text().splitlines()
    events = [only(BithumbProtocol().parse(line.encode(), 1.0)) for line in lines]
    assert events[:-1] == [
        ErrorReply("bithumb", name, orjson.loads(line)["error"]["message"])
        for name, line in zip(
            ["WRONG_FORMAT", "NO_TICKET", "NO_TYPE", "NO_CODES", "INVALID_PARAM", "INVALID_PARAM"],
            lines,
            strict=False,
        )
    ]
    assert events[-1] == Ack(None, "UP")
    assert BithumbProtocol().parse(b'{"type":"ticker","code":"KRW-BTC"}', 1.0) == []


def test_subscribe_frame_is_the_documented_request() -> None:
    documented = orjson.loads((FRAMES / "bithumb-orderbook-request.json").read_bytes())
    (frame,) = BithumbProtocol(ticket="test example").subscribe_frames(["krw-btc", "KRW-ETH", "KRW-BTC"])
    assert frame == (
        '[{"ticket":"test example"},{"type":"orderbook","codes":["KRW-BTC","KRW-ETH"]},{"format":"DEFAULT"}]'
    )
    request = orjson.loads(frame)
    assert [list(o) for o in request] == [["ticket"], ["type", "codes"], ["format"]]
    assert request[0] == documented[0] and request[2] == documented[2]
    (simple,) = BithumbProtocol(format="SIMPLE", ticket="t").subscribe_frames(["KRW-BTC"])
    assert orjson.loads(simple)[2] == {"format": "SIMPLE"}
    assert BithumbProtocol().url(["KRW-BTC"]) == "wss://ws-api.bithumb.com/websocket/v1"


@pytest.mark.parametrize(
    "kwargs",
    [{"format": "JSON_LIST"}, {"depth": 0}, {"depth": 31}, {"url": "https://x"}, {"ticket": ""}],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BithumbProtocol(**kwargs)


def test_settings_and_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.bithumb_symbols == "KRW-BTC,KRW-ETH"
    assert (settings.bithumb_format, settings.bithumb_depth) == ("DEFAULT", 15)
    assert settings.bithumb_url == "wss://ws-api.bithumb.com/websocket/v1"
    monkeypatch.setenv("MD_BITHUMB_SYMBOLS", "krw-xrp, KRW-XRP,KRW-BTC")
    monkeypatch.setenv("MD_BITHUMB_DEPTH", "30")
    monkeypatch.setenv("MD_BITHUMB_FORMAT", "SIMPLE")
    settings = Settings()
    assert (settings.bithumb_symbols, settings.bithumb_depth) == ("KRW-XRP,KRW-BTC", 30)
    for name, value in (("MD_BITHUMB_DEPTH", "31"), ("MD_BITHUMB_FORMAT", "JSON_LIST")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)
    assert DESCRIPTOR.name == "bithumb" and DESCRIPTOR.time_ordered_ids
    assert DESCRIPTOR.pacing.open_rate == 10.0 and DESCRIPTOR.keepalive.idle_timeout == 120.0
    assert DESCRIPTOR.stall.adaptive
    protocol: ExchangeProtocol = BithumbProtocol()
    assert protocol.name == "bithumb" and protocol.ping_frame is None and protocol.resync_frames("X") == []


def test_garbage_raises_bad_frame_only() -> None:
    rng = random.Random(5)
    protocol = BithumbProtocol()
    seeds = [DEFAULT_FRAME, simple_spelling(DEFAULT_FRAME), b'{"error":{"name":"X","message":"y"}}']
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
