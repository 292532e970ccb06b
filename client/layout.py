"""The Redis layout: key and channel names, the book codec and the atomic write scripts.

This is the only module that knows how books look in Redis. The feeder and the client both go through it, and
people read the same layout with ``redis-cli`` (see README, "Inspecting with redis-cli"):

``<prefix>:<exchange>:<symbol>``  hash, one per book; also the pub/sub channel announcing each accepted write
``<prefix>:feeder:<feeder_id>``   hash with an expiry: liveness and counters of one feeder process
``<prefix>:symbols:<exchange>``   set of symbols that have a book on that exchange
``<prefix>:exchanges``            set of exchanges that have at least one book
``<prefix>:last:<exchange>``      the symbol most recently written on that exchange (legacy ``snapshot_upbit``)

Writes go through one Lua script per book (ordering check, whole-hash update, ``seq`` bump, publish) so a
reader never sees half a book and a message never announces something that is not stored. The script touches
only the book's own key and publishes on the channel named like it, which keeps it valid on Redis Cluster;
the index keys are written beside it in the same pipeline.

Round trips are expressed as *flows*: generators that yield a list of Redis commands and receive their
replies. One flow serves both the sync and the asyncio client (see `run_flow` and `arun_flow`), so the logic
that matters is written once.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import time
from collections.abc import Container, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio
import redis.exceptions
from redis.exceptions import NoScriptError

from client.errors import CorruptSnapshotError, InvalidSnapshotError, InvalidSymbolError
from client.models import Level, OrderBookSnapshot

MAX_SYMBOL_LENGTH = 64
_SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9._-]*")
_EXCHANGE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_WRITER_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
# Names of the non-book keys; an exchange with one of these names would collide with them.
_RESERVED_EXCHANGES = frozenset({"feeder", "symbols", "exchanges", "last"})

# Ordering ids are compared as Lua numbers (doubles): beyond 2**53 they would no longer be exact.
MAX_XID = 2**53
MAX_TIMESTAMP = 1e12  # epoch seconds; its milliseconds stay below MAX_XID

# Fields of the feeder status hash that readers rely on for liveness.
FEEDER_STATE_FIELD = "state"
FEEDER_OFFLINE = "offline"
FEEDER_HEARTBEAT_FIELD = "heartbeat"  # epoch seconds of the feeder's last heartbeat (shown by `md status`)

Command = tuple[Any, ...]
Flow = Generator[list[Command], list[Any], Any]


# --------------------------------------------------------------------------------------------- validation
def validate_symbol(symbol: object) -> str:
    """Return the symbol unchanged, or raise InvalidSymbolError before it can become part of a key."""
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a str, not {type(symbol).__name__}")
    if not symbol or len(symbol) > MAX_SYMBOL_LENGTH or not _SYMBOL_RE.fullmatch(symbol):
        shown = symbol if len(symbol) <= 80 else symbol[:77] + "..."
        raise InvalidSymbolError(
            f"invalid symbol {shown!r}: expected 1-{MAX_SYMBOL_LENGTH} characters of [A-Z0-9._-], "
            "starting with a letter or digit"
        )
    return symbol


def validate_exchange(exchange: object) -> str:
    if (
        not isinstance(exchange, str)
        or len(exchange) > 32
        or not _EXCHANGE_RE.fullmatch(exchange)
        or exchange in _RESERVED_EXCHANGES
    ):
        raise InvalidSymbolError(
            f"invalid exchange name {exchange!r}: expected 1-32 characters of [a-z0-9_-], "
            f"not one of {sorted(_RESERVED_EXCHANGES)}"
        )
    return exchange


def validate_writer_id(writer: object) -> str:
    if not isinstance(writer, str) or not _WRITER_RE.fullmatch(writer):
        raise InvalidSymbolError(
            f"invalid writer/feeder id {writer!r}: expected 1-128 characters of [A-Za-z0-9_.:@-]"
        )
    return writer


def validate_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidSymbolError(f"invalid key prefix {prefix!r}: expected 1-32 characters of [A-Za-z0-9_.-]")
    return prefix


# --------------------------------------------------------------------------------------------- key names
class RedisLayout:
    """Key and channel names under one prefix. Channel names equal key names on purpose (Cluster sharding).

    Names are validated once and remembered: engines ask for the same few books in a hot loop.
    """

    __slots__ = ("_keys", "_parsed", "prefix")
    _MEMO_LIMIT = 100_000

    def __init__(self, prefix: str = "md") -> None:
        self.prefix = validate_prefix(prefix)
        self._keys: dict[tuple[str, str], str] = {}
        self._parsed: dict[str, tuple[str, str]] = {}

    def book_key(self, exchange: str, symbol: str) -> str:
        try:
            return self._keys[(exchange, symbol)]
        except (KeyError, TypeError):
            pass
        key = f"{self.prefix}:{validate_exchange(exchange)}:{validate_symbol(symbol)}"
        if len(self._keys) >= self._MEMO_LIMIT:
            self._keys.clear()
        self._keys[(exchange, symbol)] = key
        return key

    def book_channel(self, exchange: str, symbol: str) -> str:
        return self.book_key(exchange, symbol)

    def book_pattern(self, exchange: str | None = None) -> str:
        """Glob for PSUBSCRIBE/SCAN over one exchange's books (all exchanges when None)."""
        return f"{self.prefix}:{validate_exchange(exchange)}:*" if exchange else f"{self.prefix}:*:*"

    def parse_book_key(self, key: str | bytes) -> tuple[str, str]:
        """(exchange, symbol) of a book key or channel; InvalidSymbolError for anything else."""
        text = key.decode() if isinstance(key, bytes) else key
        parsed = self._parsed.get(text)
        if parsed is not None:
            return parsed
        head, sep, rest = text.partition(":")
        exchange, sep2, symbol = rest.partition(":")
        if head != self.prefix or not sep or not sep2:
            raise InvalidSymbolError(f"{text!r} is not a book key under prefix {self.prefix!r}")
        parsed = validate_exchange(exchange), validate_symbol(symbol)
        if len(self._parsed) >= self._MEMO_LIMIT:
            self._parsed.clear()
        self._parsed[text] = parsed
        return parsed

    def feeder_key(self, feeder_id: str) -> str:
        return f"{self.prefix}:feeder:{validate_writer_id(feeder_id)}"

    def feeder_pattern(self) -> str:
        return f"{self.prefix}:feeder:*"

    def parse_feeder_key(self, key: str | bytes) -> str:
        """The feeder id of a feeder status key (from SCAN); InvalidSymbolError for anything else."""
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:feeder:"
        if not text.startswith(head):
            raise InvalidSymbolError(f"{text!r} is not a feeder key under prefix {self.prefix!r}")
        return validate_writer_id(text[len(head) :])

    def symbols_key(self, exchange: str) -> str:
        return f"{self.prefix}:symbols:{validate_exchange(exchange)}"

    def exchanges_key(self) -> str:
        return f"{self.prefix}:exchanges"

    def last_key(self, exchange: str) -> str:
        return f"{self.prefix}:last:{validate_exchange(exchange)}"


