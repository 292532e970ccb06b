"""`encode_book` (the per-book cost of every write) produces exactly what its straightforward version did.

`reference_encode_book` below is the straightforward encoding (every field formatted on its own, the message
dumped from a dict): the hash fields and the published message that the write script makes of
`encode_book`'s arguments must equal it byte for byte.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import InvalidSnapshotError
from client.layout import (
    MAX_TIMESTAMP,
    MAX_XID,
    EncodedBook,
    RedisLayout,
    encode_book,
    validate_writer_id,
    write_flow,
)
from client.layout.codec import _check_levels
from client.models import OrderBookSnapshot
from client.transport import run_flow

LAYOUT = RedisLayout()


def reference_encode_book(
    layout: RedisLayout,
    snapshot: OrderBookSnapshot,
    *,
    exchange: str,
    writer: str,
    heartbeat: bool,
    xid: int | None = None,
    recv_ts: float | None = None,
    validate: bool = True,
) -> tuple[str, int, dict[str, bytes | str], bytes]:
    """Key, ordering id, hash fields and message of a book's first write, the straightforward way.

    `heartbeat` says whether the writer keeps ``<prefix>:feeder:<writer>`` alive: readers then judge the book
    by that heartbeat, otherwise by ``max_age`` alone (books written directly by an engine's provider).
    `validate=False` is for the feeder, whose protocol code has already checked every level.
    """
    key = layout.book_key(exchange, snapshot.symbol)
    if validate:
        validate_writer_id(writer)
        bids = _check_levels(snapshot.bids, "bids")
        asks = _check_levels(snapshot.asks, "asks")
        if not isinstance(snapshot.timestamp, int | float) or not 0 <= snapshot.timestamp < MAX_TIMESTAMP:
            raise InvalidSnapshotError(
                f"timestamp must be epoch seconds in [0, {MAX_TIMESTAMP:.0e}), not {snapshot.timestamp!r}"
            )
    else:
        bids, asks = snapshot.bids, snapshot.asks
    if xid is None:
        xid = snapshot.xid if snapshot.xid is not None else round(snapshot.timestamp * 1000)
    if validate and not (isinstance(xid, int) and 0 <= xid < MAX_XID):
        raise InvalidSnapshotError(f"ordering id must be an integer in [0, 2**53), not {xid!r}")
    if recv_ts is None:
        recv_ts = snapshot.recv_ts if snapshot.recv_ts is not None else time.time()
    if validate and not (isinstance(recv_ts, int | float) and math.isfinite(recv_ts)):
        raise InvalidSnapshotError(f"receive time must be a finite number, not {recv_ts!r}")
    ts = float(snapshot.timestamp)
    bids_json = orjson.dumps(bids)
    asks_json = orjson.dumps(asks)
    bid = repr(bids[0][0]) if bids else ""
    ask = repr(asks[0][0]) if asks else ""
    fields: dict[str, bytes | str] = {
        "seq": "1", "exchange": exchange, "symbol": snapshot.symbol, "bids": bids_json, "asks": asks_json,
        "bid": bid, "ask": ask, "ts": repr(ts), "recv_ts": repr(float(recv_ts)), "xid": str(xid),
        "feeder": writer, "live": "1", "hb": "1" if heartbeat else "0",
        "holders": writer if heartbeat else "", "rts": RTS, "wts": WTS, "sim": "",
    }  # fmt: skip
    message = orjson.dumps(
        {
            "seq": 1,
            "rts": orjson.Fragment(RTS.encode()),
            "wts": orjson.Fragment(WTS.encode()),
            "holders": [writer] if heartbeat else [],
            "exchange": exchange,
            "symbol": snapshot.symbol,
            "ts": ts,
            "recv_ts": recv_ts,
            "xid": xid,
            "feeder": writer,
            "live": True,
            "hb": heartbeat,
            "bid": bids[0][0] if bids else None,
            "ask": asks[0][0] if asks else None,
            "bids": orjson.Fragment(bids_json),
            "asks": orjson.Fragment(asks_json),
        }
    )
    return key, xid, fields, message


RTS = "1700000000.125"  # the receive time on Redis's clock, which the script computes
WTS = "1700000000.127250"  # the write time on Redis's clock (its TIME when the script ran)


def written(encoded: EncodedBook) -> tuple[str, int, dict[str, bytes | str], bytes]:
    """What the write script stores and publishes for `encoded` as the key's first write."""
    holders = encoded.writer if encoded.args[11] == "1" else ""
    return (
        encoded.key,
        encoded.xid,
        encoded.hash_fields(1, RTS, WTS, holders),
        encoded.message(1, RTS, WTS, holders),
    )


positive = st.one_of(
    st.floats(min_value=5e-324, max_value=1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 1e-05, 1.234e-05, 86704.77, 137001000.0]
    ),
    st.integers(min_value=1, max_value=10**12),
)
levels = st.lists(st.tuples(positive, positive), max_size=4)
times = st.one_of(
    st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True, allow_nan=False),
    st.integers(min_value=0, max_value=10**11),
)


