"""The book codec: a snapshot encoded for the write script, and decoded back from a hash or a message.

Both directions live here, beside each other, so the hash fields, the published message and the script's
arguments cannot drift apart: `EncodedBook.hash_fields` and `EncodedBook.message` spell out what the script
stores and publishes (tests hold them against real Redis), `decode_book_fields` reads the hash back (the
``HMGET`` of `READ_FIELDS`), and `decode_message_head` / `decode_message_book` read a channel's message.
"""

from __future__ import annotations

import math
import operator
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from client.errors import CorruptSnapshotError, InvalidSnapshotError
from client.layout.names import WRITER_RE, RedisLayout, validate_writer_id
from client.layout.scripts import WRITE_BOOK
from client.models import Level, OrderBookSnapshot

Command = tuple[Any, ...]

# Ordering ids are compared as Lua numbers (doubles): beyond 2**53 they would no longer be exact.
MAX_XID = 2**53
MAX_TIMESTAMP = 1e12  # epoch seconds; its milliseconds stay below MAX_XID
# A time-based ordering id (Upbit's timestamp, a legacy write's) may lead Redis's clock by this much at most:
# one further ahead would outrank every later book of the key until the clock caught up.
TIME_ID_LEAD_MS = 10_000
# Levels per side a stored book may hold: beyond this it is not a book an exchange sent (readers: corrupt).
MAX_LEVELS = 1000
# Bytes of one side's JSON a reader decodes at most (a hand-made hash must not stall a reader).
MAX_SIDE_BYTES = 256 * 1024


# --------------------------------------------------------------------------------------------- encoding
@dataclass(
    slots=True
)  # not frozen: a frozen dataclass sets each field through object.__setattr__ (0.5 µs a book)
class EncodedBook:
    """A book encoded once for both the hash and the publish payload (treated as immutable)."""

    exchange: str
    symbol: str
    key: str
    xid: int
    writer: str
    args: tuple[bytes | str, ...]  # ARGV for WRITE_BOOK

    def script_command(self) -> Command:
        return ("EVALSHA", WRITE_BOOK.sha, 1, self.key, *self.args)

    def hash_fields(self, seq: int, rts: str, wts: str, holders: str) -> dict[str, bytes | str]:
        """The hash fields WRITE_BOOK stores as write number `seq`, received at `rts` and written at `wts` on
        Redis's clock (what the script does, for tests); `holders` is the comma-separated list it leaves."""
        xid, writer, _, exchange, symbol, bids, asks, bid, ask, ts, recv_ts, hb, _, _, sim = self.args
        return {
            "seq": str(seq), "exchange": exchange, "symbol": symbol, "bids": bids, "asks": asks, "bid": bid,
            "ask": ask, "ts": ts, "recv_ts": recv_ts, "xid": xid, "feeder": writer, "live": "1", "hb": hb,
            "holders": holders, "rts": rts, "wts": wts, "sim": sim,
        }  # fmt: skip

    def message(self, seq: int, rts: str, wts: str, holders: str) -> bytes:
        """The message WRITE_BOOK publishes as write number `seq` (what the script does, for tests)."""
        middle, bids, asks = self.args[2], self.args[5], self.args[6]
        assert isinstance(middle, bytes) and isinstance(bids, bytes) and isinstance(asks, bytes)
        listed = orjson.dumps(holders.split(",") if holders else [])
        return b'{"seq":%d,"rts":%b,"wts":%b,"holders":%b,%b,"bids":%b,"asks":%b}' % (
            seq,
            rts.encode(),
            wts.encode(),
            listed,
            middle,
            bids,
            asks,
        )


