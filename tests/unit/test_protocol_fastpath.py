"""The protocols' fast paths (frames of the usual shape) decide exactly as the general path does.

Both protocols first try to read a frame of the exact shape the exchange writes by deleting its structure and
parsing only the numbers (see `_parse_fast` in each module). That is sound only if every other frame falls
through to the general path: these tests compare the two on the real frames, on generated frames, on
hand-made near misses, and on byte-level mutations of real frames (a character inserted, deleted or replaced
where it matters: quotes, brackets, digits, signs...).
"""

from __future__ import annotations

import ast
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.captures import DATA

from client.models import OrderBookSnapshot
from feeder.exchanges import BadFrame, BinanceProtocol, UpbitProtocol


def _recorded(name: str) -> list[bytes]:
    frames: list[bytes] = []
    for line in (DATA / "recordings" / name).read_text().splitlines():
        head, sep, payload = line.partition(": ")
        if not sep or " " in head:
            continue
        frames.append(ast.literal_eval(payload) if payload.startswith("b'") else payload.encode())
    return frames


UPBIT_SIMPLE = [f for f in _recorded("upbit-2021-04-17.ws.txt") if b'"ty":"orderbook"' in f]


def java(value: float) -> str:
    """Java's Double.toString, as Upbit's serializer writes numbers (1.16539E8, 1.0E-4)."""
    if 1e-3 <= value < 1e7:
        return repr(value)
    _, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    return f"{mantissa[0]}.{mantissa[1:] or '0'}E{len(digits) - 1 + exponent}"


def _upbit_default(frame: bytes) -> bytes:
    """The same book in the DEFAULT spelling, numbers as Upbit's Java serializer writes them (1.16539E8)."""

    obj = json.loads(frame)
    units = ",".join(
        f'{{"ask_price":{java(u["ap"])},"bid_price":{java(u["bp"])},"ask_size":{java(u["as"])},'
        f'"bid_size":{java(u["bs"])}}}'
        for u in obj["obu"]
    )
    return (
        f'{{"type":"orderbook","code":"{obj["cd"]}","timestamp":{obj["tms"]},"total_ask_size":{java(obj["tas"])},'
        f'"total_bid_size":{java(obj["tbs"])},"orderbook_units":[{units}],"stream_type":"{obj["st"]}","level":0}}'
    ).encode()


UPBIT_DEFAULT = [_upbit_default(f) for f in UPBIT_SIMPLE[:20]]


