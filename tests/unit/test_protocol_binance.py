"""BinanceProtocol against real frames: documented partial books, control replies, and a 2021 capture."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from support.captures import DATA, FRAMES, received_frames

from client.errors import InvalidSymbolError
from feeder.exchanges import Ack, BadFrame, BinanceProtocol, ErrorReply, ExchangeProtocol, ShutdownNotice
from feeder.exchanges import binance as binance_module

RECORDING = DATA / "recordings" / "binance-2021-10-12.ws.txt"


def lines(name: str) -> list[str]:
    return (FRAMES / name).read_text().strip().splitlines()


def reference_book(frame: str) -> dict[str, Any]:
    """A straightforward decoding with the json module, independent of the code under test."""
    obj = json.loads(frame)
    data = obj["data"]
    return {
        "symbol": obj["stream"].split("@")[0].upper(),
        "xid": data["lastUpdateId"],
        "bids": [(float(p), float(q)) for p, q in data["bids"]],
        "asks": [(float(p), float(q)) for p, q in data["asks"]],
    }


def book_frame(bids: Any, asks: Any, stream: str = "btcusdt@depth20@100ms", **data: Any) -> str:
    return json.dumps({"stream": stream, "data": {"lastUpdateId": 7, "bids": bids, "asks": asks, **data}})


GOOD_BIDS = [["100.5", "1.25"], ["100.4", "2"]]
GOOD_ASKS = [["100.6", "0.5"], ["100.7", "3.00000000"]]


# ---- partial book frames ---------------------------------------------------------------------------------


def test_documented_partial_depth_frames() -> None:
    protocol = BinanceProtocol()
    first, second = lines("binance-partial-depth-combined.txt")
    (btc,) = protocol.parse(first, recv_ts=1700000000.25)
    assert btc.exchange == "binance"
    assert btc.symbol == "BTCUSDT"
    assert btc.xid == 100530416202
    assert btc.timestamp == btc.recv_ts == 1700000000.25  # no event time in the payload: receive time
    assert btc.bids == [(86704.77, 4.67805), (86704.76, 0.00224)]
    assert btc.asks == [(86704.78, 0.73337), (86704.79, 0.00384)]
    (bnb,) = protocol.parse(second.encode(), recv_ts=5.0)  # depth5 at 1000 ms: no speed suffix
    assert bnb.symbol == "BNBBTC"
    assert bnb.xid == 160
    assert bnb.bids == [(0.0024, 10.0)]
    assert bnb.asks == [(0.0026, 100.0)]
    for frame in (first, second):
        expected = reference_book(frame)
        (snapshot,) = protocol.parse(frame, 0.0)
        assert (snapshot.symbol, snapshot.xid, snapshot.bids, snapshot.asks) == (
            expected["symbol"],
            expected["xid"],
            expected["bids"],
            expected["asks"],
        )
        assert all(type(p) is float and type(q) is float for p, q in snapshot.bids + snapshot.asks)


def test_symbol_comes_from_the_stream_name_whatever_the_configured_depth() -> None:
    protocol = BinanceProtocol(depth=5, speed="1000ms")
    for kind in ("depth5", "depth10", "depth20", "depth5@100ms", "depth10@1000ms", "depth20@100ms"):
        (snapshot,) = protocol.parse(book_frame(GOOD_BIDS, GOOD_ASKS, stream=f"ethbtc@{kind}"), 1.0)
        assert snapshot.symbol == "ETHBTC"


def test_recv_ts_defaults_to_now() -> None:
    before = time.time()
    (snapshot,) = BinanceProtocol().parse(book_frame(GOOD_BIDS, GOOD_ASKS))
    assert snapshot.recv_ts is not None
    assert before <= snapshot.recv_ts <= time.time()
    assert snapshot.timestamp == snapshot.recv_ts


def test_event_time_is_used_when_the_payload_has_one() -> None:
    (snapshot,) = BinanceProtocol().parse(book_frame(GOOD_BIDS, GOOD_ASKS, E=1700000000123), 5.0)
    assert snapshot.timestamp == 1700000000.123
    assert snapshot.recv_ts == 5.0


def test_empty_sides_and_zero_size_levels() -> None:
    (snapshot,) = BinanceProtocol().parse(book_frame([], [["1.0", "0.00000000"], ["1.1", "2"]]), 1.0)
    assert snapshot.bids == []
    assert snapshot.asks == [(1.1, 2.0)]  # a zero-size level carries no liquidity: dropped


def test_fast_path_agrees_with_strict_decoding() -> None:
    sides = [json.loads(line)["data"] for line in lines("binance-partial-depth-combined.txt")]
    sides += [json.loads(book_frame(GOOD_BIDS, GOOD_ASKS))["data"]]
    for data in sides:
        for side in ("bids", "asks"):
            assert binance_module._side(data[side], side) == binance_module._side_strict(data[side], side)


# ---- control frames and other streams --------------------------------------------------------------------


def test_control_frames() -> None:
    protocol = BinanceProtocol()
    ack, listing, wrapped_error, bare_error, shutdown = lines("binance-control.txt")
    assert protocol.parse(ack) == [Ack(json.loads(ack)["id"], None)]
    (listed,) = protocol.parse(listing)
    assert isinstance(listed, Ack) and listed.result == json.loads(listing)["result"]
    (error,) = protocol.parse(wrapped_error)
    assert isinstance(error, ErrorReply)
    assert (error.exchange, error.name) == ("binance", "2")
    assert error.message.startswith("Invalid request: unknown variant `FOO`")
    assert str(error).startswith("binance error 2: Invalid request")
    (error,) = protocol.parse(bare_error.encode())
    assert isinstance(error, ErrorReply)
    assert (error.name, error.message) == ("3", "Invalid JSON: expected value at line 1 column 1")
    assert protocol.parse(shutdown) == [ShutdownNotice("binance", event_time=1770123456.789)]


def test_bare_server_shutdown_event() -> None:
    assert BinanceProtocol().parse('{"e":"serverShutdown"}') == [ShutdownNotice("binance", event_time=None)]


def test_error_code_given_as_string() -> None:
    (error,) = BinanceProtocol().parse('{"error":{"code":"-1121","msg":"Invalid symbol."},"id":4}')
    assert isinstance(error, ErrorReply) and error.name == "-1121"


def test_recording_frames_of_other_streams_give_nothing() -> None:
    protocol = BinanceProtocol()
    frames = received_frames(RECORDING)
    assert len(frames) == 265
    kinds = set()
    for frame in frames:
        assert protocol.parse(frame, 1.0) == []
        kinds.add(json.loads(frame)["stream"].split("@", 1)[1])
    assert kinds == {"depth@100ms", "bookTicker", "kline_1m", "aggTrade"}


@pytest.mark.parametrize(
    "frame",
    [
        '{"stream":"!ticker@arr","data":{"e":"24hrTicker"}}',
        '{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT"}}',
        '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}',
        '{"stream":"btcusdt@depth25@100ms","data":{}}',
        '{"e":"trade","s":"BTCUSDT"}',
    ],
)
def test_other_streams_and_events_give_nothing(frame: str) -> None:
    assert BinanceProtocol().parse(frame) == []


def test_a_reply_with_a_string_id_is_an_ack() -> None:
    assert BinanceProtocol().parse('{"result":null,"id":"abc"}') == [Ack("abc", None)]


# ---- malformed input -------------------------------------------------------------------------------------

MALFORMED: list[tuple[bytes | str, str]] = [
    (b"", "not JSON"),
    (b"\xc3\x28", "not JSON"),
    ("ping", "not JSON"),
    (book_frame(GOOD_BIDS, GOOD_ASKS)[:-3], "not JSON"),
    ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[[1e999,"1"]],"asks":[]}}', "not JSON"),
    ("[]", "not an object"),
    ("null", "not an object"),
    ("{}", "unknown frame shape"),
    ('{"id":1}', "unknown frame shape"),
    ('{"lastUpdateId":1,"bids":[],"asks":[]}', "without the combined-stream wrapper"),
    ('{"error":"nope","id":1}', "malformed error"),
    ('{"error":{"code":true,"msg":"x"},"id":1}', "malformed error"),
    ('{"code":2,"msg":5,"id":1}', "malformed error"),
    ('{"stream":5,"data":{}}', "combined-stream frame"),
    ('{"stream":"btcusdt@depth5","data":[]}', "combined-stream frame"),
    ('{"stream":"btcusdt@depth5"}', "combined-stream frame"),
    ('{"stream":"btcusdt","data":{}}', "unknown stream name"),
    ('{"stream":"@depth5","data":{}}', "unknown stream name"),
    ('{"stream":"btcusdt@","data":{}}', "unknown stream name"),
    (book_frame(GOOD_BIDS, GOOD_ASKS, stream="btc$usdt@depth20"), "invalid symbol"),
    (book_frame(GOOD_BIDS, GOOD_ASKS, stream="btc usdt@depth20"), "invalid symbol"),
    ('{"stream":"btcusdt@depth5","data":{"bids":[],"asks":[]}}', "lastUpdateId"),
    ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":"5","bids":[],"asks":[]}}', "lastUpdateId"),
    ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":true,"bids":[],"asks":[]}}', "lastUpdateId"),
    ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":-1,"bids":[],"asks":[]}}', "lastUpdateId"),
    ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"asks":[]}}', "bids is NoneType, not a list"),
    (book_frame({"100": "1"}, GOOD_ASKS), "bids is dict, not a list"),
    (book_frame(GOOD_BIDS, "100.6"), "asks is str, not a list"),
    (book_frame([["100.5"]], GOOD_ASKS), r"bids\[0\] is not a \[price, size\] pair"),
    (book_frame(GOOD_BIDS, [*GOOD_ASKS, ["1", "2", "3"]]), r"asks\[2\] is not a \[price, size\] pair"),
    (book_frame(["12"], GOOD_ASKS), "is not a"),
    (book_frame([{"1": "a", "2": "b"}], GOOD_ASKS), "is not a"),
    (book_frame([None], GOOD_ASKS), "is not a"),
    (book_frame([[100.5, 1.0]], GOOD_ASKS), "float, not a string"),
    (book_frame([["100.5", 1]], GOOD_ASKS), "int, not a string"),
    (book_frame([[True, "1"]], GOOD_ASKS), "bool, not a string"),
    (book_frame([["100.5", None]], GOOD_ASKS), "NoneType, not a string"),
    (book_frame([["abc", "1"]], GOOD_ASKS), "not a number"),
    (book_frame([["", "1"]], GOOD_ASKS), "not a number"),
    (book_frame([["nan", "1"]], GOOD_ASKS), "not finite"),
    (book_frame([["100", "NaN"]], GOOD_ASKS), "not finite"),
    (book_frame([["inf", "1"]], GOOD_ASKS), "not finite"),
    (book_frame([["1e999", "1"]], GOOD_ASKS), "not finite"),
    (book_frame([["100", "-Infinity"]], GOOD_ASKS), "not finite"),
    (book_frame(GOOD_BIDS, [["100.6", "-0.5"]]), "negative"),
    (book_frame(GOOD_BIDS, [["-100.6", "0.5"]]), "not positive"),
    (book_frame(GOOD_BIDS, [["0", "0.5"]]), "not positive"),
    (book_frame(GOOD_BIDS, [["0.00000000", "0.00000000"]]), "not positive"),
    (book_frame(GOOD_BIDS, GOOD_ASKS, E="soon"), "event time"),
    (book_frame(GOOD_BIDS, GOOD_ASKS, E=-5), "event time"),
]


@pytest.mark.parametrize(("frame", "reason"), MALFORMED)
def test_malformed_frames_raise_bad_frame(frame: bytes | str, reason: str) -> None:
    with pytest.raises(BadFrame, match=reason) as caught:
        BinanceProtocol().parse(frame, 1.0)
    assert len(str(caught.value)) < 200


def test_a_valid_symbol_is_cached_but_an_invalid_one_is_refused_every_time() -> None:
    protocol = BinanceProtocol()
    for _ in range(2):
        with pytest.raises(BadFrame):
            protocol.parse(book_frame(GOOD_BIDS, GOOD_ASKS, stream="btc$usdt@depth20"), 1.0)
        assert protocol.parse(book_frame(GOOD_BIDS, GOOD_ASKS), 1.0)[0].symbol == "BTCUSDT"


# ---- connecting ------------------------------------------------------------------------------------------


def test_url_is_a_combined_stream_url() -> None:
    url = BinanceProtocol().url(["BTCUSDT", "ethusdt", "BTCUSDT"])
    assert url == "wss://stream.binance.com:9443/stream?streams=btcusdt@depth20@100ms/ethusdt@depth20@100ms"
    parts = urlsplit(url)
    assert parse_qs(parts.query)["streams"] == ["btcusdt@depth20@100ms/ethusdt@depth20@100ms"]


@pytest.mark.parametrize(
    ("depth", "speed", "stream"),
    [(5, "100ms", "bnbbtc@depth5@100ms"), (10, "1000ms", "bnbbtc@depth10"), (20, "1000ms", "bnbbtc@depth20")],
)
def test_stream_name_shape(depth: int, speed: str, stream: str) -> None:
    protocol = BinanceProtocol(depth=depth, speed=speed, url="ws://127.0.0.1:8765/")
    assert protocol.url(["BNBBTC"]) == f"ws://127.0.0.1:8765/stream?streams={stream}"
    assert protocol.stream_names(["bnbbtc"]) == [stream]


def test_subscribe_frames_are_empty_because_the_url_subscribes() -> None:
    assert BinanceProtocol().subscribe_frames(["BTCUSDT"]) == []


def test_subscribe_request() -> None:
    request = BinanceProtocol(depth=10).subscribe_request(["BTCUSDT", "bnbbtc"], 42)
    assert json.loads(request) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@depth10@100ms", "bnbbtc@depth10@100ms"],
        "id": 42,
    }
    with pytest.raises(ValueError, match="request_id"):
        BinanceProtocol().subscribe_request(["BTCUSDT"], -1)


def test_stream_limit_per_connection() -> None:
    protocol = BinanceProtocol()
    symbols = [f"SYM{i}USDT" for i in range(1025)]
    assert protocol.url(symbols[:1024]).count("@depth20@100ms") == 1024
    with pytest.raises(ValueError, match="1024"):
        protocol.url(symbols)
    with pytest.raises(ValueError, match="1024"):
        protocol.subscribe_request(symbols, 1)


def test_invalid_symbols_are_refused_before_connecting() -> None:
    protocol = BinanceProtocol()
    with pytest.raises(InvalidSymbolError):
        protocol.url(["BTCUSDT", "BTC/USDT"])
    with pytest.raises(ValueError, match="no symbols"):
        protocol.url([])
    with pytest.raises(TypeError):
        protocol.url("BTCUSDT")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 15},
        {"depth": 0},
        {"depth": "20"},
        {"speed": "250ms"},
        {"speed": "100"},
        {"url": "https://stream.binance.com"},
        {"max_symbols_per_connection": 1025},
        {"max_symbols_per_connection": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BinanceProtocol(**kwargs)


def test_satisfies_the_exchange_protocol() -> None:
    protocol: ExchangeProtocol = BinanceProtocol()
    assert protocol.name == "binance"
    assert protocol.max_symbols_per_connection == 1024


def test_parse_result_serializes() -> None:
    (snapshot,) = BinanceProtocol().parse(lines("binance-partial-depth-combined.txt")[0], 1.0)
    assert orjson.loads(orjson.dumps(snapshot.bids)) == [[86704.77, 4.67805], [86704.76, 0.00224]]


def test_a_book_with_more_levels_than_the_cap_is_a_bad_frame() -> None:
    """Was: an 80,000-level book was stored and served live."""
    huge = [[f"{100 + i}.0", "1.0"] for i in range(80_000)]
    with pytest.raises(BadFrame, match="more than 50 levels"):
        BinanceProtocol().parse(book_frame(huge, GOOD_ASKS), 1.0)
    small = BinanceProtocol(max_levels=1)
    with pytest.raises(BadFrame, match="more than 1 levels"):
        small.parse(book_frame(GOOD_BIDS, GOOD_ASKS), 1.0)  # the fast path defers to the cap as well
