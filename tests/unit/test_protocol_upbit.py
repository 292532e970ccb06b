"""UpbitProtocol against real frames: the 2021 SIMPLE capture and the documented formats."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from typing import Any

import orjson
import pytest
from support.captures import DATA, FRAMES, received_frames

from client.errors import InvalidSymbolError
from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, ErrorReply, ExchangeProtocol, UpbitProtocol
from feeder.exchanges import upbit as upbit_module
from feeder.exchanges.base import Listed

RECORDING = DATA / "recordings" / "upbit-2021-04-17.ws.txt"


def reference_book(frame: bytes) -> dict[str, Any]:
    """A straightforward decoding with the json module, independent of the code under test."""
    obj = json.loads(frame.decode("utf-8"))
    units = obj["obu"]
    return {
        "symbol": obj["cd"],
        "xid": obj["tms"],
        "timestamp": obj["tms"] / 1000,
        "asks": [(float(u["ap"]), float(u["as"])) for u in units if u["ap"] or u["as"]],
        "bids": [(float(u["bp"]), float(u["bs"])) for u in units if u["bp"] or u["bs"]],
    }


def frame_text(name: str) -> str:
    return (FRAMES / name).read_text().strip()


def parse_one(frame: bytes | str, recv_ts: float = 1.5) -> OrderBookSnapshot:
    snapshots = UpbitProtocol().parse(frame, recv_ts)
    assert len(snapshots) == 1
    return snapshots[0]


# ---- the 2021 capture: SIMPLE format, binary frames ------------------------------------------------------


def test_recording_orderbook_frames_match_an_independent_decoding() -> None:
    protocol = UpbitProtocol()
    frames = received_frames(RECORDING)
    books = [f for f in frames if isinstance(f, bytes) and b'"ty":"orderbook"' in f]
    assert len(books) == 145
    for i, frame in enumerate(books):
        expected = reference_book(frame)
        recv_ts = 1618678000.0 + i
        (snapshot,) = protocol.parse(frame, recv_ts=recv_ts)
        assert snapshot.exchange == "upbit"
        assert snapshot.symbol == expected["symbol"]
        assert snapshot.xid == expected["xid"]
        assert type(snapshot.xid) is int
        assert snapshot.timestamp == expected["timestamp"]
        assert snapshot.recv_ts == recv_ts
        assert snapshot.seq is None
        assert snapshot.asks == expected["asks"]
        assert snapshot.bids == expected["bids"]
        assert len(snapshot.asks) == len(snapshot.bids) == 15
        assert all(type(p) is float and type(q) is float for p, q in snapshot.asks + snapshot.bids)
        # best first: asks ascend, bids descend, and the book is not crossed
        assert [p for p, _ in snapshot.asks] == sorted(p for p, _ in snapshot.asks)
        assert [p for p, _ in snapshot.bids] == sorted((p for p, _ in snapshot.bids), reverse=True)
        assert snapshot.best_bid() is not None and snapshot.best_ask() is not None
        assert snapshot.best_bid() < snapshot.best_ask()  # type: ignore[operator]


def test_recording_symbols() -> None:
    protocol = UpbitProtocol()
    symbols = {s.symbol for f in received_frames(RECORDING) for s in protocol.parse(f, 0.0)}
    assert {"KRW-LAMB", "KRW-WAVES", "BTC-XTZ", "BTC-PAX", "BTC-ITAM"} <= symbols


def test_recording_trade_frames_give_nothing() -> None:
    protocol = UpbitProtocol()
    trades = [f for f in received_frames(RECORDING) if isinstance(f, bytes) and b'"ty":"trade"' in f]
    assert len(trades) == 304
    for frame in trades:
        assert protocol.parse(frame) == []


def test_text_and_binary_frames_decode_alike() -> None:
    frame = next(f for f in received_frames(RECORDING) if isinstance(f, bytes) and b"orderbook" in f)
    protocol = UpbitProtocol()
    assert protocol.parse(frame, 1.0) == protocol.parse(frame.decode(), 1.0)
    # bytearray and memoryview work too (orjson takes them), though the signature only promises bytes
    assert protocol.parse(bytearray(frame), 1.0) == protocol.parse(memoryview(frame), 1.0)  # type: ignore[arg-type]


def test_recv_ts_defaults_to_now() -> None:
    before = time.time()
    (snapshot,) = UpbitProtocol().parse(frame_text("upbit-orderbook-default.json"))
    assert snapshot.recv_ts is not None
    assert before <= snapshot.recv_ts <= time.time()
    assert snapshot.timestamp == 1746601573.804  # exchange time, not receive time


def test_fast_path_agrees_with_strict_decoding() -> None:
    for frame in received_frames(RECORDING):
        obj = orjson.loads(frame)
        if obj.get("ty") != "orderbook":
            continue
        for keys in (("ap", "as"), ("bp", "bs")):
            fast = upbit_module._side(obj["obu"], *keys, "x")
            assert fast == upbit_module._side_strict(obj["obu"], *keys, "x")


# ---- documented formats ----------------------------------------------------------------------------------


def test_default_format() -> None:
    snapshot = parse_one(frame_text("upbit-orderbook-default.json"))
    assert snapshot.symbol == "KRW-BTC"
    assert snapshot.xid == 1746601573804
    assert snapshot.timestamp == 1746601573.804
    assert snapshot.asks == [(137002000.0, 0.10623869), (137023000.0, 0.06144079), (137050000.0, 0.0055433)]
    assert snapshot.bids == [(137001000.0, 0.03656812), (137000000.0, 0.33543284), (136999000.0, 0.00104379)]
    # the documented example writes prices as JSON integers; the snapshot holds floats all the same
    assert all(type(p) is float and type(q) is float for p, q in snapshot.asks + snapshot.bids)


def test_default_format_with_exponent_notation() -> None:
    snapshot = parse_one(frame_text("upbit-orderbook-default-exponent.json"))
    assert snapshot.asks == [(116539000.0, 0.02054761), (116540000.0, 0.5)]
    assert snapshot.bids == [(116538000.0, 0.08120946), (116537000.0, 0.00079276)]
    assert snapshot.xid == 1790134742106


def test_one_sided_book_drops_the_zero_padding() -> None:
    snapshot = parse_one(frame_text("upbit-orderbook-one-sided.json"))
    assert snapshot.symbol == "KRW-NEWCOIN"
    assert snapshot.bids == []
    assert snapshot.asks == [(1200.0, 100.0), (1210.0, 50.0)]
    assert snapshot.best_bid() is None
    assert snapshot.best_ask() == 1200.0


def test_simple_list_format() -> None:
    snapshot = parse_one(frame_text("upbit-orderbook-simple-list.json"))
    assert snapshot.symbol == "KRW-BTC"
    assert snapshot.xid == 1751855921432
    assert snapshot.asks == [(148880000.0, 0.37765316), (148890000.0, 0.64120607)]
    assert snapshot.bids == [(148830000.0, 0.34809059), (148820000.0, 0.02744065)]


def test_json_list_with_several_books_and_other_types() -> None:
    default = json.loads(frame_text("upbit-orderbook-default.json"))
    other = dict(default, code="KRW-ETH", timestamp=1746601573900)
    trade = {"type": "trade", "code": "KRW-BTC", "timestamp": 1, "trade_price": 1.0}
    snapshots = UpbitProtocol().parse(json.dumps([default, trade, other]), 2.0)
    assert [s.symbol for s in snapshots] == ["KRW-BTC", "KRW-ETH"]
    assert [s.xid for s in snapshots] == [1746601573804, 1746601573900]
    assert UpbitProtocol().parse("[]") == []


def test_unit_count_suffix_is_stripped_from_the_code() -> None:
    obj = json.loads(frame_text("upbit-orderbook-default.json"))
    obj["code"] = "KRW-BTC.15"
    assert parse_one(json.dumps(obj)).symbol == "KRW-BTC"


def test_zero_size_level_is_dropped() -> None:
    obj = json.loads(frame_text("upbit-orderbook-default.json"))
    obj["orderbook_units"][1]["ask_size"] = 0
    snapshot = parse_one(json.dumps(obj))
    assert [p for p, _ in snapshot.asks] == [137002000.0, 137050000.0]
    assert len(snapshot.bids) == 3


def test_ticker_and_trade_types_give_nothing() -> None:
    protocol = UpbitProtocol()
    assert protocol.parse('{"type":"ticker","code":"KRW-BTC","trade_price":1}') == []
    assert protocol.parse('{"ty":"trade","cd":"KRW-BTC"}') == []


# ---- errors and keep-alive -------------------------------------------------------------------------------


def test_error_frames_are_error_replies() -> None:
    protocol = UpbitProtocol()
    lines = frame_text("upbit-errors.txt").splitlines()
    names = []
    for line in lines[:3]:
        (error,) = protocol.parse(line.encode())
        assert isinstance(error, ErrorReply)
        assert error.exchange == "upbit"
        assert error.message
        assert str(error).startswith(f"upbit error {error.name}: ")
        names.append(error.name)
    assert names == ["NO_TICKET", "INVALID_PARAM", "WRONG_FORMAT"]
    assert protocol.parse(lines[3]) == [Ack(None, "UP")]  # {"status":"UP"}, the reply to a text PING


def test_error_reply_pickles() -> None:
    error = ErrorReply("upbit", "INVALID_PARAM", "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert copy == error and str(copy) == "upbit error INVALID_PARAM: bad"


# ---- malformed input -------------------------------------------------------------------------------------

_DEFAULT = json.loads((FRAMES / "upbit-orderbook-default.json").read_text())


def _default_with(**changes: Any) -> str:
    obj = json.loads(json.dumps(_DEFAULT))
    for key, value in changes.items():
        if value is _DELETE:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


def _unit_with(key: str, value: Any, index: int = 0) -> str:
    obj = json.loads(json.dumps(_DEFAULT))
    if value is _DELETE:
        del obj["orderbook_units"][index][key]
    else:
        obj["orderbook_units"][index][key] = value
    return json.dumps(obj)


_DELETE = object()

MALFORMED: list[tuple[bytes | str, str]] = [
    (b"", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    ("PONG", "not JSON"),
    ('{"ty":"orderbook"', "not JSON"),
    ('{"ty":"orderbook","cd":"KRW-BTC","tms":1,"obu":[{"ap":1e999,"bp":1,"as":1,"bs":1}]}', "not JSON"),
    ('{"ty":"orderbook","cd":"KRW-BTC","tms":1,"obu":[{"ap":NaN,"bp":1,"as":1,"bs":1}]}', "not JSON"),
    ("42", "not an object or array"),
    ('"orderbook"', "not an object or array"),
    ("[1, 2]", "not an object"),
    ("{}", "no type"),
    ('{"status": 1}', "no type"),
    ('{"type": 5}', "not a string"),
    ('{"error": "boom"}', "malformed error"),
    ('{"error": {"message": "no name"}}', "malformed error"),
    (_default_with(code=_DELETE), "code"),
    (_default_with(code=7), "code"),
    (_default_with(code="krw-btc"), "invalid code"),
    (_default_with(code="KRW BTC"), "invalid code"),
    (_default_with(code=""), "invalid code"),
    (_default_with(code="X" * 65), "invalid code"),
    (_default_with(timestamp=_DELETE), "timestamp"),
    (_default_with(timestamp=True), "timestamp"),
    (_default_with(timestamp="1746601573804"), "timestamp"),
    (_default_with(timestamp=-1), "timestamp"),
    (_default_with(orderbook_units=_DELETE), "not a list"),
    (_default_with(orderbook_units={"ask_price": 1}), "not a list"),
    (_default_with(orderbook_units="units"), "not a list"),
    (_default_with(orderbook_units=[[1, 2, 3, 4]]), "not an object"),
    (_default_with(orderbook_units=[None]), "not an object"),
    (_unit_with("ask_price", _DELETE), "lacks 'ask_price'"),
    (_unit_with("bid_size", _DELETE, index=2), "lacks 'bid_size'"),
    (_unit_with("ask_price", True), "bool, not a number"),
    (_unit_with("ask_size", False), "bool, not a number"),
    (_unit_with("ask_price", "137002000"), "str, not a number"),
    (_unit_with("bid_price", None), "NoneType, not a number"),
    (_unit_with("bid_size", [1]), "list, not a number"),
    (_unit_with("ask_size", -0.5), "negative"),
    (_unit_with("bid_size", -1, index=1), "negative"),
    (_unit_with("ask_price", -137002000), "not positive"),
    (_unit_with("ask_price", 0), "not positive"),  # zero price with a positive size is not padding
    (_unit_with("bid_price", -1e-9, index=2), "not positive"),
]


@pytest.mark.parametrize(("frame", "reason"), MALFORMED)
def test_malformed_frames_raise_bad_frame(frame: bytes | str, reason: str) -> None:
    with pytest.raises(BadFrame, match=reason) as caught:
        UpbitProtocol().parse(frame, 1.0)
    assert len(str(caught.value)) < 200


def test_bad_frame_is_a_value_error() -> None:
    assert issubclass(BadFrame, ValueError)
    with pytest.raises(ValueError, match="not JSON"):
        UpbitProtocol().parse(b"\x00")


def test_wrong_frame_type_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        UpbitProtocol().parse(12345)  # type: ignore[arg-type]


def test_big_integer_size_is_accepted_as_float() -> None:
    snapshot = parse_one(_unit_with("ask_size", 2**64 + 1))  # orjson turns it into a float
    assert snapshot.asks[0] == (137002000.0, float(2**64))


def test_a_bad_element_spoils_a_list_frame() -> None:
    good = json.loads(frame_text("upbit-orderbook-default.json"))
    with pytest.raises(BadFrame):
        UpbitProtocol().parse(json.dumps([good, 3]))


# ---- subscribing -----------------------------------------------------------------------------------------


def test_subscribe_frame_is_the_documented_request() -> None:
    protocol = UpbitProtocol(ticket="test-ticket")
    (frame,) = protocol.subscribe_frames(["KRW-BTC", "krw-eth", "KRW-BTC", " BTC-XRP "])
    assert isinstance(frame, str)
    assert json.loads(frame) == [
        {"ticket": "test-ticket"},
        {"type": "orderbook", "codes": ["KRW-BTC", "KRW-ETH", "BTC-XRP"]},
        {"format": "DEFAULT"},
    ]


def test_ticket_is_a_fresh_uuid4_unless_given() -> None:
    protocol = UpbitProtocol(format="SIMPLE")
    first = json.loads(protocol.subscribe_frames(["KRW-BTC"])[0])
    second = json.loads(protocol.subscribe_frames(["KRW-BTC"])[0])
    assert uuid.UUID(first[0]["ticket"]).version == 4
    assert first[0]["ticket"] != second[0]["ticket"]
    assert first[2] == {"format": "SIMPLE"}
    given = json.loads(protocol.subscribe_frames(["KRW-BTC"], ticket="abc")[0])
    assert given[0] == {"ticket": "abc"}


@pytest.mark.parametrize("levels", [1, 5, 15, 30])
def test_levels_add_the_code_suffix(levels: int) -> None:
    protocol = UpbitProtocol(levels=levels, ticket="t")
    request = json.loads(protocol.subscribe_frames(["KRW-BTC", "BTC-ETH"])[0])
    assert request[1]["codes"] == [f"KRW-BTC.{levels}", f"BTC-ETH.{levels}"]


def test_url_is_the_base_url_for_any_symbols() -> None:
    assert UpbitProtocol().url(["KRW-BTC"]) == "wss://api.upbit.com/websocket/v1"
    assert UpbitProtocol(url="ws://127.0.0.1:9000/websocket/v1").url([]) == "ws://127.0.0.1:9000/websocket/v1"


def test_invalid_symbols_are_refused_before_sending() -> None:
    protocol = UpbitProtocol()
    with pytest.raises(InvalidSymbolError):
        protocol.subscribe_frames(["KRW-BTC", "KRW/BTC"])
    with pytest.raises(ValueError, match="no symbols"):
        protocol.subscribe_frames([])
    with pytest.raises(TypeError):
        protocol.subscribe_frames("KRW-BTC")
    with pytest.raises(InvalidSymbolError):
        protocol.subscribe_frames([b"KRW-BTC"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "XML"},
        {"format": "default"},
        {"levels": 10},
        {"levels": 0},
        {"url": "https://api.upbit.com"},
        {"max_symbols_per_connection": 0},
        {"ticket": ""},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        UpbitProtocol(**kwargs)


def test_satisfies_the_exchange_protocol() -> None:
    protocol: ExchangeProtocol = UpbitProtocol()
    assert protocol.name == "upbit"
    assert protocol.max_symbols_per_connection == 100
    assert UpbitProtocol(max_symbols_per_connection=7).max_symbols_per_connection == 7


def test_a_book_with_more_levels_than_the_cap_is_a_bad_frame() -> None:
    units = [
        {"ask_price": 2.0 + i, "bid_price": 1.0, "ask_size": 1.0, "bid_size": 1.0} for i in range(80_000)
    ]
    frame = json.dumps({"type": "orderbook", "code": "KRW-BTC", "timestamp": 1, "orderbook_units": units})
    with pytest.raises(BadFrame, match="more than 50 levels"):
        UpbitProtocol().parse(frame, 1.0)
    small = UpbitProtocol(max_levels=1)
    with pytest.raises(BadFrame, match="more than 1 levels"):
        small.parse(frame_text("upbit-orderbook-default.json").encode(), 1.0)  # fast path: capped too


def test_list_subscriptions_request_and_reply_in_both_spellings() -> None:
    """Upbit's LIST_SUBSCRIPTIONS (2024-08-07): asked in the connection's own format, answered with its codes."""
    protocol = UpbitProtocol(format="SIMPLE", ticket="t")
    (request,) = protocol.list_frames()
    assert orjson.loads(request) == [{"ticket": "t"}, {"method": "LIST_SUBSCRIPTIONS"}, {"format": "SIMPLE"}]
    long = b'{"method":"LIST_SUBSCRIPTIONS","result":[{"type":"ticker","codes":["KRW-XRP"]},{"type":"orderbook","codes":["KRW-BTC","KRW-ETH.5"],"level":0}],"ticket":"t"}'
    short = b'{"mthd":"LIST_SUBSCRIPTIONS","rslt":[{"ty":"orderbook","cds":["KRW-BTC"],"lv":0}],"tckt":"t"}'
    assert protocol.parse(long, 1.0) == [Listed("upbit", frozenset({"KRW-BTC", "KRW-ETH"}))]
    assert protocol.parse(short, 1.0) == [Listed("upbit", frozenset({"KRW-BTC"}))]
    with pytest.raises(BadFrame):
        protocol.parse(b'{"method":"LIST_SUBSCRIPTIONS","result":[{"type":"orderbook","codes":[1]}]}', 1.0)