def _check_levels(levels: object, side: str) -> list[Level]:
    if not isinstance(levels, list | tuple):
        raise InvalidSnapshotError(f"{side} must be a list of (price, qty) pairs")
    if len(levels) > MAX_LEVELS:
        raise InvalidSnapshotError(f"{side}: {len(levels)} levels, at most {MAX_LEVELS} are stored")
    out: list[Level] = []
    for level in levels:
        try:
            price, qty = level
            price_f, qty_f = float(price), float(qty)
        except (TypeError, ValueError) as exc:
            raise InvalidSnapshotError(
                f"{side}: level {level!r} is not a (price, qty) pair of numbers"
            ) from exc
        if isinstance(price, bool) or isinstance(qty, bool):
            raise InvalidSnapshotError(f"{side}: level {level!r} holds a bool, not a number")
        if not (math.isfinite(price_f) and math.isfinite(qty_f)) or price_f <= 0 or qty_f < 0:
            raise InvalidSnapshotError(f"{side}: level {level!r} needs a finite price > 0 and qty >= 0")
        out.append((price_f, qty_f))
    return out


_dumps = orjson.dumps
_MESSAGE_PARTS: dict[tuple[str, str, str, bool, bool], tuple[bytes, bytes]] = {}


def _message_parts(
    exchange: str, symbol: str, writer: str, heartbeat: bool, simulated: bool
) -> tuple[bytes, bytes]:
    """The constant pieces of a book's message: ``"exchange":…,"ts":`` and ``,"feeder":…,"bid":``."""
    key = (exchange, symbol, writer, heartbeat, simulated)
    parts = _MESSAGE_PARTS.get(key)
    if parts is None:
        if len(_MESSAGE_PARTS) >= 16384:  # bounded: one entry per book key and writer
            _MESSAGE_PARTS.clear()
        head = b'"exchange":' + _dumps(exchange) + b',"symbol":' + _dumps(symbol) + b',"ts":'
        middle = b',"feeder":' + _dumps(writer) + b',"live":true,"hb":' + _dumps(heartbeat)
        if simulated:
            middle += b',"sim":true'
        middle += b',"bid":'
        parts = _MESSAGE_PARTS[key] = (head, middle)
    return parts


def _float_text(value: float, json_text: bytes) -> str:
    """repr(value), from orjson's text of it where the two agree (floats in [1e-4, 1e16)), which is cheaper."""
    if type(value) is float and 1e-4 <= value < 1e16:
        return json_text.decode()
    return repr(value)