@settings(max_examples=400, deadline=None)
@given(
    bids=levels,
    asks=levels,
    timestamp=times,
    recv_ts=st.one_of(st.none(), times),
    xid=st.one_of(st.none(), st.integers(min_value=0, max_value=MAX_XID - 1)),
    heartbeat=st.booleans(),
    validate=st.booleans(),
    writer=st.sampled_from(["feeder-1", "client:vm:7778", "a.b@c"]),
    exchange=st.sampled_from(["upbit", "binance"]),
)
def test_encode_book_is_unchanged(
    bids: list[tuple[float, float]],
    asks: list[tuple[float, float]],
    timestamp: float,
    recv_ts: float | None,
    xid: int | None,
    heartbeat: bool,
    validate: bool,
    writer: str,
    exchange: str,
) -> None:
    snapshot = OrderBookSnapshot(
        "KRW-BTC", timestamp, bids, asks, xid=xid, recv_ts=recv_ts if recv_ts else 1.5
    )
    kwargs: dict[str, Any] = {
        "exchange": exchange,
        "writer": writer,
        "heartbeat": heartbeat,
        "validate": validate,
    }
    assert written(encode_book(LAYOUT, snapshot, **kwargs)) == reference_encode_book(
        LAYOUT, snapshot, **kwargs
    )
    assert written(
        encode_book(LAYOUT, snapshot, recv_ts=recv_ts, xid=xid, **kwargs)
    ) == reference_encode_book(LAYOUT, snapshot, recv_ts=recv_ts, xid=xid, **kwargs)


def test_message_is_the_documented_json() -> None:
    book = OrderBookSnapshot(
        "BTCUSDT", 1746601573.804, [(86704.77, 4.67805)], [], xid=7, recv_ts=1746601573.9
    )
    encoded = encode_book(LAYOUT, book, exchange="binance", writer="f-1", heartbeat=True, validate=False)
    message = orjson.loads(encoded.message(1, RTS, WTS, "f-1,f-2"))
    assert list(message) == [
        "seq", "rts", "wts", "holders", "exchange", "symbol", "ts", "recv_ts", "xid", "feeder", "live", "hb", "bid", "ask",
        "bids", "asks",
    ]  # fmt: skip
    assert message["bid"] == 86704.77 and message["ask"] is None and message["asks"] == []
    assert message["holders"] == ["f-1", "f-2"] and message["rts"] == float(RTS)
    assert message["wts"] == float(WTS)
    fields = encoded.hash_fields(1, RTS, WTS, "f-1")
    assert fields["bid"] == "86704.77" and fields["ask"] == "" and fields["ts"] == "1746601573.804"


def test_validation_still_refuses_bad_books() -> None:
    bad = OrderBookSnapshot("KRW-BTC", 1.0, [(math.nan, 1.0)], [])
    with pytest.raises(InvalidSnapshotError):
        encode_book(LAYOUT, bad, exchange="upbit", writer="w", heartbeat=False)


def test_script_stores_and_publishes_what_encoded_book_says(backend: Any) -> None:
    """`hash_fields` and `message` mirror the Lua script: checked against the script itself."""
    client = backend.sync
    pubsub = client.pubsub()
    key = LAYOUT.book_key("binance", "BTCUSDT")
    pubsub.subscribe(key)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        for seq, (bids, asks) in enumerate(
            [([(86704.77, 4.67805), (86704.5, 1e-05)], [(86705.0, 0.5)]), ([], [(1.234e-05, 137001000.0)])],
            start=1,
        ):
            book = OrderBookSnapshot(
                "BTCUSDT", 1746601573.804 + seq, bids, asks, xid=seq, recv_ts=1746601574.5
            )
            encoded = encode_book(LAYOUT, book, exchange="binance", writer="f-1", heartbeat=True)
            assert run_flow(client, write_flow(LAYOUT, [encoded])) == [seq]
            stored = client.hgetall(key)
            rts = stored[b"rts"].decode()  # Redis's clock at the write, less the writer's age of the book
            received_ago = time.time() - float(rts) - (time.time() - book.recv_ts)  # type: ignore[operator]
            assert abs(received_ago) < 5  # the receive time on Redis's clock, not the time of the write
            wts = stored[b"wts"].decode()  # Redis's clock at the write itself
            assert float(wts) >= float(rts) and abs(float(wts) - time.time()) < 5
            want = {
                k.encode(): v if isinstance(v, bytes) else v.encode()
                for k, v in encoded.hash_fields(seq, rts, wts, "f-1").items()
            }
            assert stored == want
            message = pubsub.get_message(timeout=5)
            assert message is not None and message["data"] == encoded.message(seq, rts, wts, "f-1")
    finally:
        pubsub.close()