def _binance(symbol: str, update_id: int, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> str:
    data = {"lastUpdateId": update_id, "bids": [list(b) for b in bids], "asks": [list(a) for a in asks]}
    return json.dumps({"stream": f"{symbol}@depth20@100ms", "data": data}, separators=(",", ":"))


BINANCE = [
    _binance(
        "btcusdt",
        100530416202 + i,
        [(f"{86704.77 - j * 0.01 - i:.8f}", f"{0.001 * (j + 1) + i:.8f}") for j in range(20)],
        [(f"{86704.78 + j * 0.01 + i:.8f}", f"{0.5 + j:.8f}") for j in range(20)],
    )
    for i in range(5)
] + [
    line
    for line in (DATA / "frames" / "binance-partial-depth-combined.txt").read_text().splitlines()
    if line.strip()
]


def _fast_disabled(protocol: Any) -> Any:
    protocol._parse_fast = lambda frame, recv_ts: None
    return protocol


def outcome(protocol: Any, frame: bytes | str) -> tuple[str, Any]:
    """What parse() does with the frame: its events, books with every field, or the exception's type and text."""
    try:
        events = protocol.parse(frame, 1700000000.5)
    except BadFrame as exc:
        return "raised", (type(exc).__name__, str(exc))
    return "events", [
        (
            s.symbol,
            s.timestamp,
            s.bids,
            s.asks,
            s.exchange,
            s.xid,
            s.recv_ts,
            [type(x) for x in s.bids + s.asks],
        )
        if isinstance(s, OrderBookSnapshot)
        else s
        for s in events
    ]


def assert_same(make: Any, frame: bytes | str) -> None:
    assert outcome(make(), frame) == outcome(_fast_disabled(make()), frame)


def test_real_and_generated_frames_take_the_fast_path_and_agree() -> None:
    for make, frames in ((UpbitProtocol, UPBIT_SIMPLE + UPBIT_DEFAULT), (BinanceProtocol, BINANCE[:5])):
        for frame in frames:
            protocol = make()
            fast = protocol._parse_fast(frame, 1700000000.5)
            assert fast is not None, frame[:80]  # the usual shape is recognised...
            assert_same(make, frame)  # ...and decoded exactly as the general path decodes it
            assert all(type(level) is tuple for level in fast.bids + fast.asks)
    for frame in BINANCE[5:]:  # the documented frames (some numbers without a decimal point)
        assert_same(BinanceProtocol, frame)


def test_text_bytes_bytearray_and_memoryview_agree() -> None:
    for make, frame in ((UpbitProtocol, UPBIT_SIMPLE[0]), (BinanceProtocol, BINANCE[0].encode())):
        expected = outcome(make(), frame)
        assert expected[0] == "events"
        for variant in (frame.decode(), bytearray(frame), memoryview(frame)):
            assert outcome(make(), variant) == expected  # type: ignore[arg-type]


def test_text_that_is_not_utf8_and_non_frames_are_bad_frames_not_crashes() -> None:
    for make in (UpbitProtocol, BinanceProtocol):
        with pytest.raises(BadFrame, match="not JSON"):
            make().parse('{"a":"\ud800"}', 1.0)
        assert_same(make, '{"a":"\ud800"}')
        for not_a_frame in (10**12, None, 3.5):  # not bytes-like (bytes(10**12) would allocate a terabyte)
            with pytest.raises(BadFrame, match="not JSON"):
                make().parse(not_a_frame, 1.0)  # type: ignore[arg-type]


GOOD_BINANCE = '{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":7,"bids":[["100.5","1.25"]],"asks":[["100.6","0.5"]]}}'

NEAR_MISSES_BINANCE = [
    GOOD_BINANCE.replace('["100.5","1.25"]', '["100.5",1.25]'),  # a number, not a string
    GOOD_BINANCE.replace('["100.5","1.25"]', '["100.5","1.25""]'),  # stray quote
    GOOD_BINANCE.replace('"bids":[["100.5","1.25"]]', '"bids":["[100.5","1.25]"]'),  # strings with brackets
    GOOD_BINANCE.replace('"1.25"', '"1.25",""'),
    GOOD_BINANCE.replace('"1.25"', '"0.00000000"'),  # zero size: dropped
    GOOD_BINANCE.replace('"100.5"', '"0.0"'),  # zero price: bad
    GOOD_BINANCE.replace('"100.5"', '"-100.5"'),
    GOOD_BINANCE.replace('"100.5"', '"01.5"'),
    GOOD_BINANCE.replace('"100.5"', '".5"'),
    GOOD_BINANCE.replace('"100.5"', '"5."'),
    GOOD_BINANCE.replace('"100.5"', '"1.2.3"'),
    GOOD_BINANCE.replace('"100.5"', '"100"'),  # no decimal point: general path
    GOOD_BINANCE.replace('"100.5"', '"1e5"'),
    GOOD_BINANCE.replace('"100.5"', '" 100.5"'),
    GOOD_BINANCE.replace('"100.5"', '"1' + "0" * 400 + '.0"'),  # overflows to infinity
    GOOD_BINANCE.replace('"1.25"', '"0.' + "0" * 400 + '1"'),  # underflows to zero
    GOOD_BINANCE.replace('"1.25"', '"1.25\\u0030"'),  # an escape
    GOOD_BINANCE.replace('"asks":[["100.6","0.5"]]', '"asks":[]'),  # an empty side: general path
    GOOD_BINANCE.replace('"lastUpdateId":7', '"lastUpdateId":07'),
    GOOD_BINANCE.replace('"lastUpdateId":7', '"lastUpdateId":' + "9" * 25),
    GOOD_BINANCE.replace(',"asks"', ',"E":5,"asks"'),
    GOOD_BINANCE.replace("}}", "} }"),
    GOOD_BINANCE.replace("}}", "}}}"),
    GOOD_BINANCE.replace("}}", ',"bids":[]}}'),  # a second "bids": the last one wins
    GOOD_BINANCE.replace("btcusdt", "btc$usdt"),
    GOOD_BINANCE.replace("btcusdt", "b" * 70),
    GOOD_BINANCE[:-1],
    GOOD_BINANCE + " ",
]

GOOD_UPBIT = (
    b'{"ty":"orderbook","cd":"KRW-BTC","tms":1700000000123,"tas":1.5,"tbs":2.5,'
    b'"obu":[{"ap":101.0,"bp":100.0,"as":0.5,"bs":1.5}],"st":"REALTIME"}'
)

NEAR_MISSES_UPBIT = [
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":101'),  # an integer: general path
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":"101.0"'),  # a string
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":-101.0'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":1.01E2'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":1.01E-2'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":1.01E999'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":1.-01'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":0.0'),
    GOOD_UPBIT.replace(b'"bs":1.5', b'"bs":0.0'),
    GOOD_UPBIT.replace(b'"ap":101.0,"bp":100.0,"as":0.5,"bs":1.5', b'"ap":0.0,"bp":100.0,"as":0.0,"bs":1.5'),
    GOOD_UPBIT.replace(b'"ap":101.0', b'"ap":01.0'),
    GOOD_UPBIT.replace(b'"ap":101.0,"bp":100.0', b'"bp":100.0,"ap":101.0'),  # other key order
    GOOD_UPBIT.replace(b'"bp":100.0', b'"ap":100.0'),  # duplicate key, "bp" missing
    GOOD_UPBIT.replace(b'"bs":1.5}', b'"bs":1.5},{"ap":1.0,"bp":1.0}'),
    GOOD_UPBIT.replace(b'"bs":1.5}', b'"bs":1.5,"x":1}'),
    GOOD_UPBIT.replace(b'"obu":[', b'"obu":[ '),
    GOOD_UPBIT.replace(b'"tas":1.5', b'"tas":01.5'),
    GOOD_UPBIT.replace(b'"tas":1.5', b'"tas":1.5E999'),
    GOOD_UPBIT.replace(b'"tms":1700000000123', b'"tms":0'),
    GOOD_UPBIT.replace(b'"tms":1700000000123', b'"tms":1700000000123.5'),
    GOOD_UPBIT.replace(b'"cd":"KRW-BTC"', b'"cd":"krw-btc"'),
    GOOD_UPBIT.replace(b'"cd":"KRW-BTC"', b'"cd":"KRW-BTC.15"'),
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"st":"REALTIME","lv":0'),
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"lv":10000,"st":"REALTIME"'),
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"st":"REALTIME","lv":01'),
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"st":"REALTIME","obu":5'),  # a second "obu": the last one wins
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"st":"REALTIME","ty":"trade"'),
    GOOD_UPBIT.replace(b'"st":"REALTIME"', b'"st":"RE\\u0041LTIME"'),
    GOOD_UPBIT.replace(b'"ty":"orderbook"', b'"ty":"orderbook","type":"trade"'),
    GOOD_UPBIT.replace(b"}]", b"}]]"),
    GOOD_UPBIT.replace(b"}]", b"},]"),
    GOOD_UPBIT[:-1],
    GOOD_UPBIT + b"}",
    b"[" + GOOD_UPBIT + b"]",  # SIMPLE_LIST: general path
]