def encode_book(
    layout: RedisLayout,
    snapshot: OrderBookSnapshot,
    *,
    exchange: str,
    writer: str,
    heartbeat: bool,
    xid: int | None = None,
    recv_ts: float | None = None,
    validate: bool = True,
    time_ordered: bool | None = None,
    simulated: bool = False,
) -> EncodedBook:
    """Encode a snapshot for WRITE_BOOK.

    `heartbeat` says whether the writer keeps ``<prefix>:feeder:<writer>`` alive: readers then judge the book
    by that heartbeat, otherwise by ``max_age`` alone (books written directly by an engine's provider), and a
    feeder's book outranks a client's (see the script). `validate=False` is for the feeder, whose protocol
    code has already checked every level. `time_ordered` says the ordering id is a time in milliseconds (then
    Redis refuses one more than `TIME_ID_LEAD_MS` ahead of its clock); by default it is when the id is derived
    from the timestamp (no `xid` given and none on the snapshot). `simulated` marks a book of the exchange
    simulator (field ``sim``, shown by ``md``), so that nobody mistakes it for a market.
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
        if snapshot.xid is not None:
            xid = snapshot.xid
        else:
            xid = round(snapshot.timestamp * 1000)
            if time_ordered is None:
                time_ordered = True
    if validate and not (isinstance(xid, int) and 0 <= xid < MAX_XID):
        raise InvalidSnapshotError(f"ordering id must be an integer in [0, 2**53), not {xid!r}")
    if recv_ts is None:
        recv_ts = snapshot.recv_ts if snapshot.recv_ts is not None else time.time()
    if validate and not (isinstance(recv_ts, int | float) and math.isfinite(recv_ts)):
        raise InvalidSnapshotError(f"receive time must be a finite number, not {recv_ts!r}")
    return _encode(
        key, exchange, snapshot.symbol, writer, float(snapshot.timestamp), recv_ts, xid, _dumps(bids),
        _dumps(asks), bids[0][0] if bids else None, asks[0][0] if asks else None, heartbeat, time_ordered,
        simulated,
    )  # fmt: skip


def encode_book_sides(
    layout: RedisLayout,
    *,
    exchange: str,
    symbol: str,
    timestamp: float,
    xid: int,
    recv_ts: float,
    bids_json: bytes,
    asks_json: bytes,
    best_bid: float,
    best_ask: float,
    writer: str,
    heartbeat: bool,
    time_ordered: bool,
    simulated: bool = False,
) -> EncodedBook:
    """Encode for WRITE_BOOK a feeder's book whose sides come as text already: each exactly what
    ``orjson.dumps`` writes for the side's ``[(price, size), ...]`` floats, as `encode_book` would store them
    (a decoder that builds that text from an exchange's frame without making the floats: the Upbit units). The
    caller vouches for the levels, as with ``encode_book(validate=False)``; both sides have a best level."""
    key = layout.book_key(exchange, symbol)
    return _encode(
        key, exchange, symbol, writer, timestamp, recv_ts, xid, bids_json, asks_json, best_bid, best_ask,
        heartbeat, time_ordered, simulated,
    )  # fmt: skip


def _encode(
    key: str,
    exchange: str,
    symbol: str,
    writer: str,
    ts: float,
    recv_ts: float,
    xid: int,
    bids_json: bytes,
    asks_json: bytes,
    best_bid: float | None,
    best_ask: float | None,
    heartbeat: bool,
    time_ordered: bool | None,
    simulated: bool,
) -> EncodedBook:
    # The numbers of the message, formatted by orjson in one call (as a dict of them would be); the hash
    # fields hold Python's repr, which is the same text in the usual range, so it is reused there.
    numbers = _dumps((ts, recv_ts, xid, best_bid, best_ask))
    ts_json, recv_json, xid_json, bid_json, ask_json = numbers[1:-1].split(b",")
    head, tail = _message_parts(exchange, symbol, writer, heartbeat, simulated)
    middle = b"".join(
        (head, ts_json, b',"recv_ts":', recv_json, b',"xid":', xid_json, tail, bid_json, b',"ask":', ask_json)
    )
    args: tuple[bytes | str, ...] = (
        str(xid),
        writer,
        middle,
        exchange,
        symbol,
        bids_json,
        asks_json,
        "" if best_bid is None else _float_text(best_bid, bid_json),
        "" if best_ask is None else _float_text(best_ask, ask_json),
        _float_text(ts, ts_json),
        _float_text(recv_ts, recv_json) if type(recv_ts) is float else repr(float(recv_ts)),
        "1" if heartbeat else "0",
        _LEAD if time_ordered else "",
        _age_ms(recv_ts),
        "1" if simulated else "",
    )
    return EncodedBook(exchange, symbol, key, xid, writer, args)


_LEAD = str(TIME_ID_LEAD_MS)


def _age_ms(recv_ts: float) -> str:
    """How long ago, on this host's clock, the book was received: the script subtracts it from Redis's time."""
    age = time.time() - recv_ts
    return str(int(age * 1000)) if age > 0 else "0"


# --------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True, slots=True)
class StoredBook:
    """A decoded book hash with the metadata that freshness rules need."""

    key: str
    snapshot: OrderBookSnapshot
    feeder: str  # the writer of this version
    live: bool  # False once no feeder holds it (every holder reported its connection down)
    heartbeat: bool  # True when liveness follows the records of the holders (a feeder's book)
    recv_ts: float
    seq: int
    holders: tuple[str, ...] = ()  # the feeders whose connection delivered this version and is up
    simulated: bool = False  # written by a feeder of the exchange simulator (the demo)
    rts: float = 0.0  # when the book was received, on Redis's clock (the clock ages are measured on)
    wts: float | None = None  # when Redis accepted this version, on its clock (None: written before `wts`)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _holders(raw: bytes | str | None, feeder: str, heartbeat: bool) -> tuple[str, ...]:
    """The holders field as a tuple; a book written before holders existed is held by its writer."""
    if raw is None:
        return (feeder,) if heartbeat and feeder else ()
    text = _text(raw)
    return tuple(text.split(",")) if text else ()


def _decode_levels(key: str, field: str, raw: bytes | str) -> list[Level]:
    if len(raw) > MAX_SIDE_BYTES:
        raise CorruptSnapshotError(key, field, f"{len(raw)} bytes, more than a book's {MAX_SIDE_BYTES}")
    try:
        levels = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptSnapshotError(key, field, f"not valid JSON ({exc})") from None
    if not isinstance(levels, list):
        raise CorruptSnapshotError(key, field, "not a JSON array of [price, size] pairs")
    if len(levels) > MAX_LEVELS:
        raise CorruptSnapshotError(key, field, f"{len(levels)} levels, more than {MAX_LEVELS}")
    try:
        out = [(float(p), float(q)) for p, q in levels]
    except (TypeError, ValueError):
        raise CorruptSnapshotError(key, field, "not a JSON array of [price, size] pairs") from None
    for p, q in out:
        if not (math.isfinite(p) and math.isfinite(q)) or p <= 0 or q < 0:
            raise CorruptSnapshotError(
                key, field, f"level [{p}, {q}] is not a finite price > 0 and size >= 0"
            )
    return out


def _decode_number(
    key: str, fields: Mapping[str, bytes | str], name: str, kind: type[float] | type[int]
) -> Any:
    raw = fields.get(name)
    if raw is None:
        raise CorruptSnapshotError(key, name, "missing")
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise CorruptSnapshotError(key, name, f"{_text(raw)!r} is not a number") from None
    if kind is float and not math.isfinite(value):
        raise CorruptSnapshotError(key, name, f"{_text(raw)!r} is not finite")
    return value


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_INF = math.inf
_VALID_FEEDERS: set[str] = set()  # feeder ids already checked (few per deployment)


def _has_minus(raw: bytes | str) -> bool:
    return b"-" in raw if isinstance(raw, bytes) else "-" in raw


def _fast_levels(raw: bytes | str) -> list[Level]:
    # orjson refuses NaN, Infinity and overflowing numbers, so every value here is finite; a negative one
    # needs a minus sign somewhere in the text, so only then are the sizes scanned.
    if len(raw) > MAX_SIDE_BYTES:
        raise ValueError("too large")
    levels = [(float(p), float(q)) for p, q in orjson.loads(raw)]
    if len(levels) > MAX_LEVELS:
        raise ValueError("too many levels")
    if levels and (min(map(_FIRST, levels)) <= 0 or (_has_minus(raw) and min(map(_SECOND, levels)) < 0)):
        raise ValueError("level out of range")
    return levels


def _check_feeder(feeder: str) -> None:
    if feeder not in _VALID_FEEDERS:
        if not WRITER_RE.fullmatch(feeder):
            raise ValueError("bad feeder id")
        if len(_VALID_FEEDERS) < 10_000:
            _VALID_FEEDERS.add(feeder)


READ_FIELDS = (
    "bids", "asks", "ts", "recv_ts", "xid", "seq", "feeder", "live", "hb", "symbol", "holders", "rts", "sim",
    "wts",
)  # fmt: skip


def book_identity(values: Sequence[Any]) -> tuple[Any, ...]:
    """The raw reply of `read_book_command` as a comparable value: an equal reply decodes to an equal book.

    Comparing the raw field values (C-speed byte comparisons) is far cheaper than decoding 2 x 15 levels, and
    any change at all, a hand edit included, makes the reader decode again.
    """
    return tuple(values)


def decode_book_fields(layout: RedisLayout, key: str, values: Sequence[Any]) -> StoredBook | None:
    """Decode the reply of `read_book_command`: None when the key does not exist; CorruptSnapshotError."""
    if isinstance(values, Exception):  # e.g. WRONGTYPE: something else is stored under the book's name
        raise CorruptSnapshotError(key, "*", f"unreadable: {values}")
    bids, asks, ts, recv_ts, xid, seq, feeder, live, hb, symbol, holders, rts, sim, wts = values
    if bids is None and asks is None and seq is None and ts is None and not any(values):
        return None
    try:
        exchange, key_symbol = layout.parse_book_key(key)
        ts_f, recv_f = float(ts), float(recv_ts)
        rts_f = float(rts) if rts is not None else recv_f
        wts_f = float(wts) if wts is not None else None
        if not (-_INF < ts_f < _INF and -_INF < recv_f < _INF and -_INF < rts_f < _INF):
            raise ValueError("not finite")
        if wts_f is not None and not -_INF < wts_f < _INF:
            raise ValueError("not finite")
        if symbol is not None and _text(symbol) != key_symbol:
            raise ValueError("symbol mismatch")
        feeder_s = _text(feeder) if feeder is not None else ""
        heartbeat = hb in (b"1", "1")
        if heartbeat:
            _check_feeder(feeder_s)
        held = _holders(holders, feeder_s, heartbeat)
        for holder in held:
            _check_feeder(holder)
        seq_i = int(seq)
        snapshot = OrderBookSnapshot(
            key_symbol,
            ts_f,
            _fast_levels(bids),
            _fast_levels(asks),
            exchange=exchange,
            seq=seq_i,
            recv_ts=recv_f,
            xid=int(xid),
        )
        return StoredBook(
            key,
            snapshot,
            feeder_s,
            live not in (b"0", "0"),
            heartbeat,
            recv_f,
            seq_i,
            held,
            sim in (b"1", "1"),
            rts_f,
            wts_f,
        )
    except Exception:
        return _decode_checked(
            layout, key, {n: v for n, v in zip(READ_FIELDS, values, strict=True) if v is not None}
        )


def _decode_checked(layout: RedisLayout, key: str, raw: Mapping[Any, Any]) -> StoredBook:
    fields: dict[str, bytes | str] = {_text(k): v for k, v in raw.items()}
    exchange, symbol = layout.parse_book_key(key)
    for name in ("bids", "asks"):
        if name not in fields:
            raise CorruptSnapshotError(key, name, "missing")
    bids = _decode_levels(key, "bids", fields["bids"])
    asks = _decode_levels(key, "asks", fields["asks"])
    ts = _decode_number(key, fields, "ts", float)
    recv_ts = _decode_number(key, fields, "recv_ts", float)
    rts = _decode_number(key, fields, "rts", float) if "rts" in fields else recv_ts
    wts = _decode_number(key, fields, "wts", float) if "wts" in fields else None
    xid = _decode_number(key, fields, "xid", int)
    seq = _decode_number(key, fields, "seq", int)
    feeder = _text(fields.get("feeder", b""))
    heartbeat = _text(fields.get("hb", b"0")) == "1"
    if heartbeat and not WRITER_RE.fullmatch(feeder):
        raise CorruptSnapshotError(key, "feeder", f"{feeder!r} is not a feeder id")
    holders = _holders(fields.get("holders"), feeder, heartbeat)
    for holder in holders:
        if not WRITER_RE.fullmatch(holder):
            raise CorruptSnapshotError(key, "holders", f"{holder!r} is not a feeder id")
    stored_symbol = fields.get("symbol")
    if stored_symbol is not None and _text(stored_symbol) != symbol:
        raise CorruptSnapshotError(key, "symbol", f"{_text(stored_symbol)!r} does not match the key")
    snapshot = OrderBookSnapshot(symbol, ts, bids, asks, exchange=exchange, seq=seq, recv_ts=recv_ts, xid=xid)
    return StoredBook(
        key=key,
        snapshot=snapshot,
        feeder=feeder,
        live=_text(fields.get("live", b"1")) != "0",
        heartbeat=heartbeat,
        recv_ts=recv_ts,
        seq=seq,
        holders=holders,
        simulated=_text(fields.get("sim", b"")) == "1",
        rts=rts,
        wts=wts,
    )


def decode_book(layout: RedisLayout, key: str, raw: Mapping[Any, Any]) -> StoredBook | None:
    """Decode a whole hash (``HGETALL``): None when the key does not exist; CorruptSnapshotError when unusable.

    For tools and tests; readers ask for `READ_FIELDS` only and decode with `decode_book_fields`.
    """
    return _decode_checked(layout, key, raw) if raw else None


# --------------------------------------------------------------------------------------------- messages
class MessageHead(NamedTuple):
    """What every message of a book channel carries: its write number, liveness and holders."""

    seq: int
    live: bool  # False: no feeder holds the book any more (a status message, without levels)
    holders: tuple[str, ...] | None  # None: the message does not say (written before holders existed)
    has_book: bool  # a write, carrying the whole book; otherwise a status message (holders, live)
    fields: dict[str, Any]


def decode_message_head(data: bytes | str) -> MessageHead:
    """The head of one book-channel message; ValueError when it is not a message of this layout at all."""
    try:
        message = orjson.loads(data)
        raw_holders = message.get("holders")
        holders = None
        if raw_holders is not None:
            if type(raw_holders) is not list or not all(type(h) is str for h in raw_holders):
                raise ValueError("holders is not a list of feeder ids")
            holders = tuple(raw_holders)
        return MessageHead(
            int(message["seq"]), bool(message.get("live", True)), holders, "bids" in message, message
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a book message: {exc}") from None


# a write message starts so (a status message goes on with "live" after the seq): see WRITE_BOOK
_write_message_head = re.compile(rb'\{"seq":(\d{1,16}),"rts":').match


def write_message_seq(data: bytes | str) -> int | None:
    """The ``seq`` of a write message in the form the write script publishes (``{"seq":N,"rts":…``, the
    levels last), read without decoding the message; None for anything else (a status message, other text).

    The mirror applies such a message on its ``seq`` alone and decodes the book when it is first read;
    whatever this lets through is still fully checked then (`decode_message_head`, `decode_message_book`).
    """
    head = _write_message_head(data) if type(data) is bytes else None
    return int(head[1]) if head is not None else None


def _message_levels(raw: Any) -> list[Level]:
    if type(raw) is not list or len(raw) > MAX_LEVELS:
        raise ValueError("levels are not a list of at most MAX_LEVELS pairs")
    levels = [(float(p), float(q)) for p, q in raw]
    for p, q in levels:
        if not (0 < p < _INF and 0 <= q < _INF):
            raise ValueError(f"level [{p}, {q}] is not a finite price > 0 and size >= 0")
    return levels


def decode_message_book(layout: RedisLayout, key: str, head: MessageHead) -> StoredBook:
    """The live book a write message announces (it carries the whole book); ValueError when it is not a
    valid book (finite positive prices, sizes >= 0, at most `MAX_LEVELS` a side, valid names)."""
    m = head.fields
    try:
        exchange, symbol = layout.parse_book_key(key)
        recv_ts = float(m["recv_ts"])
        rts = float(m.get("rts", recv_ts))
        raw_wts = m.get("wts")
        wts = None if raw_wts is None else float(raw_wts)
        ts = float(m["ts"])
        if not (-_INF < ts < _INF and -_INF < recv_ts < _INF and -_INF < rts < _INF):
            raise ValueError("a time is not finite")
        if wts is not None and not -_INF < wts < _INF:
            raise ValueError("a time is not finite")
        feeder = str(m.get("feeder", ""))
        heartbeat = bool(m.get("hb", False))
        holders = head.holders if head.holders is not None else ((feeder,) if heartbeat else ())
        for holder in holders:
            if not WRITER_RE.fullmatch(holder):
                raise ValueError(f"{holder!r} is not a feeder id")
        snapshot = OrderBookSnapshot(
            symbol,
            ts,
            _message_levels(m["bids"]),
            _message_levels(m["asks"]),
            exchange=exchange,
            seq=head.seq,
            recv_ts=recv_ts,
            xid=int(m["xid"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # InvalidSymbolError is a ValueError
        raise ValueError(f"malformed book message on {key!r}: {exc}") from None
    return StoredBook(
        key=key,
        snapshot=snapshot,
        feeder=feeder,
        live=True,
        heartbeat=heartbeat,
        recv_ts=recv_ts,
        seq=head.seq,
        holders=holders,
        simulated=bool(m.get("sim", False)),
        rts=rts,
        wts=wts,
    )
