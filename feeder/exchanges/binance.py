"""Binance spot WebSocket protocol (partial book depth over combined streams): URLs and frame decoding.

Facts this module relies on (Binance spot WebSocket Streams and WebSocket API documentation):

- A combined-stream URL ``<base>/stream?streams=a/b/c`` subscribes at connect time; every frame then arrives
  wrapped as ``{"stream": "<name>", "data": <payload>}``. Stream names are lower case; at most 1024 streams
  per connection.
- Partial book depth ``<symbol>@depth<5|10|20>[@100ms]`` sends the top N levels as a whole book:
  ``{"lastUpdateId": N, "bids": [["price", "qty"], ...], "asks": [...]}``. Prices and sizes are strings and
  the payload names neither the symbol nor an event time: the symbol comes from the stream name, and the
  time is when the frame was received. No REST snapshot or diff buffering is needed, unlike the diff-depth
  stream (``@depth`` / ``depthUpdate``), which this feeder does not use.
- Control replies: ``{"result": ..., "id": N}`` acknowledges SUBSCRIBE/UNSUBSCRIBE or answers
  LIST_SUBSCRIPTIONS; errors are ``{"error": {"code": C, "msg": ...}, "id": N}`` or the bare
  ``{"code": C, "msg": ..., "id": N}``. A ``serverShutdown`` event announces that the server will close the
  connection.
- Pacing: 300 new connections per 5 minutes per IP; 5 incoming messages per second per connection. The server
  pings every 20 s and drops a client that has not answered for 60 s; a connection lives at most 24 hours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from math import isfinite
from time import time as _now
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import Level, OrderBookSnapshot
from client.settings import PositiveSeconds
from feeder.exchanges.base import (
    MAX_LEVELS,
    Ack,
    BadFrame,
    BookSides,
    ErrorReply,
    Event,
    ExchangeDescriptor,
    KeepAlive,
    Pacing,
    ShutdownNotice,
    StallRule,
    SymbolList,
    WebSocketUrl,
    WebSocketUrls,
    WholeBooks,
    check_levels,
    frame_bytes,
    load_json,
    remember_raw_name,
    split_list,
    unique_symbols,
)
from feeder.exchanges.units_json import pairs_to_sides

if TYPE_CHECKING:
    from feeder.settings import FeederSettings

DEFAULT_URL: Final = "wss://stream.binance.com:9443"
# The same streams on port 443 (through firewalls that block 9443) and on the market-data-only host
# (Binance spot "WebSocket Streams" and "Market Data Only URLs" pages, read 2026-12-02).
FALLBACK_URLS: Final = "wss://stream.binance.com:443,wss://data-stream.binance.vision:443"
DEPTHS: Final = frozenset({5, 10, 20})
SPEEDS: Final = frozenset({"100ms", "1000ms"})
MAX_STREAMS_PER_CONNECTION: Final = 1024  # Binance's limit per connection

# Every partial-depth stream suffix, whatever depth and speed this instance subscribes with: a frame of any
# of them is a whole top-N book, so decoding does not depend on the configuration.
_PARTIAL_DEPTH_KINDS: Final = frozenset(
    f"depth{n}{speed}" for n in (5, 10, 20) for speed in ("", "@100ms", "@1000ms")
)
_IGNORED: Final = ""  # routing result for streams that carry no partial book
_STREAM_CACHE_MAX: Final = 4096  # stream names seen; bounded only against a flood of new names

_str = str
_list = list
_INF: Final = float("inf")


# ---- the fast path -----------------------------------------------------------------------------------------
# Binance writes every partial book the same way: ``{"stream":"<name>","data":{"lastUpdateId":N,"bids":[["p",
# "q"],...],"asks":[...]}}``, no spaces, numbers as strings with a decimal point. Converting 80 such strings
# one by one with float() costs more than orjson spends on the whole frame, so for a frame of exactly that
# shape orjson reads the numbers: one bytes.translate (C speed) turns every quote into a space and deletes the
# brackets and the "asks" key, and what remains, `` p , q , p , q ...``, is parsed as one JSON array of floats.
#
# That is only sound if the frame really has that shape, which is checked on every byte before anything is
# accepted: the head by a regular expression, and everything after it by its *shape*: the same bytes with the
# digits deleted must be exactly ``[[".","."],...],"asks":[[".","."],...]}}`` with 1 to 20 levels a side (a
# dictionary lookup of precomputed shapes). The shape says where every non-digit is but not where the digits
# are; the spaces that replace the quotes settle that: a digit outside the quotes of a number ends up as a
# token of its own, separated by a space from any number, which orjson rejects (two tokens without a comma).
# So each number is a quoted run of digits with exactly one dot, and orjson rejects what is not a JSON number
# (``".5"``, ``"01.5"``, overflow). Digits cannot make a negative or non-finite number; a zero (or an
# underflow to zero) makes ``all()`` false. Any frame that fails a check, or is merely unusual (spaces, other
# fields, escapes, an empty side, an event time), takes the general path below, which decides exactly as
# before: the fast path only ever returns what the general path would (tests/test_protocol_fastpath.py).
_FAST_HEAD: Final = re.compile(
    rb'\{"stream":"([a-z0-9]{1,40}@depth(?:5|10|20)(?:@100ms|@1000ms)?)",'
    rb'"data":\{"lastUpdateId":(0|[1-9][0-9]{0,17}),"bids":'
)
_FAST_MAX_LEVELS: Final = 20
_DIGITS: Final = b"0123456789"
_QUOTE_TO_SPACE: Final = bytes.maketrans(b'"', b" ")
_NOT_NUMBERS: Final = (
    b"[]:}aks"  # deleted with the quotes turned into spaces: what is left is numbers and commas
)


def _fast_shape(bids: int, asks: int) -> bytes:
    def side(n: int) -> bytes:
        return b"[" + b",".join([b'[".","."]'] * n) + b"]"

    return side(bids) + b',"asks":' + side(asks) + b"}}"


# shape of the bytes after the head, digits deleted -> number of bid levels
_FAST_SHAPES: Final = {
    _fast_shape(b, a): b for b in range(1, _FAST_MAX_LEVELS + 1) for a in range(1, _FAST_MAX_LEVELS + 1)
}


def _side(levels: object, side: str) -> list[Level]:
    """One side of a partial book as (price, size) float tuples, best first (as Binance sends them).

    Fast path: one comprehension that converts each ``[price, size]`` list of two strings and keeps it only
    if both numbers are positive and finite (``p + q < inf`` rejects an infinite value; NaN fails ``> 0``).
    If every level passed, that is the answer; otherwise `_side_strict` decodes the side again and names the
    problem. (``for x, y in (level,)`` unpacks the pair only after the type check, so that a two-character
    string or a two-key object is not mistaken for a pair.)
    """
    if type(levels) is list:
        try:
            book = [
                (p, q)
                for level in levels
                if type(level) is _list
                for x, y in (level,)
                if type(x) is _str is type(y) and (p := float(x)) > 0 < (q := float(y)) and p + q < _INF
            ]
        except (ValueError, TypeError):
            pass
        else:
            if len(book) == len(levels):
                return book
    return _side_strict(levels, side)


def _side_strict(levels: object, side: str) -> list[Level]:
    """The reference decoding of one side, level by level, with a reason for every rejection.

    Prices and sizes must be strings holding finite numbers (Binance always quotes them). A level with size 0
    is dropped: partial-book snapshots do not normally contain one, and a zero-size level is no liquidity
    that an engine could trade against. A non-positive price or a negative size makes the frame bad.
    """
    if type(levels) is not list:
        raise BadFrame(f"{side} is {type(levels).__name__}, not a list")
    book: list[Level] = []
    for i, level in enumerate(levels):
        if type(level) is not list or len(level) != 2:
            raise BadFrame(f"{side}[{i}] is not a [price, size] pair")
        price = _number(level[0], side, i, "price")
        size = _number(level[1], side, i, "size")
        if not price > 0.0:
            raise BadFrame(f"{side}[{i}]: price {price!r} is not positive")
        if size < 0.0:
            raise BadFrame(f"{side}[{i}]: size {size!r} is negative")
        if size == 0.0:
            continue
        book.append((price, size))
    return book


def _number(value: object, side: str, index: int, what: str) -> float:
    if type(value) is not str:
        raise BadFrame(f"{side}[{index}]: {what} is {type(value).__name__}, not a string")
    try:
        number = float(value)
    except ValueError:
        raise BadFrame(f"{side}[{index}]: {what} {value[:40]!r} is not a number") from None
    if not isfinite(number):
        raise BadFrame(f"{side}[{index}]: {what} {value[:40]!r} is not finite")
    return number


def _error_name(code: object) -> str | None:
    if type(code) is int or type(code) is str:
        return str(code)
    return None


class BinanceProtocol(WholeBooks):
    """Binance spot partial-book subscription (combined streams) and decoding.

    `depth` (5, 10, 20) and `speed` ("100ms", "1000ms") choose the stream: ``btcusdt@depth20@100ms``, or
    ``btcusdt@depth20`` for 1000 ms, Binance's default speed which takes no suffix.
    """

    name: str = "binance"

    def __init__(
        self,
        depth: int = 20,
        speed: str = "100ms",
        url: str = DEFAULT_URL,
        max_symbols_per_connection: int = MAX_STREAMS_PER_CONNECTION,
        max_levels: int = MAX_LEVELS,
        fallbacks: Sequence[str] = (),
    ) -> None:
        if type(depth) is not int or depth not in DEPTHS:
            raise ValueError(f"Binance depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if speed not in SPEEDS:
            raise ValueError(f"Binance speed must be one of {sorted(SPEEDS)}, got {speed!r}")
        if not url.startswith(("wss://", "ws://")):
            raise ValueError(f"Binance URL must start with wss:// or ws://, got {url!r}")
        if (
            type(max_symbols_per_connection) is not int
            or not 1 <= max_symbols_per_connection <= MAX_STREAMS_PER_CONNECTION
        ):
            raise ValueError(
                f"max_symbols_per_connection must be 1..{MAX_STREAMS_PER_CONNECTION}, "
                f"got {max_symbols_per_connection!r}"
            )
        self.depth = depth
        self.speed = speed
        self.base_url = url.rstrip("/")
        self.fallbacks = [u.rstrip("/") for u in fallbacks if u.rstrip("/") != self.base_url]
        self.max_symbols_per_connection = max_symbols_per_connection
        self._suffix = f"@depth{depth}" if speed == "1000ms" else f"@depth{depth}@{speed}"
        self.max_levels = max_levels  # more levels a side is a BadFrame
        self._changes = 0  # subscription changes made at run time (their request ids)
        self._streams: dict[str, str] = {}  # stream name -> symbol, or _IGNORED
        self._fast_streams: dict[bytes, str] = {}  # the same for the fast path, keyed by the raw name

    def __repr__(self) -> str:
        return f"BinanceProtocol(depth={self.depth!r}, speed={self.speed!r}, url={self.base_url!r})"

    # ---- connecting ----------------------------------------------------------------------------------

    def stream_names(self, symbols: Sequence[str]) -> list[str]:
        """Lower-case stream names for `symbols` (validated, duplicates removed), e.g. ``btcusdt@depth20@100ms``."""
        names = [symbol.lower() + self._suffix for symbol in unique_symbols(symbols)]
        if len(names) > MAX_STREAMS_PER_CONNECTION:
            raise ValueError(
                f"{len(names)} streams on one connection: Binance allows at most {MAX_STREAMS_PER_CONNECTION}"
            )
        return names

    def url(self, symbols: Sequence[str]) -> str:
        """The combined-stream URL that subscribes to every symbol's partial book at connect time."""
        return f"{self.base_url}/stream?streams={'/'.join(self.stream_names(symbols))}"

    def fallback_urls(self, symbols: Sequence[str]) -> list[str]:
        """The same combined stream on the fallback endpoints (port 443, data-stream.binance.vision)."""
        path = f"/stream?streams={'/'.join(self.stream_names(symbols))}"
        return [base + path for base in self.fallbacks]

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        """Nothing to send: the combined-stream URL from `url` already subscribes.

        Sending a SUBSCRIBE as well would only spend the 5 messages/s control budget for a duplicate. Use
        `subscribe_request` to change the subscription of an open connection.
        """
        self.stream_names(symbols)  # same validation as url(), so bad input fails in the same place
        return []

    def subscribe_request(self, symbols: Sequence[str], request_id: int, method: str = "SUBSCRIBE") -> str:
        """A ``SUBSCRIBE`` (or ``UNSUBSCRIBE``) control frame for `symbols`; Binance answers
        ``{"result": null, "id": request_id}``."""
        if type(request_id) is not int or request_id < 0:
            raise ValueError(f"request_id must be a non-negative int, got {request_id!r}")
        request = {"method": method, "params": self.stream_names(symbols), "id": request_id}
        return orjson.dumps(request).decode()

    def change_frames(
        self, symbols: Sequence[str], added: Sequence[str], removed: Sequence[str]
    ) -> list[str | bytes]:
        """``UNSUBSCRIBE`` the removed streams and ``SUBSCRIBE`` the added ones on the open connection (two
        messages at most: well inside Binance's 5 a second); the next reconnect's URL names the new set."""
        self._changes += 1
        frames: list[str | bytes] = []
        if removed:
            frames.append(self.subscribe_request(removed, 2 * self._changes, "UNSUBSCRIBE"))
        if added:
            frames.append(self.subscribe_request(added, 2 * self._changes + 1))
        return frames

    # ---- decoding ------------------------------------------------------------------------------------

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one frame into events: a partial book, an ack, an error reply, a shutdown notice.

        Streams of other kinds give ``[]``; malformed input raises `BadFrame`.
        """
        if recv_ts is None:
            recv_ts = _now()
        snapshot = self._parse_fast(frame, recv_ts)
        if snapshot is not None:
            return [snapshot]
        obj = load_json(frame)
        if type(obj) is not dict:
            raise BadFrame(f"frame is a JSON {type(obj).__name__}, not an object")
        stream = obj.get("stream")
        if stream is None:
            event = self._control(obj)
            return [] if event is None else [event]
        data = obj.get("data")
        if type(stream) is not str or type(data) is not dict:
            raise BadFrame("combined-stream frame without a string 'stream' and an object 'data'")
        symbol = self._streams.get(stream)
        if symbol is None:
            symbol = self._route(stream)
        if not symbol:
            if stream == "!serverShutdown" or data.get("e") == "serverShutdown":
                return [_shutdown(data)]
            return []  # bookTicker, aggTrade, kline, diff depth...: not the partial books this feeder uses

        xid = data.get("lastUpdateId")
        if type(xid) is not int or xid < 0:
            raise BadFrame(f"{stream}: no non-negative integer lastUpdateId")
        bids = _side(data.get("bids"), "bids")
        asks = _side(data.get("asks"), "asks")
        check_levels(bids, asks, self.max_levels)
        timestamp = recv_ts
        event_ms = data.get("E")  # absent on spot partial books; used if a payload carries one
        if event_ms is not None:
            if (type(event_ms) is not int and type(event_ms) is not float) or not event_ms > 0:
                raise BadFrame(f"{stream}: event time E is not a positive number")
            timestamp = event_ms / 1000
        return [
            OrderBookSnapshot(symbol, timestamp, bids, asks, exchange="binance", xid=xid, recv_ts=recv_ts)
        ]

    def book_symbol(self, frame: bytes) -> str | None:
        """The partial book's symbol when `frame` starts like one of a stream already routed (see the interface)."""
        if type(frame) is not bytes:
            return None
        head = _FAST_HEAD.match(frame)
        if head is None:
            return None
        return self._fast_streams.get(head[1]) or None  # unknown (first frame) or not a partial book: None

    def book_sides(self, frame: bytes, recv_ts: float) -> BookSides | None:
        """The fast path's book with its sides written as text by `feeder.exchanges.units_json` (C), when it
        was built and takes them; None: decode with `parse`."""
        to_sides = pairs_to_sides
        if to_sides is None or type(frame) is not bytes:
            return None
        head = _FAST_HEAD.match(frame)
        if head is None:
            return None
        symbol = self._fast_streams.get(head[1])
        if not symbol:  # a stream not seen yet (parse learns it), or one that carries no partial book
            return None
        sides = to_sides(frame[head.end() :], self.max_levels)
        if sides is None:
            return None
        bids_json, asks_json, best_bid, best_ask, _ = sides
        return BookSides(symbol, recv_ts, int(head[2]), recv_ts, bids_json, asks_json, best_bid, best_ask)

    def _parse_fast(self, frame: bytes | str, recv_ts: float) -> OrderBookSnapshot | None:
        """The snapshot of a partial-book frame of the usual shape, or None to take the general path."""
        raw = frame if type(frame) is bytes else frame_bytes(frame)
        if raw is None:
            return None
        head = _FAST_HEAD.match(raw)
        if head is None:
            return None
        rest = raw[head.end() :]
        bid_count = _FAST_SHAPES.get(rest.translate(None, _DIGITS))
        if bid_count is None or bid_count > self.max_levels:
            return None
        try:
            numbers = orjson.loads(b"[" + rest.translate(_QUOTE_TO_SPACE, _NOT_NUMBERS) + b"]")
        except ValueError:
            return None
        if not all(numbers):
            return None  # a zero: the general path drops the level or rejects the frame
        stream = head[1]
        symbol = self._fast_streams.get(stream)
        if symbol is None:
            symbol = remember_raw_name(self._fast_streams, stream, self._route, _STREAM_CACHE_MAX)
        if not symbol:
            return None
        pairs = iter(numbers)
        levels: list[Level] = list(zip(pairs, pairs, strict=False))
        return OrderBookSnapshot(
            symbol,
            recv_ts,
            levels[:bid_count],
            levels[bid_count:],
            exchange="binance",
            xid=int(head[2]),
            recv_ts=recv_ts,
        )

    def _route(self, stream: str) -> str:
        """Map a stream name to the symbol of its partial book, or `_IGNORED` for any other stream."""
        if stream.startswith("!"):
            routed = _IGNORED  # market-wide streams (!ticker@arr...) and the !serverShutdown event
        else:
            name, at, kind = stream.partition("@")
            if not name or not at or not kind:
                raise BadFrame(f"unknown stream name {stream[:70]!r}")
            if kind in _PARTIAL_DEPTH_KINDS:
                try:
                    routed = validate_symbol(name.upper())
                except InvalidSymbolError:
                    raise BadFrame(f"invalid symbol in stream name {stream[:70]!r}") from None
            else:
                routed = _IGNORED
        if len(self._streams) >= _STREAM_CACHE_MAX:
            self._streams.clear()
        self._streams[stream] = routed
        return routed

    @staticmethod
    def _control(obj: dict[str, Any]) -> Event | None:
        """A frame without the combined-stream wrapper: a reply to a control message, or an event."""
        if "result" in obj and "id" in obj:
            return Ack(obj["id"], obj["result"])  # SUBSCRIBE/UNSUBSCRIBE ack, LIST_SUBSCRIPTIONS reply
        error = obj.get("error")
        if error is not None:
            if type(error) is dict:
                name = _error_name(error.get("code"))
                message = error.get("msg", "")
                if name is not None and type(message) is str:
                    return ErrorReply("binance", name, message)
            raise BadFrame("malformed error reply")
        if "code" in obj and "msg" in obj:
            name = _error_name(obj["code"])
            message = obj["msg"]
            if name is not None and type(message) is str:
                return ErrorReply("binance", name, message)
            raise BadFrame("malformed error reply")
        event = obj.get("e")
        if event == "serverShutdown":
            return _shutdown(obj)
        if "lastUpdateId" in obj:
            raise BadFrame("partial book without the combined-stream wrapper: no symbol to route it to")
        if type(event) is str:
            return None  # an event of another kind from a raw (unwrapped) stream
        raise BadFrame("unknown frame shape")