# --------------------------------------------------------------------------------------------- scripts
@dataclass(frozen=True)
class LuaScript:
    """A script called by SHA; `run_flow` loads it when Redis answers NOSCRIPT (e.g. after a restart)."""

    name: str
    source: str
    sha: str = field(init=False)  # computed once: a write batch names the script by it

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS[1] book key (and channel). ARGV: 1 xid, 2 writer id, 3 the message's middle part (from "exchange" to
# "ask", see `encode_book`), 4 exchange, 5 symbol, 6 bids JSON, 7 asks JSON, 8 best bid, 9 best ask, 10 ts,
# 11 recv_ts, 12 hb. Returns the new seq, or 0 when the write is older than the stored book (or as old and
# from another writer). Field names are literals and the sides travel once (the message is assembled here):
# every argument costs Redis a conversion into Lua, so the fewer and smaller the cheaper the script.
WRITE_BOOK = LuaScript(
    "write_book",
    """
local cur = redis.call('HMGET', KEYS[1], 'xid', 'feeder', 'seq')
local old = tonumber(cur[1])
if old then
  local new = tonumber(ARGV[1])
  if new < old or (new == old and cur[2] ~= ARGV[2]) then
    return 0
  end
end
local seq = (tonumber(cur[3]) or 0) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'exchange', ARGV[4], 'symbol', ARGV[5], 'bids', ARGV[6], 'asks', ARGV[7],
  'bid', ARGV[8], 'ask', ARGV[9], 'ts', ARGV[10], 'recv_ts', ARGV[11], 'xid', ARGV[1], 'feeder', ARGV[2],
  'live', '1', 'hb', ARGV[12])
redis.call('PUBLISH', KEYS[1],
  '{"seq":' .. seq .. ',' .. ARGV[3] .. ',"bids":' .. ARGV[6] .. ',"asks":' .. ARGV[7] .. '}')
return seq
""",
)


