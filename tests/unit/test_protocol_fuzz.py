"""Fuzzing both protocols: whatever arrives, parse() returns sane events or raises BadFrame, nothing else.

The inputs are random bytes and text, random JSON values, and mutations of the real frames in tests/data
(a key deleted, a value replaced by a random JSON value, the text truncated), which reach far deeper into
the decoders than random bytes do.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.captures import DATA

from client.layout import validate_symbol
from client.models import OrderBookSnapshot
from feeder.exchanges import Ack, BadFrame, BinanceProtocol, ErrorReply, ShutdownNotice, UpbitProtocol

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _received(path: Path, limit: int) -> list[str]:
    frames: list[str] = []
    for line in path.read_text().splitlines():
        head, sep, payload = line.partition(": ")
        if not sep or " " in head:
            continue
        frames.append(ast.literal_eval(payload).decode() if payload.startswith("b'") else payload)
    # the first frames of each kind are enough to reach every branch; keep the pool small
    by_kind: dict[str, list[str]] = {}
    for frame in frames:
        by_kind.setdefault(frame[:40], []).append(frame)
    return [f for group in by_kind.values() for f in group[:limit]]


def _frame_texts() -> list[tuple[str, str]]:
    """(exchange, frame text) for every real frame in the pool."""
    texts: list[tuple[str, str]] = []
    for path in sorted((DATA / "frames").iterdir()):
        exchange = path.name.split("-", 1)[0]
        if exchange not in ("upbit", "binance"):
            continue  # frames of exchanges with no protocol yet (issue 12)
        text = path.read_text().strip()
        texts += [(exchange, line) for line in (text.splitlines() if path.suffix == ".txt" else [text])]
    for exchange, name in (("upbit", "upbit-2021-04-17.ws.txt"), ("binance", "binance-2021-10-12.ws.txt")):
        texts += [(exchange, frame) for frame in _received(DATA / "recordings" / name, limit=2)]
    return texts


EXCHANGE_TEXTS = _frame_texts()
TEXTS = [text for _, text in EXCHANGE_TEXTS]
OBJECTS = [json.loads(t) for t in TEXTS]
PROTOCOLS = (UpbitProtocol(), BinanceProtocol())

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    # values that the decoders look at specifically
    | st.sampled_from(
        ["orderbook", "trade", "KRW-BTC", "krw-btc", "0", "-1", "1e999", "nan", "inf", " 1", "1_0"]
    )
    | st.sampled_from(
        ["error", "btcusdt@depth20", "btcusdt@depth5@100ms", "!serverShutdown", "serverShutdown", "UP"]
    )
    | st.sampled_from([0, -1, 0.0, -0.0, 1e308, 5e-324, 2**64, 2**63 - 1])
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


def check_events(events: list[Any], exchange: str) -> None:
    assert isinstance(events, list)
    for event in events:
        if isinstance(event, ErrorReply | ShutdownNotice):
            assert event.exchange == exchange
            if isinstance(event, ErrorReply):
                assert type(event.name) is str and type(event.message) is str
            continue
        if isinstance(event, Ack):
            continue
        snapshot = event
        assert isinstance(snapshot, OrderBookSnapshot)
        assert snapshot.exchange == exchange
        assert validate_symbol(snapshot.symbol) == snapshot.symbol
        assert type(snapshot.timestamp) is float and math.isfinite(snapshot.timestamp)
        assert type(snapshot.xid) is int
        for side in (snapshot.bids, snapshot.asks):
            assert type(side) is list
            for level in side:
                assert type(level) is tuple and len(level) == 2
                price, size = level
                assert type(price) is float and type(size) is float
                assert math.isfinite(price) and math.isfinite(size)
                assert price > 0.0 and size > 0.0  # zero-size levels are dropped, so > 0, not only >= 0


def feed(frame: bytes | str) -> None:
    """Give the frame to both protocols; only the documented exception type may escape."""
    for protocol in PROTOCOLS:
        try:
            events = protocol.parse(frame, recv_ts=1700000000.5)
        except BadFrame:
            continue
        check_events(events, protocol.name)


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON value, as a key/index path from the root."""
    found = [path]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += _paths(value, (*path, index))
    return found


def _mutate(obj: Any, data: st.DataObject) -> Any:
    paths = _paths(obj)
    path = data.draw(st.sampled_from(paths), label="path")
    if not path:
        return data.draw(json_values, label="new root")
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values, label="value")
    return obj


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(frame: bytes) -> None:
    feed(frame)


@FUZZ
@given(st.text(max_size=200))
def test_random_text(frame: str) -> None:
    feed(frame)


@FUZZ
@given(json_values)
def test_random_json(value: Any) -> None:
    feed(json.dumps(value))


@FUZZ
@given(st.data())
def test_mutated_real_frames(data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(OBJECTS) - 1), label="frame")
    obj = json.loads(json.dumps(OBJECTS[index]))  # a deep copy
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        obj = _mutate(obj, data)
    text = json.dumps(obj)
    feed(text)
    feed(text.encode())


@FUZZ
@given(st.sampled_from(TEXTS), st.data())
def test_truncated_real_frames(text: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(text)), label="cut")
    feed(text[:cut])
    feed(text.encode()[:cut])  # may also cut a multi-byte UTF-8 character in two


def test_unmutated_real_frames_parse() -> None:
    """The pool itself decodes: each frame gives events (books, replies) or [], never BadFrame."""
    protocols = {protocol.name: protocol for protocol in PROTOCOLS}
    books = 0
    for exchange, text in EXCHANGE_TEXTS:
        events = protocols[exchange].parse(text, 1.0)
        check_events(events, exchange)
        books += sum(1 for e in events if isinstance(e, OrderBookSnapshot))
    assert books >= 10