def test_good_frames_take_the_fast_path() -> None:
    assert BinanceProtocol()._parse_fast(GOOD_BINANCE, 1.0) is not None
    assert UpbitProtocol()._parse_fast(GOOD_UPBIT, 1.0) is not None
    assert_same(BinanceProtocol, GOOD_BINANCE)
    assert_same(UpbitProtocol, GOOD_UPBIT)


@pytest.mark.parametrize("frame", NEAR_MISSES_BINANCE)
def test_binance_near_misses_decide_as_the_general_path(frame: str) -> None:
    assert_same(BinanceProtocol, frame)
    assert_same(BinanceProtocol, frame.encode())


@pytest.mark.parametrize("frame", NEAR_MISSES_UPBIT)
def test_upbit_near_misses_decide_as_the_general_path(frame: bytes) -> None:
    assert_same(UpbitProtocol, frame)


# ---- byte-level mutations of real frames ------------------------------------------------------------------
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INTERESTING = [*b'"[]{},:.0123456789-+eE \\', ord("a"), ord("s")]
POOL: list[tuple[Any, bytes]] = [(UpbitProtocol, f) for f in UPBIT_SIMPLE[:5] + UPBIT_DEFAULT[:3]] + [
    (BinanceProtocol, f.encode()) for f in BINANCE[:3]
]


