"""`book_sides` (the C `units_to_sides`, feeder/exchanges/_units.c) gives exactly the book `parse` gives.

The writer stores what `book_sides` returns instead of encoding `parse`'s floats, so the two must agree byte
for byte: each side's text equal to ``orjson.dumps`` of `parse`'s levels, the best prices, symbol, time and
ordering id equal; and `book_sides` must return None for every frame `parse` does not decode the same way
(the general path's frames, bad frames). Checked on captured frames in both spellings, on Bithumb's, on
generated books whose numbers are written every way the exchanges write them, on near misses and on
byte-level mutations. A build without the extension fails here: CI must run the fast path it ships.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_fastpath import (
    BINANCE,
    INTERESTING,
    NEAR_MISSES_BINANCE,
    NEAR_MISSES_UPBIT,
    UPBIT_DEFAULT,
    UPBIT_SIMPLE,
    java,
)

from client.layout import RedisLayout, encode_book, encode_book_sides
from client.models import OrderBookSnapshot
from feeder.exchanges import BadFrame, BinanceProtocol, UpbitProtocol
from feeder.exchanges.bithumb import BithumbProtocol
from feeder.exchanges.units_json import AVAILABLE

RECV = 1700000000.5


def test_the_extension_is_built_where_the_tests_run() -> None:
    assert AVAILABLE, "feeder.exchanges._units is not built: pip install -e . with a C compiler"


def parsed(protocol: Any, frame: bytes) -> OrderBookSnapshot | None:
    try:
        events = protocol.parse(frame, RECV)
    except BadFrame:
        return None
    books = [e for e in events if isinstance(e, OrderBookSnapshot)]
    return books[0] if len(books) == 1 else None


def check(make: Any, frame: bytes, **kwargs: Any) -> bool:
    """book_sides agrees with parse on `frame`; True when it took the frame."""
    protocol = make(**kwargs)
    book = parsed(
        protocol, frame
    )  # also teaches the protocol the frame's code, as the connection's parse does
    sides = protocol.book_sides(frame, RECV)
    if sides is None:
        return False
    assert book is not None, f"book_sides took a frame parse refuses: {frame[:120]!r}"
    assert protocol._parse_fast(frame, RECV) is not None, "book_sides took a frame the fast path does not"
    assert sides.asks_json == orjson.dumps(book.asks), (sides.asks_json[:200], orjson.dumps(book.asks)[:200])
    assert sides.bids_json == orjson.dumps(book.bids), (sides.bids_json[:200], orjson.dumps(book.bids)[:200])
    assert (sides.best_ask, sides.best_bid) == (book.asks[0][0], book.bids[0][0])
    assert type(sides.best_ask) is float and type(sides.best_bid) is float
    assert (sides.symbol, sides.timestamp, sides.xid, sides.recv_ts) == (
        book.symbol,
        book.timestamp,
        book.xid,
        RECV,
    )
    return True


def test_captured_frames_in_both_spellings() -> None:
    taken = sum(check(UpbitProtocol, f) for f in UPBIT_SIMPLE + UPBIT_DEFAULT)
    assert taken >= 0.95 * len(UPBIT_SIMPLE + UPBIT_DEFAULT), f"only {taken} frames took the C path"


def bithumb(frame: bytes) -> bytes:
    """A captured Upbit SIMPLE book in Bithumb's DEFAULT spelling."""
    obj = orjson.loads(frame)
    units = ",".join(
        f'{{"ask_price":{u["ap"]!r},"bid_price":{u["bp"]!r},"ask_size":{u["as"]!r},"bid_size":{u["bs"]!r}}}'
        for u in obj["obu"]
    )
    return (
        f'{{"type":"orderbook","code":"{obj["cd"]}","total_ask_size":1.5,"total_bid_size":2.5,'
        f'"orderbook_units":[{units}],"timestamp":{obj["tms"]},"stream_type":"REALTIME"}}'
    ).encode()


@pytest.mark.parametrize("depth", [1, 5, 15, 30])
def test_a_depth_cuts_both_sides_as_parse_does(depth: int) -> None:
    def protocol() -> BithumbProtocol:
        return BithumbProtocol(depth=depth)

    frames = [bithumb(f) for f in UPBIT_SIMPLE[:20]]
    assert all(check(protocol, f) for f in frames)


@pytest.mark.parametrize("frame", NEAR_MISSES_UPBIT)
def test_near_misses(frame: bytes) -> None:
    check(UpbitProtocol, frame)


def test_a_frame_of_an_unknown_code_or_not_bytes_is_left_to_parse() -> None:
    protocol = UpbitProtocol()
    assert protocol.book_sides(UPBIT_SIMPLE[0], RECV) is None  # its code not learnt yet
    assert protocol.book_sides(bytearray(UPBIT_SIMPLE[0]), RECV) is None  # type: ignore[arg-type]


