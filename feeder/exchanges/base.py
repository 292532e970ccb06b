"""What every exchange module provides: the protocol interface, the events it decodes, and its descriptor.

An exchange protocol is pure code (no I/O, no clock): it says where to connect (`url`) and what to send
(`subscribe_frames`) for a list of symbols, and turns one received frame into events (`parse`):

- `OrderBookSnapshot`: a whole book;
- `Ack`: a reply to one of our requests (a subscription confirmed, a keep-alive answered);
- `ErrorReply`: the exchange answered with an error;
- `ShutdownNotice`: the server announced that it will close this connection soon;
- `Resync` (incremental books only, `feeder.incremental_book`): the local copy of one symbol's book broke its
  chain or failed a check: the book is not live until a verified snapshot arrives (`resync_frames` asks for one);
- `Listed`: the exchange's list of this connection's subscriptions (to confirm a missing symbol);
- `SequenceRestart`: the exchange restarted a book's ordering id (Bybit ``u=1``, an OKX ``seqId`` reset): the
  stored book's id must stop guarding against the new, lower ids (the snapshot follows in the same events).

`parse` raises only `BadFrame` (the frame is malformed: not JSON, wrong types, non-finite numbers, an invalid
symbol...); the connection layer counts it and carries on, since one garbage frame must not take a connection
down. Everything that knows time (keep-alive, pacing, retries) lives in `feeder.connection`.

An `ExchangeDescriptor` is everything the feeder needs to know about one exchange besides its protocol: its
name, its default URL, its limits and pacing, the lifetime and keep-alive rules of its connections, its
settings, and how to build its protocol from them. Each exchange module exports one (``DESCRIPTOR``); the
registry (`feeder.exchanges.registry`) lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Protocol

import orjson
from pydantic import AfterValidator

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import OrderBookSnapshot
from feeder.incremental_book import IncrementalBook, Resync

if TYPE_CHECKING:
    from feeder.settings import FeederSettings


class BadFrame(ValueError):
    """A received frame that cannot be decoded; the message is a short reason."""


# --------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Ack:
    """A reply to a request of ours: Binance ``{"result": ..., "id": N}``, Upbit's ``{"status": "UP"}``."""

    request_id: Any = None
    result: Any = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply from the exchange (not a decoding problem on our side).

    ``name`` is the exchange's own identifier of the error: Upbit's error name (``"INVALID_PARAM"``) or
    Binance's numeric code as a string (``"2"``), so that callers can compare it without caring which type
    the exchange used.
    """

    exchange: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.exchange} error {self.name}: {self.message}"


@dataclass(frozen=True, slots=True)
class ShutdownNotice:
    """The server will close this connection soon (Binance's ``serverShutdown``): replace it now."""

    exchange: str
    event_time: float | None = None  # epoch seconds of the announcement, when the event carried one


@dataclass(frozen=True, slots=True)
class SequenceRestart:
    """A verified snapshot of `symbol` starts a new sequence (its id is below the last one applied)."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class Listed:
    """The exchange's own list of what this connection is subscribed to (Upbit's ``LIST_SUBSCRIPTIONS``)."""

    exchange: str
    symbols: frozenset[str]


Event = OrderBookSnapshot | Ack | ErrorReply | ShutdownNotice | Resync | SequenceRestart | Listed


class BookSides(NamedTuple):
    """A whole book with its sides as text already: each side exactly what ``orjson.dumps`` writes for its
    ``[(price, size), ...]`` floats (best first), as the writer would store them (`encode_book_sides`).
    What `book_sides` returns instead of a snapshot, for a frame the writer takes undecoded (a named tuple:
    made once per written book, it costs a third of a frozen dataclass)."""

    symbol: str
    timestamp: float  # epoch seconds
    xid: int
    recv_ts: float
    bids_json: bytes
    asks_json: bytes
    best_bid: float
    best_ask: float


# --------------------------------------------------------------------------------------------- protocol
class ExchangeProtocol(Protocol):
    """What the connection layer needs from an exchange protocol."""

    name: str
    """The exchange name used in Redis keys and on snapshots (``"upbit"``, ``"binance"``)."""

    max_symbols_per_connection: int
    """How many symbols the sharding layer may put on one connection."""

    def url(self, symbols: Sequence[str]) -> str:
        """The WebSocket URL to open for these symbols."""
        ...

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        """Frames to send right after connecting (and after every reconnect); may be empty."""
        ...

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one received frame into events; raise `BadFrame` (nothing else) when it is malformed."""
        ...

    ping_frame: str | None
    """A keep-alive message the exchange expects from clients (Bybit ``{"op":"ping"}``, OKX ``ping``), sent
    every keep-alive interval; None: WebSocket pings only."""

    def change_frames(
        self, symbols: Sequence[str], added: Sequence[str], removed: Sequence[str]
    ) -> list[str | bytes]:
        """Frames that change an open connection's subscription to `symbols` (`added` and `removed` are the
        difference), without reconnecting: ``md subscribe`` / ``md unsubscribe`` at run time."""
        ...

    def list_frames(self) -> list[str | bytes]:
        """Frames that ask the exchange which symbols this connection is subscribed to (answered with a
        `Listed` event), to confirm a missing symbol; empty when the exchange has no such request."""
        ...

    def fallback_urls(self, symbols: Sequence[str]) -> list[str]:
        """Other endpoints serving the same streams, tried in turn when `url` keeps failing to connect."""
        ...

    def resync_frames(self, symbol: str) -> list[str | bytes]:
        """Frames that make the exchange send a new snapshot of `symbol` on the open connection (after a
        `Resync`); empty: the connection is replaced instead (every symbol gets a new snapshot)."""
        ...

    def forget(self, symbols: Sequence[str]) -> None:
        """The connection of these symbols ended: drop any state kept per symbol (an incremental book)."""
        ...

    def book_symbol(self, frame: bytes) -> str | None:
        """The symbol of the book `frame` carries, judged from its head alone (cheap), or None.

        None means "parse it now": a control frame, an error, a stream seen for the first time, anything of
        an unusual shape. A symbol lets the connection hand the frame over undecoded (the writer decodes it
        with `parse` only if no newer frame of that symbol replaced it first), and says nothing about the
        rest of the frame: `parse` still decides whether it is a valid book. A protocol of incremental books
        always returns None: each of its frames must be applied, in order.
        """
        ...

    def book_sides(self, frame: bytes, recv_ts: float) -> BookSides | None:
        """The book of a frame `book_symbol` named, with its sides as stored text, when this protocol can
        write that text straight from the frame's bytes (cheaper than `parse` and encoding the floats); None:
        decode it with `parse`, which also decides whether it is malformed. Whatever it returns, `parse` of
        the same frame gives the same book (tests/unit/test_units_json.py)."""
        ...