# KEYS[1] book key. ARGV[1] writer id, ARGV[2] status payload without its leading '{"seq":N,'.
# Marks the book not live when (and only when) this writer wrote it, and announces that on the channel.
MARK_DOWN = LuaScript(
    "mark_down",
    """
local cur = redis.call('HMGET', KEYS[1], 'feeder', 'live', 'seq')
if cur[1] ~= ARGV[1] or cur[2] == '0' then
  return 0
end
redis.call('HSET', KEYS[1], 'live', '0')
redis.call('PUBLISH', KEYS[1], '{"seq":' .. (tonumber(cur[3]) or 0) .. ',' .. ARGV[2])
return 1
""",
)


# --------------------------------------------------------------------------------------------- codec
@dataclass(frozen=True, slots=True)
class EncodedBook:
    """A book encoded once for both the hash and the publish payload."""

    exchange: str
    symbol: str
    key: str
    xid: int
    writer: str
    args: tuple[bytes | str, ...]  # ARGV for WRITE_BOOK

    def script_command(self) -> Command:
        return ("EVALSHA", WRITE_BOOK.sha, 1, self.key, *self.args)

    def hash_fields(self, seq: int) -> dict[str, bytes | str]:
        """The hash fields WRITE_BOOK stores as write number `seq` (what the script does, for tests)."""
        xid, writer, _, exchange, symbol, bids, asks, bid, ask, ts, recv_ts, hb = self.args
        return {
            "seq": str(seq), "exchange": exchange, "symbol": symbol, "bids": bids, "asks": asks, "bid": bid,
            "ask": ask, "ts": ts, "recv_ts": recv_ts, "xid": xid, "feeder": writer, "live": "1", "hb": hb,
        }  # fmt: skip

    def message(self, seq: int) -> bytes:
        """The message WRITE_BOOK publishes as write number `seq` (what the script does, for tests)."""
        middle, bids, asks = self.args[2], self.args[5], self.args[6]
        assert isinstance(middle, bytes) and isinstance(bids, bytes) and isinstance(asks, bytes)
        return b'{"seq":%d,%b,"bids":%b,"asks":%b}' % (seq, middle, bids, asks)


def _check_levels(levels: object, side: str) -> list[Level]:
    if not isinstance(levels, list | tuple):
        raise InvalidSnapshotError(f"{side} must be a list of (price, qty) pairs")
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
_MESSAGE_PARTS: dict[tuple[str, str, str, bool], tuple[bytes, bytes]] = {}