# ---- generated books: the numbers in every spelling the exchanges use ----------------------------------------
def spellings(value: float) -> st.SearchStrategy[str]:
    text = repr(value)
    options = [java(value)]
    if "e" not in text:
        options += [text, text + "000"]  # trailing zeros
        if text.endswith(".0"):
            options.append(text[:-2])  # an integer (Bithumb's long spelling allows it)
    if "E" in options[0]:
        mantissa, _, exp = options[0].partition("E")
        options.append(f"{mantissa}E+{exp}" if not exp.startswith("-") else options[0])
    return st.sampled_from(options)


# prices and sizes as exchanges have them: a few significant digits at every magnitude, and full doubles
NUMBERS = st.one_of(
    st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(1, 99999), st.integers(-12, 12)),
    st.floats(min_value=1e-6, max_value=1e17, allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-4, 9.9999e-5, 1e15, 9999999999999998.0, 1e16, 0.1, 0.30000000000000004, 123456789.0]),
)


@st.composite
def upbit_frames(draw: st.DrawFn) -> tuple[Any, bytes]:
    long_keys = draw(st.booleans())
    make = draw(st.sampled_from([UpbitProtocol, BithumbProtocol])) if long_keys else UpbitProtocol
    units = draw(st.integers(1, 30))
    keys = ("ask_price", "bid_price", "ask_size", "bid_size") if long_keys else ("ap", "bp", "as", "bs")
    parts = []
    for _ in range(units):
        values = [draw(spellings(draw(NUMBERS))) for _ in range(4)]
        parts.append("{" + ",".join(f'"{k}":{v}' for k, v in zip(keys, values, strict=True)) + "}")
    body = "[" + ",".join(parts) + "]"
    if make is BithumbProtocol:
        frame = (
            '{"type":"orderbook","code":"KRW-BTC","total_ask_size":1.5,"total_bid_size":2.5,'
            f'"orderbook_units":{body},"timestamp":1700000000123,"stream_type":"REALTIME"}}'
        )
    elif long_keys:
        frame = (
            '{"type":"orderbook","code":"KRW-BTC","timestamp":1700000000123,"total_ask_size":1.5,'
            f'"total_bid_size":2.5,"orderbook_units":{body},"stream_type":"REALTIME","level":0}}'
        )
    else:
        frame = f'{{"ty":"orderbook","cd":"KRW-BTC","tms":1700000000123,"tas":1.5,"tbs":2.5,"obu":{body},"st":"REALTIME"}}'
    return make, frame.encode()


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(upbit_frames())
def test_generated_books(case: tuple[Any, bytes]) -> None:
    make, frame = case
    check(make, frame)


def test_generated_books_mostly_take_the_c_path() -> None:
    """The property above must not pass by the C path declining everything: books of real-looking numbers
    (a few significant digits, Java's spelling) are taken."""
    rng = random.Random(11)
    taken = 0
    for _ in range(200):
        values = [java(float(f"{rng.randint(1, 99999)}e{rng.randint(-5, 9)}")) for _ in range(4 * 15)]
        units = ",".join(
            '{{"ap":{},"bp":{},"as":{},"bs":{}}}'.format(*values[i : i + 4]) for i in range(0, len(values), 4)
        )
        frame = f'{{"ty":"orderbook","cd":"KRW-BTC","tms":1700000000123,"tas":1.5,"tbs":2.5,"obu":[{units}]}}'
        taken += check(UpbitProtocol, frame.encode())
    assert taken == 200, f"{taken} of 200 books took the C path"


def mutated(data: st.DataObject, frames: list[bytes]) -> bytes:
    """One of `frames` with one to three bytes inserted, deleted or replaced where it matters."""
    frame = bytearray(data.draw(st.sampled_from(frames), label="frame"))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        position = data.draw(st.integers(min_value=0, max_value=len(frame) - 1), label="position")
        char = data.draw(st.sampled_from(INTERESTING), label="char")
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="kind")
        if kind == "insert":
            frame.insert(position, char)
        elif kind == "delete":
            del frame[position]
        else:
            frame[position] = char
    return bytes(frame)


@FUZZ
@given(st.data())
def test_mutated_frames(data: st.DataObject) -> None:
    check(UpbitProtocol, mutated(data, UPBIT_SIMPLE[:5] + UPBIT_DEFAULT[:3]))


