"""Upbit WebSocket protocol (``wss://api.upbit.com/websocket/v1``): request building and frame decoding.

Facts this module relies on (Upbit's public WebSocket documentation and live captures):

- One connection carries one subscription, set by sending one JSON array
  ``[{"ticket": ...}, {"type": "orderbook", "codes": [...]}, {"format": ...}]``; a new request replaces the
  previous one, so the connection layer sends the whole request again after every reconnect.
- Frames arrive as **binary** WebSocket messages holding UTF-8 JSON (text is accepted too).
- Every ``orderbook`` frame is a whole book (no deltas, no sequence id). The first one per code is a
  SNAPSHOT, later ones REALTIME; a quiet market sends nothing, so silence is not staleness.
- Four formats: DEFAULT (long keys), SIMPLE (short keys), and JSON_LIST / SIMPLE_LIST, which wrap the same
  objects in a JSON array. Numbers may be written in exponent notation (``1.16539E8``).
- A one-sided book is padded: the empty side's units carry price 0 and size 0. Those are dropped.
- Errors arrive as ``{"error": {"name": ..., "message": ...}}`` (then Upbit closes the connection); the
  text keep-alive ``PING`` is answered with ``{"status": "UP"}``.
- Pacing: 5 new connections per second per IP; 5 requests per second (100 per minute) per connection. Upbit
  sends no pings of its own and closes a connection idle for about 120 s.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite
from time import time as _now
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import orjson
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import Level, OrderBookSnapshot
from client.settings import AtLeastOne
from feeder.exchanges.base import (
    MAX_LEVELS,
    Ack,
    BadFrame,
    BookSides,
    ErrorReply,
    Event,
    ExchangeDescriptor,
    KeepAlive,
    Listed,
    Pacing,
    StallRule,
    SymbolList,
    WebSocketUrl,
    WholeBooks,
    check_levels,
    frame_bytes,
    load_json,
    remember_raw_name,
    split_list,
    unique_symbols,
)
from feeder.exchanges.units_json import units_to_sides

if TYPE_CHECKING:
    from feeder.settings import FeederSettings

DEFAULT_URL: Final = "wss://api.upbit.com/websocket/v1"
FORMATS: Final = frozenset({"DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST"})
UNIT_COUNTS: Final = frozenset({1, 5, 15, 30})  # the `CODE.N` suffixes Upbit accepts

# Codes are few and repeat on every frame: validating each once and remembering the result keeps the regex
# off the hot path. The bound only guards against a stream of ever-new codes.
_SYMBOL_CACHE_MAX: Final = 4096

# Key names of the two spellings: (code, timestamp, units, ask price, ask size, bid price, bid size).
_LONG_KEYS: Final = ("code", "timestamp", "orderbook_units", "ask_price", "ask_size", "bid_price", "bid_size")
_SHORT_KEYS: Final = ("cd", "tms", "obu", "ap", "as", "bp", "bs")

_float = float


# ---- the fast path -----------------------------------------------------------------------------------------
# Upbit's serializer writes every order book the same way: the fields in a fixed order, no spaces, every number
# with a decimal point. orjson spends most of its time on such a frame building one dict per unit, and the
# general path then looks each value up again. For a frame of exactly that shape the units are instead reduced
# to their numbers by one bytes.translate (C speed): quotes, colons and braces become spaces and the letters of
# the keys are deleted, so ``[{"ap":1.0,"bp":2.0,...},...]`` becomes ``[ 1.0 , 2.0 ...]``, parsed by orjson as
# one JSON array of floats and paired up with zip (C speed as well).
#
# That is only sound if the frame really has that shape, which is checked on every byte first: the head and the
# tail by regular expressions, the units by their *shape*: the same bytes with the digits, ``E``, ``+`` and
# ``-`` deleted must be exactly ``[{"ap":.,"bp":.,"as":.,"bs":.},...]`` (or the long keys of DEFAULT) with 1 to
# 30 units, a dictionary lookup of precomputed shapes. The shape says where everything else is but not where
# the number characters are; the spaces settle that: one outside its place (``"ap"1:2.0``) becomes a token of
# its own, separated by a space from the value, which orjson rejects (two tokens without a comma). So each value
# is a single token with exactly one dot, which orjson parses as a float or rejects (``1.-5``, ``.5``,
# overflow); ``min()`` or ``all()`` then spot a negative value or a zero (padding of a one-sided book, or an
# underflow). Anything that fails a check or is merely unusual (spaces, other fields or order, integers,
# escapes, list formats) takes the general path, which decides exactly as before: the fast path only ever
# returns what the general path would (tests/test_protocol_fastpath.py).
_FAST_NUMBER: Final = rb"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?(?:E[+-]?[0-9]{1,2})?"
# What may follow the units: fields the decoder ignores, with plain values (no key that it reads).
_FAST_IGNORED_FIELD: Final = rb',"(?:st|lv|stream_type|level)":(?:"[A-Za-z_]{0,20}"|0|[1-9][0-9]{0,9})'
_FAST_NOT_SHAPE: Final = b"0123456789E+-"  # deleted to get the shape
# turned into spaces / deleted to get the numbers: ``[{"ap":1.0,...},...]`` becomes ``[  1.0 ,...]``
_FAST_TO_SPACE: Final = bytes.maketrans(b'{}":', b"    ")
_FAST_MAX_UNITS: Final = max(UNIT_COUNTS)


@dataclass(frozen=True, slots=True)
class FastSpelling:
    """One frame shape the fast path reads (see above): Upbit's SIMPLE and DEFAULT, Bithumb's orders.

    `head` matches everything before the units (group 1: the code), `tail` everything after them; the
    timestamp is group ``tms`` of one of the two. `integers`: a value may also be written without a decimal
    point (Bithumb's documented example: ``"ask_price":478800``); the dot is then deleted with the digits
    to get the shape, and a frame whose dots are fewer than its numbers has them converted to floats.
    """

    head: re.Pattern[bytes]
    tail: re.Pattern[bytes]
    shapes: dict[bytes, int]  # shape of the units -> number of units
    not_shape: bytes
    key_letters: bytes
    unit_keys: tuple[bytes, bytes, bytes, bytes]  # ask price, bid price, ask size, bid size, as spelled
    integers: bool = False
    tms_in_head: bool = True

    @classmethod
    def of(
        cls, head: bytes, tail: bytes, unit_keys: tuple[str, str, str, str], integers: bool = False
    ) -> FastSpelling:
        unit = b"{" + b",".join(b'"%s":.' % key.encode() for key in unit_keys) + b"}"
        if integers:
            unit = unit.replace(b".", b"")
        head_re = re.compile(head)
        return cls(
            head=head_re,
            tail=re.compile(tail),
            shapes={b"[" + b",".join([unit] * n) + b"]": n for n in range(1, _FAST_MAX_UNITS + 1)},
            not_shape=_FAST_NOT_SHAPE + b"." if integers else _FAST_NOT_SHAPE,
            key_letters=bytes(sorted(set("".join(unit_keys).encode()))),
            unit_keys=(
                unit_keys[0].encode(),
                unit_keys[1].encode(),
                unit_keys[2].encode(),
                unit_keys[3].encode(),
            ),
            integers=integers,
            tms_in_head="tms" in head_re.groupindex,
        )


_SIMPLE_UNIT_KEYS: Final = ("ap", "bp", "as", "bs")
_LONG_UNIT_KEYS: Final = ("ask_price", "bid_price", "ask_size", "bid_size")
_UPBIT_FAST: Final = (
    FastSpelling.of(
        rb'\{"ty":"orderbook","cd":"([A-Za-z0-9._-]{1,80})","tms":(?P<tms>[1-9][0-9]{0,14}),'
        rb'"tas":' + _FAST_NUMBER + rb',"tbs":' + _FAST_NUMBER + rb',"obu":',
        rb"(?:" + _FAST_IGNORED_FIELD + rb")*\}",
        _SIMPLE_UNIT_KEYS,
    ),
    FastSpelling.of(
        rb'\{"type":"orderbook","code":"([A-Za-z0-9._-]{1,80})","timestamp":(?P<tms>[1-9][0-9]{0,14}),'
        rb'"total_ask_size":'
        + _FAST_NUMBER
        + rb',"total_bid_size":'
        + _FAST_NUMBER
        + rb',"orderbook_units":',
        rb"(?:" + _FAST_IGNORED_FIELD + rb")*\}",
        _LONG_UNIT_KEYS,
    ),
)


def _side(units: object, price_key: str, size_key: str, side: str) -> list[Level]:
    """One side of the book as (price, size) tuples, best first (Upbit already sends them in that order).

    Fast path: one comprehension that keeps units whose price and size are both floats (what Upbit's
    serializer writes, exponent notation included) and both positive. orjson has already rejected NaN,
    infinity and overflowing literals, so those floats are finite. If every unit passed, that is the answer;
    anything unusual (padding, integers, wrong types, missing keys) falls back to `_side_strict`, which
    either converts it or names the problem.
    """
    if type(units) is list:
        try:
            levels = [
                (p, s)
                for u in units
                if type(p := u[price_key]) is _float is type(s := u[size_key]) and p > 0 < s
            ]
        except (KeyError, TypeError):
            pass
        else:
            if len(levels) == len(units):
                return levels
    return _side_strict(units, price_key, size_key, side)


def _side_strict(units: object, price_key: str, size_key: str, side: str) -> list[Level]:
    """The reference decoding of one side: unit by unit, with a reason for every rejection.

    - a unit whose price and size are both 0 is padding of an empty side: dropped;
    - a unit with a positive price and size 0 carries no liquidity: dropped;
    - a non-positive price on any other unit, a negative size, a non-number (bools included) or a
      non-finite number makes the frame bad.
    """
    if type(units) is not list:
        raise BadFrame(f"orderbook units are {type(units).__name__}, not a list")
    levels: list[Level] = []
    for i, unit in enumerate(units):
        if type(unit) is not dict:
            raise BadFrame(f"orderbook unit {i} is {type(unit).__name__}, not an object")
        price = _number(unit, price_key, i)
        size = _number(unit, size_key, i)
        if price == 0.0 and size == 0.0:
            continue
        if not price > 0.0:
            raise BadFrame(f"{side} unit {i}: {price_key} {price!r} is not positive")
        if size < 0.0:
            raise BadFrame(f"{side} unit {i}: {size_key} {size!r} is negative")
        if size == 0.0:
            continue
        levels.append((price, size))
    return levels


def _number(unit: dict[str, Any], key: str, index: int) -> float:
    try:
        value = unit[key]
    except KeyError:
        raise BadFrame(f"orderbook unit {index} lacks {key!r}") from None
    kind = type(value)
    if kind is not float and kind is not int:  # `type(...) is`, not isinstance: bool is an int
        raise BadFrame(f"orderbook unit {index}: {key} is {kind.__name__}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise BadFrame(f"orderbook unit {index}: {key} overflows a float") from None
    if not isfinite(number):
        raise BadFrame(f"orderbook unit {index}: {key} is not finite")
    return number


class UpbitLikeProtocol(WholeBooks):
    """Order-book subscription and decoding in Upbit's WebSocket dialect, which Bithumb's public v1 API speaks
    too (`feeder.exchanges.bithumb`): the exchanges differ in name, URL, formats, field order and depth.

    `depth` keeps that many units per side of every book (None: all the frame has); a frame with more than
    `max_levels` units is still a `BadFrame`.
    """

    name: str = "upbit"
    title: ClassVar[str] = "Upbit"  # in error messages
    formats: ClassVar[frozenset[str]] = FORMATS
    fast_spellings: ClassVar[tuple[FastSpelling, ...]] = _UPBIT_FAST

    def __init__(
        self,
        url: str,
        format: str,
        max_symbols_per_connection: int,
        ticket: str | None,
        max_levels: int,
        depth: int | None = None,
    ) -> None:
        if not url.startswith(("wss://", "ws://")):
            raise ValueError(f"{self.title} URL must start with wss:// or ws://, got {url!r}")
        if format not in self.formats:
            raise ValueError(f"{self.title} format must be one of {sorted(self.formats)}, got {format!r}")
        if type(max_symbols_per_connection) is not int or max_symbols_per_connection < 1:
            raise ValueError(
                f"max_symbols_per_connection must be a positive int, got {max_symbols_per_connection!r}"
            )
        if ticket is not None and not ticket:
            raise ValueError("ticket must be a non-empty string or None")
        if depth is not None and (type(depth) is not int or depth < 1):
            raise ValueError(f"{self.title} depth must be a positive int or None, got {depth!r}")
        self.base_url = url
        self.format = format
        self.max_symbols_per_connection = max_symbols_per_connection
        self.ticket = ticket  # fixed ticket (tests); None draws a fresh uuid4 per request
        self.max_levels = max_levels  # more levels a side is a BadFrame
        self.depth = depth
        self._symbols: dict[str, str] = {}  # received code -> validated symbol
        self._fast_symbols: dict[bytes, str] = {}  # the same for the fast path, keyed by the raw code

    # ---- connecting ----------------------------------------------------------------------------------

    def url(self, symbols: Sequence[str]) -> str:
        """Subscriptions go in a request frame, not the URL: the URL is the same for every shard."""
        return self.base_url

    def codes(self, symbols: Sequence[str]) -> list[str]:
        """The request's ``codes``: upper case, validated, duplicates removed."""
        return unique_symbols(symbols)

    def subscribe_frames(self, symbols: Sequence[str], *, ticket: str | None = None) -> list[str | bytes]:
        """The one text frame that subscribes this connection to the order books of `symbols`.

        Sent after every (re)connect: the exchange keeps no subscription state across connections. The
        ticket only identifies the request; a fresh uuid4 is used unless one is given here or to the
        constructor.
        """
        request = [
            {"ticket": ticket or self.ticket or str(uuid.uuid4())},
            {"type": "orderbook", "codes": self.codes(symbols)},
            {"format": self.format},
        ]
        return [orjson.dumps(request).decode()]

    # ---- decoding ------------------------------------------------------------------------------------

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one frame of any format into events: books, error replies, the keep-alive's `Ack`.

        Trade and ticker frames give ``[]``; malformed input raises `BadFrame`.
        """
        if recv_ts is None:
            recv_ts = _now()
        snapshot = self._parse_fast(frame, recv_ts)
        if snapshot is not None:
            return [snapshot]
        obj = load_json(frame)
        if type(obj) is dict:
            event = self._event(obj, recv_ts)
            return [] if event is None else [event]
        if type(obj) is list:  # JSON_LIST / SIMPLE_LIST
            events: list[Event] = []
            for item in obj:
                if type(item) is not dict:
                    raise BadFrame(f"list element is {type(item).__name__}, not an object")
                event = self._event(item, recv_ts)
                if event is not None:
                    events.append(event)
            return events
        raise BadFrame(f"frame is a JSON {type(obj).__name__}, not an object or array")

    def _event(self, obj: dict[str, Any], recv_ts: float) -> Event | None:
        kind = obj.get("ty")
        keys = _SHORT_KEYS
        if kind is None:
            kind = obj.get("type")
            if kind is None:
                return self._control(obj)
            keys = _LONG_KEYS
        if kind != "orderbook":
            if type(kind) is str:
                return None  # trade, ticker, myOrder...: not what an order-book feeder consumes
            raise BadFrame(f"frame type is {type(kind).__name__}, not a string")
        code_key, ts_key, units_key, ask_price, ask_size, bid_price, bid_size = keys

        code = obj.get(code_key)
        if type(code) is not str:
            raise BadFrame(f"orderbook frame without a string {code_key!r}")
        symbol = self._symbols.get(code)
        if symbol is None:
            symbol = self._learn_symbol(code)

        tms = obj.get(ts_key)
        if (type(tms) is not int and type(tms) is not float) or not tms > 0:
            raise BadFrame(f"orderbook frame without a positive numeric {ts_key!r}")

        units = obj.get(units_key)
        asks = _side(units, ask_price, ask_size, "ask")
        bids = _side(units, bid_price, bid_size, "bid")
        check_levels(bids, asks, self.max_levels)
        depth = self.depth
        if depth is not None:
            del asks[depth:], bids[depth:]
        return OrderBookSnapshot(
            symbol, tms / 1000, bids, asks, exchange=self.name, xid=int(tms), recv_ts=recv_ts
        )

    def book_symbol(self, frame: bytes) -> str | None:
        """The book's symbol when `frame` starts like an order book of a code already seen (see the interface)."""
        if type(frame) is not bytes:
            return None
        for spelling in self.fast_spellings:
            head = spelling.head.match(frame)
            if head is not None:
                return self._fast_symbols.get(head[1])
        return None

    def book_sides(self, frame: bytes, recv_ts: float) -> BookSides | None:
        """The fast path's book with its sides written as text by `feeder.exchanges.units_json` (C), when it
        was built and takes the units; None: decode with `parse`."""
        to_sides = units_to_sides
        if to_sides is None or type(frame) is not bytes:
            return None
        found = self._fast_parts(frame)
        if found is None:
            return None
        spelling, head, tail, units = found
        depth = self.depth
        sides = to_sides(units, spelling.unit_keys, spelling.integers, self.max_levels, depth or 0)
        if sides is None:
            return None
        asks_json, bids_json, best_ask, best_bid, _ = sides
        symbol = self._fast_symbols.get(head[1])
        if symbol is None:
            return None  # a code not seen yet: parse learns it
        tms = int((head if spelling.tms_in_head else tail)["tms"])
        return BookSides(symbol, tms / 1000, tms, recv_ts, bids_json, asks_json, best_bid, best_ask)

    def _fast_parts(self, raw: bytes) -> tuple[FastSpelling, re.Match[bytes], re.Match[bytes], bytes] | None:
        """The spelling, head and tail matches and the units of a frame of a fast shape, or None."""
        for spelling in self.fast_spellings:
            head = spelling.head.match(raw)
            if head is not None:
                break
        else:
            return None
        start = head.end()
        end = raw.rfind(b"}]", start) + 2
        if end < 2:
            return None
        tail = spelling.tail.fullmatch(raw, end)
        if tail is None:
            return None
        return spelling, head, tail, raw[start:end]

    def _parse_fast(self, frame: bytes | str, recv_ts: float) -> OrderBookSnapshot | None:
        """The snapshot of an order-book frame of the usual shape, or None to take the general path."""
        raw = frame if type(frame) is bytes else frame_bytes(frame)
        if raw is None:
            return None
        found = self._fast_parts(raw)
        if found is None:
            return None
        spelling, head, tail, units = found
        count = spelling.shapes.get(units.translate(None, spelling.not_shape))
        if count is None or count > self.max_levels:
            return None
        try:
            numbers = orjson.loads(units.translate(_FAST_TO_SPACE, spelling.key_letters))
        except ValueError:
            return None
        # every value > 0; a minus sign is rare (exponents of small sizes), so min() only then
        if not (min(numbers) > 0.0 if b"-" in units else all(numbers)):
            return None  # a zero (padding of an empty side) or a negative value: for the general path
        if spelling.integers and (type(numbers[0]) is not _float or units.count(b".") != len(numbers)):
            numbers = list(map(_float, numbers))  # some written without a decimal point: ints
        depth = self.depth
        if depth is not None and count > depth:
            del numbers[4 * depth :]
        code = head[1]
        symbol = self._fast_symbols.get(code)
        if symbol is None:
            symbol = remember_raw_name(self._fast_symbols, code, self._learn_symbol, _SYMBOL_CACHE_MAX)
        tms = int((head if spelling.tms_in_head else tail)["tms"])
        # numbers: ask price, bid price, ask size, bid size of each unit in turn, so every other number is
        # ask price, ask size, ask price... (and bid price, bid size, ...): zip pairs them up
        ask_numbers = iter(numbers[0::2])
        bid_numbers = iter(numbers[1::2])
        asks: list[Level] = list(zip(ask_numbers, ask_numbers, strict=False))
        bids: list[Level] = list(zip(bid_numbers, bid_numbers, strict=False))
        return OrderBookSnapshot(symbol, tms / 1000, bids, asks, exchange=self.name, xid=tms, recv_ts=recv_ts)

    def _learn_symbol(self, code: str) -> str:
        base, dot, count = code.rpartition(".")
        candidate = base if dot and count.isascii() and count.isdigit() else code
        try:
            symbol = validate_symbol(candidate)
        except InvalidSymbolError:
            raise BadFrame(f"invalid code {code[:70]!r}") from None
        if len(self._symbols) >= _SYMBOL_CACHE_MAX:
            self._symbols.clear()
        self._symbols[code] = symbol
        return symbol

    def _control(self, obj: dict[str, Any]) -> Event:
        """A frame without a type: an error reply, the ``{"status":"UP"}`` keep-alive reply, or garbage."""
        error = obj.get("error")
        if error is not None:
            if type(error) is dict:
                name = error.get("name")
                message = error.get("message", "")
                if type(name) is str and type(message) is str:
                    return ErrorReply(self.name, name, message)
            raise BadFrame("malformed error frame")
        status = obj.get("status")
        if type(status) is str:
            return Ack(None, status)  # the reply to a text PING
        method = obj.get("method", obj.get("mthd"))
        if method == "LIST_SUBSCRIPTIONS":
            return self._listed(obj.get("result", obj.get("rslt")))
        raise BadFrame("frame has no type, error or status")

    def _listed(self, result: object) -> Listed:
        """The order-book codes of a ``LIST_SUBSCRIPTIONS`` reply (either spelling), ``.N`` suffixes dropped."""
        if type(result) is not list:
            raise BadFrame("LIST_SUBSCRIPTIONS reply without a result list")
        codes: set[str] = set()
        for item in result:
            if type(item) is not dict:
                raise BadFrame("LIST_SUBSCRIPTIONS result item is not an object")
            if item.get("type", item.get("ty")) != "orderbook":
                continue
            listed = item.get("codes", item.get("cds"))
            if type(listed) is not list or not all(type(c) is str for c in listed):
                raise BadFrame("LIST_SUBSCRIPTIONS codes are not a list of strings")
            codes.update(c.partition(".")[0] for c in listed)
        return Listed(self.name, frozenset(codes))


class UpbitProtocol(UpbitLikeProtocol):
    """Upbit order-book subscription and decoding.

    `levels` (1, 5, 15 or 30) asks Upbit for that many units per book through the ``CODE.N`` suffix;
    ``None`` leaves Upbit's default (30 units at the time of writing).

    `max_symbols_per_connection` defaults to 100. Upbit documents no limit on codes per request; its limits
    are on connections (5 new per second per IP) and requests (5/s, 100/min per connection). The bound is
    ours: it keeps each connection's frame rate and request small, limits how many books go stale together
    when one connection drops, and still covers all ~700 Upbit markets with a handful of connections that
    open within the 5-per-second budget.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        format: str = "DEFAULT",
        levels: int | None = None,
        max_symbols_per_connection: int = 100,
        ticket: str | None = None,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        if levels is not None and levels not in UNIT_COUNTS:
            raise ValueError(f"Upbit levels must be one of {sorted(UNIT_COUNTS)} or None, got {levels!r}")
        super().__init__(url, format, max_symbols_per_connection, ticket, max_levels)
        self.levels = levels

    def list_frames(self) -> list[str | bytes]:
        """Upbit's ``LIST_SUBSCRIPTIONS`` (since 2024-08-07), in this connection's format: a request in another
        format would switch the connection's stream to it."""
        request = [
            {"ticket": self.ticket or str(uuid.uuid4())},
            {"method": "LIST_SUBSCRIPTIONS"},
            {"format": self.format},
        ]
        return [orjson.dumps(request).decode()]

    def __repr__(self) -> str:
        return f"UpbitProtocol(url={self.base_url!r}, format={self.format!r}, levels={self.levels!r})"

    def codes(self, symbols: Sequence[str]) -> list[str]:
        """The request's ``codes``: upper case, validated, duplicates removed, ``.N`` suffix if `levels`."""
        codes = unique_symbols(symbols)
        if self.levels is not None:
            codes = [f"{code}.{self.levels}" for code in codes]
        return codes


# ---- the descriptor ----------------------------------------------------------------------------------------
class Settings(BaseSettings):
    """Upbit's settings (``MD_UPBIT_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    upbit_symbols: SymbolList = "KRW-BTC,KRW-ETH,KRW-USDT"
    upbit_url: WebSocketUrl = DEFAULT_URL
    upbit_format: Literal["DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST"] = "SIMPLE"
    """SIMPLE sends the same books with shorter keys: fewer bytes to receive and parse."""
    upbit_symbols_per_connection: AtLeastOne = 100
    upbit_levels: Literal[1, 5, 15, 30] = 30
    """Units (levels a side) asked for with ``CODE.N``: since 2025-07-02 Upbit accepts only 1, 5, 15 or 30 and
    answers any other count with 30; its default grew from 15 to 30 on 2025-05-07."""


def _build(settings: FeederSettings) -> UpbitProtocol:
    return UpbitProtocol(
        url=settings.upbit_url,
        format=settings.upbit_format,
        max_symbols_per_connection=settings.upbit_symbols_per_connection,
        levels=settings.upbit_levels,
        max_levels=settings.max_levels,
    )


DESCRIPTOR: Final = ExchangeDescriptor(
    name="upbit",
    default_url=DEFAULT_URL,
    pacing=Pacing(open_rate=5.0, open_burst=5, subscribe_interval=0.25),
    keepalive=KeepAlive(idle_timeout=120.0, ping_interval=10.0, ping_timeout=10.0),
    stall=StallRule(floor=1.0, adaptive=True, gaps=20.0),
    build=_build,
    symbols=lambda settings: split_list(settings.upbit_symbols),
    time_ordered_ids=True,
)