# --------------------------------------------------------------------------------------------- descriptor
@dataclass(frozen=True)
class Pacing:
    """How fast the exchange lets one IP open connections and send requests on one of them."""

    open_rate: float  # new connections per second
    open_burst: int  # that many may open at once (in any window of open_burst / open_rate seconds)
    subscribe_interval: float  # seconds between two request frames on one connection
    resyncs_per_minute: int = 20
    """Incremental books: how many resubscriptions one connection may send a minute; past that it is replaced
    (OKX allows 480 subscribe/unsubscribe requests per connection per hour, and a resync costs two)."""


@dataclass(frozen=True)
class KeepAlive:
    """The exchange's keep-alive facts (documented) and our client pings that fit them.

    Client pings find a dead TCP connection; they are kept well inside what the exchange tolerates and loose
    enough that a busy feeder does not cut a healthy connection. Stalls are found sooner by `StallRule`.
    """

    idle_timeout: float | None  # the server closes a connection silent (or unanswering) for this long
    ping_interval: float  # our pings, unless MD_PING_INTERVAL says otherwise
    ping_timeout: float  # a pong later than this: the connection is dead (unless MD_PING_TIMEOUT says)


@dataclass(frozen=True)
class StallRule:
    """When an open connection that delivers nothing counts as stalled: its books go not-live, it is replaced.

    A stream that pushes on a fixed cadence (Binance's partial books: every 100 ms or 1 s, changed or not) is
    stalled after `beats` missed pushes; one that sends only changes (Upbit) after `gaps` times its observed
    mean gap between frames, so that a busy connection gone silent is caught within a second or two and a
    connection of quiet codes never is (its pings still are). Never sooner than `floor` seconds.
    """

    floor: float
    cadence: Callable[[FeederSettings], float | None] = lambda settings: None
    beats: int = 3
    adaptive: bool = False
    gaps: float = 20.0