@FUZZ
@given(st.data())
def test_mutated_frames_decide_as_the_general_path(data: st.DataObject) -> None:
    make, frame = data.draw(st.sampled_from(POOL), label="frame")
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
        kind = data.draw(st.sampled_from(["insert", "delete", "replace", "swap"]), label="kind")
        char = data.draw(st.sampled_from(INTERESTING), label="char")
        if kind == "insert":
            raw.insert(position, char)
        elif kind == "delete":
            del raw[position]
        elif kind == "replace":
            raw[position] = char
        elif position + 1 < len(raw):
            raw[position], raw[position + 1] = raw[position + 1], raw[position]
    assert_same(make, bytes(raw))


# ---- book_symbol: the cheap look at a frame's head that lets the connection defer decoding -------------------
def test_book_symbol_names_a_known_symbol_from_the_head_only() -> None:
    """None until `parse` has seen the symbol (so every symbol is validated once), the symbol afterwards; None
    for anything that must be parsed now (control frames, text, other formats). A head of the right shape is
    enough: the body is `parse`'s to judge, later."""
    binance = BinanceProtocol()
    frame = GOOD_BINANCE.encode()
    assert binance.book_symbol(frame) is None  # stream not routed yet
    assert [b.symbol for b in binance.parse(frame, 1.0)] == ["BTCUSDT"]
    assert binance.book_symbol(frame) == "BTCUSDT"
    broken = frame.replace(b'"100.5"', b'"oops"')
    assert binance.book_symbol(broken) == "BTCUSDT"
    with pytest.raises(BadFrame):
        binance.parse(broken, 1.0)
    for other in (
        GOOD_BINANCE,  # text: only bytes are deferred
        b'{"result":null,"id":1}',
        b'{"stream":"btcusdt@bookTicker","data":{"u":1}}',
        GOOD_BINANCE.replace("btcusdt", "ethusdt").encode(),  # another stream, not routed yet
        b"garbage",
    ):
        assert binance.book_symbol(other) is None  # type: ignore[arg-type]

    upbit = UpbitProtocol()
    simple, default = UPBIT_SIMPLE[0], UPBIT_DEFAULT[0]
    code = json.loads(simple)["cd"]
    assert upbit.book_symbol(simple) is None and upbit.book_symbol(default) is None
    upbit.parse(simple, 1.0)
    assert upbit.book_symbol(simple) == code and upbit.book_symbol(default) == code
    for other in (
        b"[" + simple + b"]",
        simple.decode(),
        b'{"status":"UP"}',
        b'{"ty":"trade","cd":"KRW-BTC"}',
    ):
        assert upbit.book_symbol(other) is None  # type: ignore[arg-type]