def _shutdown(event: dict[str, Any]) -> ShutdownNotice:
    event_ms = event.get("E")
    if (type(event_ms) is int or type(event_ms) is float) and event_ms > 0:
        return ShutdownNotice("binance", event_time=event_ms / 1000)
    return ShutdownNotice("binance")


# ---- the descriptor ----------------------------------------------------------------------------------------
def _streams_per_connection(value: int) -> int:
    if not 1 <= value <= MAX_STREAMS_PER_CONNECTION:
        raise ValueError(f"Binance allows 1 to {MAX_STREAMS_PER_CONNECTION} streams per connection")
    return value


StreamsPerConnection = Annotated[int, AfterValidator(_streams_per_connection)]


class Settings(BaseSettings):
    """Binance's settings (``MD_BINANCE_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    binance_symbols: SymbolList = "BTCUSDT,ETHUSDT"
    binance_url: WebSocketUrl = DEFAULT_URL
    binance_fallback_urls: WebSocketUrls = FALLBACK_URLS
    """Endpoints tried in turn when MD_BINANCE_URL keeps failing to connect (empty: none); only used while
    MD_BINANCE_URL is one of Binance's own hosts."""
    binance_symbols_per_connection: StreamsPerConnection = MAX_STREAMS_PER_CONNECTION
    binance_depth: Literal[5, 10, 20] = 20
    binance_speed: Literal["100ms", "1000ms"] = "100ms"
    binance_max_lifetime: PositiveSeconds = 23 * 3600.0
    """Seconds before a Binance connection is replaced (Binance cuts at 24 h); the new one opens first."""