# ---- the writer's encoding of the sides ---------------------------------------------------------------------
def test_encode_book_sides_is_encode_book_of_the_parsed_book() -> None:
    layout = RedisLayout()
    for frame in UPBIT_SIMPLE[:30] + UPBIT_DEFAULT[:10]:
        protocol = UpbitProtocol()
        book = parsed(protocol, frame)
        sides = protocol.book_sides(frame, RECV)
        assert book is not None and sides is not None
        common = {
            "exchange": "upbit",
            "writer": "w1",
            "heartbeat": True,
            "time_ordered": True,
            "simulated": True,
        }
        now = time.time()
        a = encode_book(layout, book, validate=False, **common)
        b = encode_book_sides(
            layout, symbol=sides.symbol, timestamp=sides.timestamp, xid=sides.xid, recv_ts=sides.recv_ts,
            bids_json=sides.bids_json, asks_json=sides.asks_json, best_bid=sides.best_bid,
            best_ask=sides.best_ask, **common,
        )  # fmt: skip
        assert time.time() - now < 1  # the one field that depends on the clock: the age of the book in ms
        age = 13
        assert (a.key, a.xid, a.writer) == (b.key, b.xid, b.writer)
        assert a.args[:age] + a.args[age + 1 :] == b.args[:age] + b.args[age + 1 :]


def test_without_the_extension_every_frame_is_left_to_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A feeder installed without a compiler: book_sides declines, and the writer decodes with parse."""
    import feeder.exchanges.upbit as upbit

    monkeypatch.setattr(upbit, "units_to_sides", None)
    protocol = UpbitProtocol()
    assert parsed(protocol, UPBIT_SIMPLE[0]) is not None
    assert protocol.book_sides(UPBIT_SIMPLE[0], RECV) is None


# ---- Binance partial books ----------------------------------------------------------------------------------
def binance_frame(bids: list[tuple[str, str]], asks: list[tuple[str, str]], update_id: int = 7) -> bytes:
    def side(levels: list[tuple[str, str]]) -> str:
        return "[" + ",".join(f'["{p}","{q}"]' for p, q in levels) + "]"

    return (
        f'{{"stream":"btcusdt@depth20@100ms","data":{{"lastUpdateId":{update_id},"bids":{side(bids)},'
        f'"asks":{side(asks)}}}}}'
    ).encode()


def test_binance_captured_frames_and_near_misses() -> None:
    frames = [f.encode() if isinstance(f, str) else f for f in BINANCE]
    taken = sum(check(BinanceProtocol, f) for f in frames)
    assert taken >= 3, f"only {taken} of {len(frames)} captured Binance frames took the C path"
    for frame in NEAR_MISSES_BINANCE:
        check(BinanceProtocol, frame.encode())


def binance_number(value: float) -> st.SearchStrategy[str]:
    """As Binance writes numbers: a fixed number of decimals (``"100.50000000"``), or plain repr."""
    options = [f"{value:.8f}", f"{value:.2f}", repr(value)]
    return st.sampled_from([o for o in options if "e" not in o and "inf" not in o])


@FUZZ
@given(st.data())
def test_binance_generated_books(data: st.DataObject) -> None:
    def levels() -> list[tuple[str, str]]:
        count = data.draw(st.integers(1, 20))
        return [
            (data.draw(binance_number(data.draw(NUMBERS))), data.draw(binance_number(data.draw(NUMBERS))))
            for _ in range(count)
        ]

    check(BinanceProtocol, binance_frame(levels(), levels(), data.draw(st.integers(0, 2**53))))


def test_binance_generated_books_mostly_take_the_c_path() -> None:
    rng = random.Random(5)
    taken = 0
    for _ in range(100):
        side = [(f"{rng.uniform(1, 90000):.2f}", f"{rng.uniform(0.001, 50):.8f}") for _ in range(20)]
        taken += check(BinanceProtocol, binance_frame(side, side[::-1]))
    assert taken == 100


@FUZZ
@given(st.data())
def test_binance_mutated_frames(data: st.DataObject) -> None:
    check(BinanceProtocol, mutated(data, [f.encode() if isinstance(f, str) else f for f in BINANCE[:5]]))


def test_a_cap_above_what_the_c_path_writes_declines_bigger_books_instead_of_failing() -> None:
    """MD_MAX_LEVELS has no upper bound: books over the C path's 1000 levels are left to parse."""
    from feeder.exchanges.units_json import pairs_to_sides, units_to_sides

    assert units_to_sides is not None and pairs_to_sides is not None
    unit = b'{"ap":2.0,"bp":1.0,"as":1.0,"bs":1.0}'
    keys = (b"ap", b"bp", b"as", b"bs")
    assert units_to_sides(b"[" + b",".join([unit] * 1001) + b"]", keys, False, 5000, 0) is None
    taken = units_to_sides(b"[" + b",".join([unit] * 1000) + b"]", keys, False, 5000, 0)
    assert taken is not None and taken[4] == 1000
    side = b"[" + b",".join([b'["1.0","1.0"]'] * 1001) + b"]"
    assert pairs_to_sides(side + b',"asks":' + side + b"}}", 5000) is None
    with pytest.raises(ValueError, match="at least 1"):
        units_to_sides(b"[" + unit + b"]", keys, False, 0, 0)