@dataclass(frozen=True)
class ExchangeDescriptor:
    """One exchange as the feeder sees it; see the module docstring."""

    name: str
    default_url: str
    pacing: Pacing
    keepalive: KeepAlive
    stall: StallRule
    build: Callable[[FeederSettings], ExchangeProtocol]
    """The protocol, configured from the feeder's settings (which include the exchange's own)."""
    symbols: Callable[[FeederSettings], list[str]]
    """The symbols the settings ask this exchange for."""
    max_lifetime: Callable[[FeederSettings], float | None] = lambda settings: None
    """Seconds after which a connection is replaced before the exchange cuts it (None: no limit)."""
    time_ordered_ids: bool = False
    """The exchange's ordering id of a book is a time in ms (Upbit's timestamp): Redis refuses one too far
    ahead of its clock, which would otherwise outrank every later book."""


# --------------------------------------------------------------------------------------------- helpers
class WholeBooks:
    """The keep-alive and resync members of a protocol whose every book frame is a whole book (Upbit,
    Binance...): no client keep-alive message, nothing to resynchronise, no state per symbol."""

    ping_frame: str | None = None

    def change_frames(
        self, symbols: Sequence[str], added: Sequence[str], removed: Sequence[str]
    ) -> list[str | bytes]:
        """A request that replaces the connection's subscription (Upbit, Bithumb: a new request replaces the
        old one, and each code starts again with a snapshot)."""
        return self.subscribe_frames(symbols)

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        raise NotImplementedError

    def list_frames(self) -> list[str | bytes]:
        return []

    def fallback_urls(self, symbols: Sequence[str]) -> list[str]:
        return []

    def resync_frames(self, symbol: str) -> list[str | bytes]:
        return []

    def forget(self, symbols: Sequence[str]) -> None:
        return None

    def book_sides(self, frame: bytes, recv_ts: float) -> BookSides | None:
        return None  # decoded with parse


class IncrementalBooks:
    """What the protocols of incremental books (Bybit, OKX) share: their checked configuration, one
    `IncrementalBook` per symbol kept across connections, and the members that follow from it (one URL for
    any symbols, no deferred decoding, no fallback endpoint, no subscription listing)."""

    name: str
    title: str  # the exchange's name as people write it, for messages
    max_depth: int  # levels a side the exchange's stream can give
    max_connection_symbols: int  # the most symbols one connection may carry

    def _configure(self, depth: int, url: str, max_symbols_per_connection: int, max_levels: int) -> None:
        title, setting = self.title, f"MD_{self.name.upper()}_DEPTH"
        if type(depth) is not int or not 1 <= depth <= self.max_depth:
            raise ValueError(f"{title} depth ({setting}) must be 1..{self.max_depth}, got {depth!r}")
        if depth > max_levels:
            raise ValueError(
                f"{setting}={depth} is more than MD_MAX_LEVELS={max_levels} levels a side: "
                "lower the one or raise the other"
            )
        if not url.startswith(("wss://", "ws://")):
            raise ValueError(f"{title} URL must start with wss:// or ws://, got {url!r}")
        limit = self.max_connection_symbols
        if type(max_symbols_per_connection) is not int or not 1 <= max_symbols_per_connection <= limit:
            raise ValueError(
                f"max_symbols_per_connection must be 1..{limit}, got {max_symbols_per_connection!r}"
            )
        self.depth = depth
        self.base_url = url.rstrip("/")
        self.max_symbols_per_connection = max_symbols_per_connection
        self._books: dict[str, IncrementalBook] = {}  # symbol -> its book (kept across connections)

    def url(self, symbols: Sequence[str]) -> str:
        unique_symbols(symbols)
        return self.base_url

    def change_frames(
        self, symbols: Sequence[str], added: Sequence[str], removed: Sequence[str]
    ) -> list[str | bytes]:
        """Unsubscribe the removed books (their local copies forgotten), subscribe the added ones (each
        starts with a snapshot)."""
        frames: list[str | bytes] = []
        if removed:
            frames += self.unsubscribe_frames(removed)
            self.forget(removed)
        if added:
            frames += self.subscribe_frames(added)
        return frames

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        raise NotImplementedError

    def unsubscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        raise NotImplementedError

    def forget(self, symbols: Sequence[str]) -> None:
        """The connection ended: its books are unknown until their next snapshot (the objects stay, so that
        the highest id seen survives and a lower snapshot later is known as a restart)."""
        for symbol in symbols:
            book = self._books.get(symbol.strip().upper())
            if book is not None:
                book.reset("connection closed")

    def fallback_urls(self, symbols: Sequence[str]) -> list[str]:
        return []  # no other endpoint of the same streams is documented

    def list_frames(self) -> list[str | bytes]:
        return []  # the exchange has no request that lists a connection's subscriptions

    def book_symbol(self, frame: bytes) -> str | None:
        return None  # every update must be applied, in order

    def book_sides(self, frame: bytes, recv_ts: float) -> BookSides | None:
        return None  # never asked: book_symbol names no frame