def _message_parts(exchange: str, symbol: str, writer: str, heartbeat: bool) -> tuple[bytes, bytes]:
    """The constant pieces of a book's message: ``"exchange":…,"ts":`` and ``,"feeder":…,"bid":``."""
    key = (exchange, symbol, writer, heartbeat)
    parts = _MESSAGE_PARTS.get(key)
    if parts is None:
        if len(_MESSAGE_PARTS) >= 16384:  # bounded: one entry per book key and writer
            _MESSAGE_PARTS.clear()
        head = b'"exchange":' + _dumps(exchange) + b',"symbol":' + _dumps(symbol) + b',"ts":'
        middle = b',"feeder":' + _dumps(writer) + b',"live":true,"hb":' + _dumps(heartbeat) + b',"bid":'
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
) -> EncodedBook:
    """Encode a snapshot for WRITE_BOOK.

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
    bids_json = _dumps(bids)
    asks_json = _dumps(asks)
    best_bid = bids[0][0] if bids else None
    best_ask = asks[0][0] if asks else None
    # The numbers of the message, formatted by orjson in one call (as a dict of them would be); the hash
    # fields hold Python's repr, which is the same text in the usual range, so it is reused there.
    numbers = _dumps((ts, recv_ts, xid, best_bid, best_ask))
    ts_json, recv_json, xid_json, bid_json, ask_json = numbers[1:-1].split(b",")
    head, tail = _message_parts(exchange, snapshot.symbol, writer, heartbeat)
    middle = b"".join(
        (head, ts_json, b',"recv_ts":', recv_json, b',"xid":', xid_json, tail, bid_json, b',"ask":', ask_json)
    )
    xid_text = str(xid)
    args: tuple[bytes | str, ...] = (
        xid_text,
        writer,
        middle,
        exchange,
        snapshot.symbol,
        bids_json,
        asks_json,
        "" if best_bid is None else _float_text(best_bid, bid_json),
        "" if best_ask is None else _float_text(best_ask, ask_json),
        _float_text(ts, ts_json),
        _float_text(recv_ts, recv_json) if type(recv_ts) is float else repr(float(recv_ts)),
        "1" if heartbeat else "0",
    )
    return EncodedBook(exchange, snapshot.symbol, key, xid, writer, args)


@dataclass(frozen=True, slots=True)
class StoredBook:
    """A decoded book hash with the metadata that freshness rules need."""

    key: str
    snapshot: OrderBookSnapshot
    feeder: str
    live: bool  # False once the feeder reported the delivering connection down
    heartbeat: bool  # True when liveness follows <prefix>:feeder:<feeder>
    recv_ts: float
    seq: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_levels(key: str, field: str, raw: bytes | str) -> list[Level]:
    try:
        levels = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptSnapshotError(key, field, f"not valid JSON ({exc})") from None
    if not isinstance(levels, list):
        raise CorruptSnapshotError(key, field, "not a JSON array of [price, size] pairs")
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


def decode_book(layout: RedisLayout, key: str, raw: Mapping[Any, Any]) -> StoredBook | None:
    """Decode a hash from HGETALL; None when the key does not exist; CorruptSnapshotError when unusable.

    A well-formed hash takes the fast path (few Python-level steps: this runs on every read-through read);
    anything it does not accept is decoded again field by field to name exactly what is wrong.
    """
    if not raw:
        return None
    try:
        return _decode_fast(layout, key, raw)
    except Exception:
        return _decode_checked(layout, key, raw)


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_INF = math.inf
_VALID_FEEDERS: set[str] = set()  # feeder ids already checked (few per deployment)


def _has_minus(raw: bytes | str) -> bool:
    return b"-" in raw if isinstance(raw, bytes) else "-" in raw


def _fast_levels(raw: bytes | str) -> list[Level]:
    # orjson refuses NaN, Infinity and overflowing numbers, so every value here is finite; a negative one
    # needs a minus sign somewhere in the text, so only then are the sizes scanned.
    levels = [(float(p), float(q)) for p, q in orjson.loads(raw)]
    if levels and (min(map(_FIRST, levels)) <= 0 or (_has_minus(raw) and min(map(_SECOND, levels)) < 0)):
        raise ValueError("level out of range")
    return levels


def _decode_fast(layout: RedisLayout, key: str, raw: Mapping[Any, Any]) -> StoredBook:
    f = raw if isinstance(next(iter(raw)), bytes) else {k.encode(): v for k, v in raw.items()}
    exchange, symbol = layout.parse_book_key(key)
    ts = float(f[b"ts"])
    recv_ts = float(f[b"recv_ts"])
    if not (-_INF < ts < _INF and -_INF < recv_ts < _INF):
        raise ValueError("not finite")
    stored_symbol = f.get(b"symbol")
    if stored_symbol is not None and _text(stored_symbol) != symbol:
        raise ValueError("symbol mismatch")
    feeder = _text(f.get(b"feeder", b""))
    heartbeat = f.get(b"hb") in (b"1", "1")
    if heartbeat and feeder not in _VALID_FEEDERS:
        if not _WRITER_RE.fullmatch(feeder):
            raise ValueError("bad feeder id")
        if len(_VALID_FEEDERS) < 10_000:
            _VALID_FEEDERS.add(feeder)
    seq = int(f[b"seq"])
    snapshot = OrderBookSnapshot(
        symbol,
        ts,
        _fast_levels(f[b"bids"]),
        _fast_levels(f[b"asks"]),
        exchange=exchange,
        seq=seq,
        recv_ts=recv_ts,
        xid=int(f[b"xid"]),
    )
    return StoredBook(key, snapshot, feeder, f.get(b"live") not in (b"0", "0"), heartbeat, recv_ts, seq)


# The fields a reader needs, in the order `read_book_command` asks for them (HMGET: values only, no dict).
READ_FIELDS = ("bids", "asks", "ts", "recv_ts", "xid", "seq", "feeder", "live", "hb", "symbol")


def read_book_command(key: str) -> Command:
    return ("HMGET", key, *READ_FIELDS)


def book_identity(values: Sequence[Any]) -> tuple[Any, ...]:
    """The raw reply of `read_book_command` as a comparable value: an equal reply decodes to an equal book.

    Comparing the raw field values (C-speed byte comparisons) is far cheaper than decoding 2 x 15 levels, and
    any change at all, a hand edit included, makes the reader decode again.
    """
    return tuple(values)


def decode_book_fields(layout: RedisLayout, key: str, values: Sequence[Any]) -> StoredBook | None:
    """Decode the reply of `read_book_command`: None when the key does not exist; CorruptSnapshotError."""
    bids, asks, ts, recv_ts, xid, seq, feeder, live, hb, symbol = values
    if bids is None and asks is None and seq is None and ts is None and not any(values):
        return None
    try:
        exchange, key_symbol = layout.parse_book_key(key)
        ts_f, recv_f = float(ts), float(recv_ts)
        if not (-_INF < ts_f < _INF and -_INF < recv_f < _INF):
            raise ValueError("not finite")
        if symbol is not None and _text(symbol) != key_symbol:
            raise ValueError("symbol mismatch")
        feeder_s = _text(feeder) if feeder is not None else ""
        heartbeat = hb in (b"1", "1")
        if heartbeat and feeder_s not in _VALID_FEEDERS:
            if not _WRITER_RE.fullmatch(feeder_s):
                raise ValueError("bad feeder id")
            if len(_VALID_FEEDERS) < 10_000:
                _VALID_FEEDERS.add(feeder_s)
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
        return StoredBook(key, snapshot, feeder_s, live not in (b"0", "0"), heartbeat, recv_f, seq_i)
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
    xid = _decode_number(key, fields, "xid", int)
    seq = _decode_number(key, fields, "seq", int)
    feeder = _text(fields.get("feeder", b""))
    heartbeat = _text(fields.get("hb", b"0")) == "1"
    if heartbeat and not _WRITER_RE.fullmatch(feeder):
        raise CorruptSnapshotError(key, "feeder", f"{feeder!r} is not a feeder id")
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
    )


def decode_message(data: bytes | str) -> dict[str, Any]:
    """Decode one pub/sub message from a book channel (a snapshot, or a status message with live=false)."""
    message = orjson.loads(data)
    if not isinstance(message, dict):
        raise ValueError("book message is not a JSON object")
    return message


def feeder_alive(state: bytes | str | None) -> bool:
    """Liveness of a feeder from HGET <prefix>:feeder:<id> state (None when the key has expired)."""
    return state is not None and _text(state) != FEEDER_OFFLINE


# --------------------------------------------------------------------------------------------- write flows
def write_flow(
    layout: RedisLayout, books: Sequence[EncodedBook], *, indexed: Container[str] = ()
) -> Generator[list[Command], list[Any], list[int]]:
    """Write books in one pipelined round trip; returns each book's new seq, 0 where rejected by ordering.

    The symbol and exchange indexes and the per-exchange "last written" pointer are updated in the same
    pipeline (not inside the script: they live in other Cluster slots). Books whose key is in `indexed` skip
    the index update: a feeder remembers what it already indexed since Redis last came back.
    """
    sha = WRITE_BOOK.sha
    commands: list[Command] = [("EVALSHA", sha, 1, book.key, *book.args) for book in books]
    last: dict[str, str] = {}
    new_exchanges: set[str] = set()
    for book in books:
        if book.key not in indexed:
            commands.append(("SADD", layout.symbols_key(book.exchange), book.symbol))
            new_exchanges.add(book.exchange)
        last[book.exchange] = book.symbol
    if new_exchanges:
        commands.append(("SADD", layout.exchanges_key(), *sorted(new_exchanges)))
    for exchange, symbol in last.items():
        commands.append(("SET", layout.last_key(exchange), symbol))
    replies = yield commands
    results: list[int] = [0] * len(books)
    retry: list[int] = []
    for i in range(len(books)):
        reply = replies[i]
        if isinstance(reply, NoScriptError):
            retry.append(i)
        elif isinstance(reply, Exception):
            raise reply
        else:
            results[i] = int(reply)
    for reply in replies[len(books) :]:
        if isinstance(reply, Exception):
            raise reply
    if retry:
        # Redis restarted (or SCRIPT FLUSH): NOSCRIPT means nothing ran, so loading and retrying is safe.
        replies = yield [("SCRIPT", "LOAD", WRITE_BOOK.source)] + [books[i].script_command() for i in retry]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        for i, reply in zip(retry, replies[1:], strict=True):
            results[i] = int(reply)
    return results


def mark_down_flow(
    layout: RedisLayout, writer: str, books: Iterable[tuple[str, str]]
) -> Generator[list[Command], list[Any], int]:
    """Mark the writer's books of these (exchange, symbol) pairs not live; returns how many it marked."""
    commands: list[Command] = []
    for exchange, symbol in books:
        payload = orjson.dumps({"exchange": exchange, "symbol": symbol, "feeder": writer, "live": False})[1:]
        commands.append(("EVALSHA", MARK_DOWN.sha, 1, layout.book_key(exchange, symbol), writer, payload))
    if not commands:
        return 0
    replies = yield commands
    if any(isinstance(r, NoScriptError) for r in replies):
        replies = (yield [("SCRIPT", "LOAD", MARK_DOWN.source), *commands])[1:]
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return sum(int(r) for r in replies)