def _build(settings: FeederSettings) -> BinanceProtocol:
    return BinanceProtocol(
        depth=settings.binance_depth,
        speed=settings.binance_speed,
        url=settings.binance_url,
        max_symbols_per_connection=settings.binance_symbols_per_connection,
        max_levels=settings.max_levels,
        fallbacks=split_list(settings.binance_fallback_urls) if _official(settings.binance_url) else [],
    )


def _official(url: str) -> bool:
    """MD_BINANCE_URL is one of Binance's own hosts: only then are the fallbacks tried. A URL pointing
    elsewhere (a proxy, the simulator) means Binance must not be reached directly."""
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith((".binance.com", ".binance.vision"))


DESCRIPTOR: Final = ExchangeDescriptor(
    name="binance",
    default_url=DEFAULT_URL,
    pacing=Pacing(open_rate=1.0, open_burst=10, subscribe_interval=0.25),
    # the server pings every 20 s and drops a client silent for 60 s; our pings only catch a dead TCP link
    keepalive=KeepAlive(idle_timeout=60.0, ping_interval=20.0, ping_timeout=20.0),
    # partial books are pushed every 100 ms (or 1 s), changed or not: 3 missed pushes, at least 0.5 s
    stall=StallRule(floor=0.5, cadence=lambda settings: 1.0 if settings.binance_speed == "1000ms" else 0.1),
    build=_build,
    symbols=lambda settings: split_list(settings.binance_symbols),
    max_lifetime=lambda settings: settings.binance_max_lifetime,
)