def load_json(frame: bytes | str) -> Any:
    """The JSON value of a frame; BadFrame when it is not JSON."""
    try:
        return orjson.loads(frame)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise BadFrame(f"not JSON: {str(exc)[:100]}") from None


def frame_bytes(frame: object) -> bytes | None:
    """A frame that is not `bytes` as bytes, for a fast path; None: leave it to the general path.

    Text, bytearray or memoryview convert (orjson takes them all, so the general path does); anything not
    bytes-like, or text with a lone surrogate, does not.
    """
    try:
        return frame.encode() if isinstance(frame, str) else memoryview(frame).tobytes()  # type: ignore[arg-type]
    except (TypeError, UnicodeEncodeError):
        return None


def remember_raw_name(cache: dict[bytes, str], raw: bytes, resolve: Callable[[str], str], limit: int) -> str:
    """`resolve` of a name seen as raw bytes, remembered under those bytes (bounded by `limit` entries).

    The fast paths look a frame's stream name or code up before decoding anything; only the first sight of a
    name decodes and resolves it (validation, routing). The bound only guards against a stream of new names.
    """
    resolved = resolve(raw.decode())
    if len(cache) >= limit:
        cache.clear()
    cache[raw] = resolved
    return resolved


def unique_symbols(symbols: Sequence[str]) -> list[str]:
    """Upper-cased, validated symbols without duplicates, in order: what a subscription may contain."""
    if isinstance(symbols, str):
        raise TypeError("symbols must be a sequence of str, not one str")
    out: list[str] = []
    seen: set[str] = set()
    for symbol in symbols:
        if not isinstance(symbol, str):
            raise InvalidSymbolError(f"symbol must be a str, not {type(symbol).__name__}")
        checked = validate_symbol(symbol.strip().upper())
        if checked not in seen:
            seen.add(checked)
            out.append(checked)
    if not out:
        raise ValueError("no symbols to subscribe to")
    return out


MAX_LEVELS = 50
"""Levels per side a decoded book may have by default (exchanges send at most 20 or 30): a frame with more is
not a book this feeder asked for, and one of 80,000 levels must not reach Redis."""


def check_levels(bids: Sequence[object], asks: Sequence[object], limit: int) -> None:
    """BadFrame when a side has more than `limit` levels."""
    if len(bids) > limit or len(asks) > limit:
        raise BadFrame(f"{len(bids)} bids / {len(asks)} asks: more than {limit} levels a side")


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [item for item in value.split(",") if item]


def _symbol_list(value: str) -> str:
    """A comma-separated symbols setting, upper-cased, validated, without duplicates (settings validators)."""
    symbols = [s.strip().upper() for s in value.split(",") if s.strip()]
    for symbol in symbols:
        validate_symbol(symbol)
    return ",".join(dict.fromkeys(symbols))


def _websocket_url(value: str) -> str:
    """A ws:// or wss:// URL setting, without a trailing slash (settings validators)."""
    if not re.match(r"wss?://[^/\s]+", value):
        raise ValueError("must be a ws:// or wss:// URL")
    return value.rstrip("/")


def _websocket_urls(value: str) -> str:
    """A comma-separated list of ws:// or wss:// URLs (settings validators); may be empty."""
    return ",".join(_websocket_url(u.strip()) for u in value.split(",") if u.strip())


def books_in(events: Iterable[Event]) -> list[OrderBookSnapshot]:
    """The books among `events` (tests, benchmarks and tools that want the books of a frame only)."""
    return [event for event in events if type(event) is OrderBookSnapshot]


# Field types of the exchanges' settings, with their checks.
SymbolList = Annotated[str, AfterValidator(_symbol_list)]
"""Comma-separated symbols: upper-cased, validated, duplicates dropped."""
WebSocketUrl = Annotated[str, AfterValidator(_websocket_url)]
"""A ws:// or wss:// URL, without a trailing slash."""
WebSocketUrls = Annotated[str, AfterValidator(_websocket_urls)]
"""Comma-separated ws:// or wss:// URLs (may be empty)."""