# --------------------------------------------------------------------------------------------- flow drivers
_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency; without it the pipeline is used
    _hiredis_pack = None


def run_flow(client: redis.Redis, flow: Generator[list[Command], list[Any], Any]) -> Any:
    """Drive a flow with a sync client: one pipelined round trip per yielded command list.

    On a plain `redis.Redis` the round trip is packed with hiredis and sent on a pooled connection directly:
    redis-py's Pipeline object costs more per read than the network round trip itself (measured ~35 µs of
    a ~95 µs two-command read on loopback). Replies go through the client's own response callbacks, so a
    flow sees exactly what a pipeline would give it. Other clients (fakeredis, Sentinel, wrappers) use the
    pipeline.
    """
    fast = _sync_packable(client)
    try:
        commands = next(flow)
        while True:
            if fast:
                replies = _packed_sync_round_trip(client, commands)
            else:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                replies = pipe.execute(raise_on_error=False)
            commands = flow.send(replies)
    except StopIteration as stop:
        return stop.value


def _sync_packable(client: object) -> bool:
    if _hiredis_pack is None or type(client) is not redis.Redis:
        return False
    pool = client.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        return False
    kwargs = pool.connection_kwargs
    encoding = str(kwargs.get("encoding", "utf-8")).lower().replace("-", "")
    return encoding == "utf8" and kwargs.get("encoding_errors", "strict") == "strict"


def _packed_sync_round_trip(client: redis.Redis, commands: list[Command]) -> list[Any]:
    if not commands:
        return []
    assert _hiredis_pack is not None
    pool = client.connection_pool
    connection = pool.get_connection()
    callbacks = client.response_callbacks
    replies: list[Any] = []
    try:
        connection.send_packed_command([b"".join([_hiredis_pack(c) for c in commands])])  # type: ignore[no-untyped-call]
        for command in commands:
            try:
                reply = connection.read_response()
            except redis.exceptions.ResponseError as exc:  # an error reply; the stream is still in step
                replies.append(exc)
                continue
            callback = callbacks.get(command[0])  # type: ignore[no-untyped-call]
            replies.append(callback(reply) if callback is not None else reply)
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be in flight: never reuse it
        raise
    finally:
        pool.release(connection)
    return replies


async def arun_flow(client: redis.asyncio.Redis, flow: Generator[list[Command], list[Any], Any]) -> Any:
    """Drive a flow with an asyncio client."""
    try:
        commands = next(flow)
        while True:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            commands = flow.send(await pipe.execute(raise_on_error=False))
    except StopIteration as stop:
        return stop.value
