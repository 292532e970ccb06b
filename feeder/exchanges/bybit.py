"""Bybit v5 public spot order books (``wss://stream.bybit.com/v5/public/spot``): a snapshot, then deltas.

Facts this module relies on (Bybit's docs repository, github.com/bybit-exchange/docs, newest stored commit
``072c197d0c11`` of 2026-07-24: ``docs/v5/websocket/public/orderbook.mdx`` and the connect page
``/v5/ws/connect``; see tests/data/README.md):

- Topic ``orderbook.{depth}.{SYMBOL}``; spot depths 1 (pushed every 10 ms), 50 (20 ms), 200 (100 ms since
  2026-03-18, 200 ms before) and 1000 (200 ms). A ``snapshot`` arrives first after subscribing, then
  ``delta``s; a new ``snapshot`` (Bybit re-sends one if there is a problem on its side) replaces the book.
  Depth 1 is snapshot-only: every push is a whole book (pushed again with the same ``u`` after 3 s unchanged).
- A delta's size ``"0"`` deletes the level, an unknown price is inserted, a known one updated. Levels are
  ``["price", "size"]`` strings; snapshot bids best (highest) first, asks lowest first. No checksum.
- ``u`` is the update id, consecutive per topic; ``u=1`` is a snapshot "due to the restart of the service":
  overwrite the local book (`SequenceRestart`). ``seq`` is the cross sequence, comparable across depths, not
  the chain: it stays out of the book's id. ``ts`` is when the data was generated (ms; the book's time),
  ``cts`` the matching engine's time.
- Frames: ``{"topic":...,"ts":...,"type":"snapshot"|"delta","data":{"s":SYMBOL,"b":[...],"a":[...],
  "u":N,"seq":M},"cts":...}``; spot writes ``ts`` before ``type``.
- Requests ``{"req_id":...,"op":"subscribe"|"unsubscribe","args":[topics]}``: spot takes at most 10 args per
  request, and the args must stay under 21,000 characters. The reply is ``{"success":true,"ret_msg":
  "subscribe","conn_id":...,"req_id":...,"op":"subscribe"}``. No failed-subscribe reply is documented:
  ``"success":false`` is read as an `ErrorReply` named after its ``op``, with ``ret_msg`` as the message.
- Keep-alive: send ``{"op":"ping"}`` every 20 s (recommended); the spot pong is ``{"success":true,"ret_msg":
  "pong","conn_id":...,"op":"ping"}``. With no ping-pong and no data the server cuts after 10 minutes.
- Limits: 500 connections per 5 minutes per WebSocket domain.

Choices: ``MD_BYBIT_DEPTH`` (1..200) is the number of levels a side written to Redis; the stream subscribed is
the smallest depth that holds them (1 for 1, 50 for 2..50, 200 for 51..200). It must not exceed
``MD_MAX_LEVELS``: building the protocol fails if it does (a book is never silently cut shorter than asked).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from time import time as _now
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import OrderBookSnapshot
from feeder.exchanges.base import (
    MAX_LEVELS,
    Ack,
    BadFrame,
    ErrorReply,
    Event,
    ExchangeDescriptor,
    IncrementalBooks,
    KeepAlive,
    Pacing,
    SequenceRestart,
    StallRule,
    SymbolList,
    WebSocketUrl,
    load_json,
    split_list,
    unique_symbols,
)
from feeder.incremental_book import BookUpdate, Chain, IncrementalBook, RawLevel, Resync

if TYPE_CHECKING:
    from feeder.settings import FeederSettings

DEFAULT_URL: Final = "wss://stream.bybit.com/v5/public/spot"
STREAM_DEPTHS: Final = (1, 50, 200, 1000)  # the spot depths Bybit publishes
MAX_DEPTH: Final = 200  # levels a side this feeder writes at most (the 1000-level stream is not used)
MAX_ARGS_PER_REQUEST: Final = 10  # spot's limit per subscribe request
MAX_ARGS_CHARS: Final = 21_000  # the args array must be shorter than this
DEFAULT_SYMBOLS_PER_CONNECTION: Final = 50
MAX_SYMBOLS_PER_CONNECTION: Final = 1000
_MAX_BOOKS: Final = 8192  # books kept at most: only a flood of unknown topics would reach it
_IGNORED: Final = None
_MAX_TS: Final = 10**15  # ms: year 33658; a larger integer is not a time (nor a float)

_str = str
_list = list


def stream_depth(depth: int) -> int:
    """The smallest Bybit spot depth that holds `depth` levels a side (1 stays 1: the snapshot-only stream)."""
    for candidate in STREAM_DEPTHS:
        if depth <= candidate:
            return candidate
    raise ValueError(f"Bybit depth must be at most {STREAM_DEPTHS[-1]}, got {depth!r}")


class _Malformed(Exception):
    """A book frame of the right topic but the wrong structure (internal: becomes BadFrame or Resync)."""


def _pairs(levels: object) -> list[RawLevel]:
    """``[["price", "size"], ...]`` as (price, size) text pairs; _Malformed when it is anything else."""
    if type(levels) is not _list:
        raise _Malformed("levels are not a list")
    try:
        pairs = [
            (p, q)
            for level in levels
            if type(level) is _list
            for p, q in (level,)
            if type(p) is _str is type(q)
        ]
    except ValueError:  # a level of another length
        raise _Malformed("a level is not a [price, size] pair") from None
    if len(pairs) != len(levels):
        raise _Malformed("a level is not a [price, size] pair of strings")
    return pairs


class BybitProtocol(IncrementalBooks):
    """Bybit spot order books (``orderbook.{50|200|1}.SYMBOL``), kept incrementally; see the module docstring."""

    name: str = "bybit"
    title = "Bybit"
    max_depth = MAX_DEPTH
    max_connection_symbols = MAX_SYMBOLS_PER_CONNECTION
    ping_frame: str | None = '{"op":"ping"}'

    def __init__(
        self,
        depth: int = 20,
        url: str = DEFAULT_URL,
        max_symbols_per_connection: int = DEFAULT_SYMBOLS_PER_CONNECTION,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        self._configure(depth, url, max_symbols_per_connection, max_levels)
        self.stream_depth = stream_depth(depth)
        self._prefix = f"orderbook.{self.stream_depth}."
        self._topics: dict[object, IncrementalBook | None] = {}  # topic -> book, or _IGNORED
        self._request_ids = itertools.count(1)

    def __repr__(self) -> str:
        return (
            f"BybitProtocol(depth={self.depth!r}, stream_depth={self.stream_depth!r}, url={self.base_url!r})"
        )

    # ---- connecting ----------------------------------------------------------------------------------

    def topic(self, symbol: str) -> str:
        return self._prefix + symbol

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        """Subscribe requests of at most 10 topics each (Bybit spot's limit)."""
        return self._requests("subscribe", symbols)

    def unsubscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        return self._requests("unsubscribe", symbols)

    def _requests(self, op: str, symbols: Sequence[str]) -> list[str | bytes]:
        topics = [self.topic(symbol) for symbol in unique_symbols(symbols)]
        return [
            self._request(op, topics[i : i + MAX_ARGS_PER_REQUEST])
            for i in range(0, len(topics), MAX_ARGS_PER_REQUEST)
        ]

    def resync_frames(self, symbol: str) -> list[str | bytes]:
        """Unsubscribe, then subscribe the symbol's topic again: Bybit answers with a new snapshot."""
        topic = [self.topic(validate_symbol(symbol))]
        return [self._request("unsubscribe", topic), self._request("subscribe", topic)]

    def _request(self, op: str, topics: list[str]) -> str:
        request = {"req_id": str(next(self._request_ids)), "op": op, "args": topics}
        return orjson.dumps(request).decode()

    # ---- decoding ------------------------------------------------------------------------------------

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one frame: the book after a snapshot or delta (`SequenceRestart` first after ``u=1``),
        `Resync` when the chain broke, an ack or error reply; `BadFrame` for a malformed frame."""
        if recv_ts is None:
            recv_ts = _now()
        obj = load_json(frame)
        if type(obj) is not dict:
            raise BadFrame(f"frame is a JSON {type(obj).__name__}, not an object")
        topic = obj.get("topic")
        if topic is None:
            return self._control(obj)
        try:
            book = self._topics[topic]
        except KeyError:
            book = self._route(topic)
        except TypeError:  # an unhashable topic
            raise BadFrame("topic is not a string") from None
        if book is None:
            return []  # another topic (another depth, trades...): not the books this protocol keeps
        try:
            data = obj["data"]
            kind = obj["type"]
            ts = obj["ts"]
            seq = data["u"]
            bids = _pairs(data["b"])
            asks = _pairs(data["a"])
            if data["s"] != book.symbol:
                raise _Malformed(f"data.s is not {book.symbol}")
            if type(seq) is not int or seq < 0 or type(ts) is not int or not 0 < ts < _MAX_TS:
                raise _Malformed("u or ts is not a positive integer")
            if kind == "delta":
                snapshot = False
            elif kind == "snapshot":
                snapshot = True
            else:
                raise _Malformed("type is neither snapshot nor delta")
        except (_Malformed, KeyError, TypeError) as exc:
            reason = f"{topic}: malformed book frame ({exc})"
            if book.live:  # an update was lost: the chain is broken
                return [book.reset(reason)]
            raise BadFrame(reason) from None
        result = book.apply(BookUpdate(book.symbol, ts / 1000, bids, asks, seq, snapshot))
        if result is None:
            return []
        if type(result) is Resync:
            return [result]
        assert type(result) is OrderBookSnapshot
        result.recv_ts = recv_ts
        if book.restarted:
            return [
                SequenceRestart(book.symbol, f"{topic}: snapshot u={seq} restarts the update ids"),
                result,
            ]
        return [result]

    def _route(self, topic: object) -> IncrementalBook | None:
        """The book of a topic seen for the first time (remembered), or None for a topic of another kind."""
        if type(topic) is not str:
            raise BadFrame("topic is not a string")
        book: IncrementalBook | None = _IGNORED
        if topic.startswith(self._prefix):
            symbol = topic[len(self._prefix) :]
            try:
                validate_symbol(symbol)
            except InvalidSymbolError:
                raise BadFrame(f"invalid symbol in topic {topic[:70]!r}") from None
            book = self._books.get(symbol)
            if book is None:
                if len(self._books) >= _MAX_BOOKS:
                    raise BadFrame(f"topic {topic[:70]!r}: too many books")
                book = self._books[symbol] = IncrementalBook(
                    self.name, symbol, chain=Chain.CONSECUTIVE, depth=self.depth
                )
        if len(self._topics) >= _MAX_BOOKS:
            self._topics.clear()
        self._topics[topic] = book
        return book

    @staticmethod
    def _control(obj: dict[str, Any]) -> list[Event]:
        """A reply: subscribe/unsubscribe acks, the pong, errors."""
        success = obj.get("success")
        op = obj.get("op")
        message = obj.get("ret_msg", "")
        if success is True:
            return [Ack(obj.get("req_id"), message)]
        if success is False:
            name = op if type(op) is str and op else "error"
            return [ErrorReply("bybit", name, message if type(message) is str else repr(message)[:200])]
        if op == "pong":  # the pong shape of other categories (option, spread), if a server sends it
            return [Ack(obj.get("req_id"), "pong")]
        raise BadFrame("unknown frame shape")


# ---- the descriptor ----------------------------------------------------------------------------------------
BybitDepth = Annotated[int, Field(ge=1, le=MAX_DEPTH)]
BybitSymbolsPerConnection = Annotated[int, Field(ge=1, le=MAX_SYMBOLS_PER_CONNECTION)]


class Settings(BaseSettings):
    """Bybit's settings (``MD_BYBIT_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    bybit_symbols: SymbolList = "BTCUSDT,ETHUSDT"
    bybit_url: WebSocketUrl = DEFAULT_URL
    bybit_depth: BybitDepth = 20
    """Levels a side written to Redis (1..200, at most MD_MAX_LEVELS); the stream is orderbook.1, .50 or .200."""
    bybit_symbols_per_connection: BybitSymbolsPerConnection = DEFAULT_SYMBOLS_PER_CONNECTION


def _build(settings: FeederSettings) -> BybitProtocol:
    s = settings
    return BybitProtocol(
        depth=s.bybit_depth,
        url=s.bybit_url,
        max_symbols_per_connection=s.bybit_symbols_per_connection,
        max_levels=s.max_levels,
    )


DESCRIPTOR: Final = ExchangeDescriptor(
    name="bybit",
    default_url=DEFAULT_URL,
    # 500 connections per 5 minutes per domain; requests are not rate-limited in the docs: 10 per second
    pacing=Pacing(open_rate=500 / 300, open_burst=5, subscribe_interval=0.1),
    # the server cuts a connection without ping-pong and data after 10 minutes; {"op":"ping"} every 20 s
    keepalive=KeepAlive(idle_timeout=600.0, ping_interval=20.0, ping_timeout=10.0),
    # deltas are pushed only when the book changed: a quiet book is silent (depth 1 repeats every 3 s)
    stall=StallRule(floor=1.0, adaptive=True, gaps=20.0),
    build=_build,
    symbols=lambda settings: split_list(settings.bybit_symbols),
)
