"""Coinone public WebSocket (``wss://stream.coinone.co.kr``): subscription requests and frame decoding.

Facts this module relies on (docs.coinone.co.kr: "오더북 응답 (ORDERBOOK)", the "Public 웹소켓" guide and
"커넥션 관리 (PING)", as read for tests/data on 2025-05; see the Coinone section of tests/data/README.md):

- A connection opens with ``{"response_type":"CONNECTED","data":{"session_id":...}}``. Each book needs one
  request, ``{"request_type":"SUBSCRIBE","channel":"ORDERBOOK","topic":{"quote_currency":"KRW",
  "target_currency":"BTC"}}`` (``"format":"SHORT"`` for short keys), answered with ``SUBSCRIBED``.
- Symbols are spelled quote first, ``KRW-BTC``, the order of Coinone's v2 public REST path
  ``/public/v2/orderbook/{quote_currency}/{target_currency}``.
- After subscribing the latest book is sent once, then one on every change. The documented frames carry the
  whole book (16 levels a side each time; the docs do not say more): ``{"response_type":"DATA",
  "channel":"ORDERBOOK","data":{"quote_currency","target_currency","timestamp" (ms),"id","asks":[{"price",
  "qty"}],"bids":[...]}}``; SHORT: ``{"r","c","d":{"qc","tc","t","i","a":[{"p","q"}],"b"}}``. Prices and
  quantities are strings. ``id`` is a string of digits; a larger id is a newer book: it is the ``xid``.
- The documented example lists asks from the highest price down (best ask last) and bids from the highest
  down; the order is not promised, so both sides are sorted by price (asks ascending, bids descending), which
  costs next to nothing on an ordered side. A level of quantity 0 is dropped.
- Errors: ``{"response_type":"ERROR","error_code":160012,"message":"Invalid Topic"}`` (160010 Invalid
  Request, 160011 Invalid Type, 160012 Invalid Topic) give ``ErrorReply("coinone", "160012", ...)``.
- Keep-alive: ``{"request_type":"PING"}`` gets ``{"response_type":"PONG"}`` (an `Ack`). The server closes a
  connection 30 minutes after the last PING (and one with no request within 30 minutes of connecting): one
  PING every few minutes is plenty; ours goes every 30 s, the keep-alive interval that also paces the
  WebSocket pings that find a dead TCP connection.
- Limits: at most 20 connections per IP; beyond that the connection is closed with code 4290. No request
  rate or topic limit per connection is documented.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isfinite
from time import time as _now
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import Level, OrderBookSnapshot
from client.settings import AtLeastOne
from feeder.exchanges.base import (
    MAX_LEVELS,
    Ack,
    BadFrame,
    ErrorReply,
    Event,
    ExchangeDescriptor,
    KeepAlive,
    Pacing,
    StallRule,
    SymbolList,
    WebSocketUrl,
    WholeBooks,
    check_levels,
    load_json,
    split_list,
    unique_symbols,
)

if TYPE_CHECKING:
    from feeder.settings import FeederSettings

DEFAULT_URL: Final = "wss://stream.coinone.co.kr"
FORMATS: Final = frozenset({"DEFAULT", "SHORT"})
DEFAULT_DEPTH: Final = 15
PING_FRAME: Final = '{"request_type":"PING"}'
MAX_CONNECTIONS_PER_IP: Final = 20  # documented; the 21st is closed with code 4290
CLOSE_TOO_MANY_CONNECTIONS: Final = 4290

# key names of the two spellings: (response type, channel, data, quote, target, timestamp, id, asks, bids,
# price, quantity)
_LONG: Final = (
    "response_type",
    "channel",
    "data",
    "quote_currency",
    "target_currency",
    "timestamp",
    "id",
    "asks",
    "bids",
    "price",
    "qty",
)
_SHORT: Final = ("r", "c", "d", "qc", "tc", "t", "i", "a", "b", "p", "q")
_SYMBOL_CACHE_MAX: Final = 4096
_MAX_ID_DIGITS: Final = 18  # below 2**63: the id is an int64 in Redis

_str = str
_dict = dict
_float = float
_INF: Final = float("inf")


def _side(levels: object, price_key: str, qty_key: str, side: str) -> list[Level]:
    """One side as (price, size) floats, in the frame's order; zero quantities dropped.

    Fast path: one comprehension over levels of two strings that convert to positive finite floats (``p + q
    < inf`` rejects an infinite value; NaN fails ``> 0``); anything else (a zero quantity, a wrong type, a
    missing key) is decoded again by `_side_strict`, which drops or names it.
    """
    if type(levels) is list:
        try:
            book = [
                (p, q)
                for level in levels
                if type(level) is _dict
                for x, y in ((level[price_key], level[qty_key]),)
                if type(x) is _str is type(y) and (p := _float(x)) > 0 < (q := _float(y)) and p + q < _INF
            ]
        except (KeyError, TypeError, ValueError):
            pass
        else:
            if len(book) == len(levels):
                return book
    return _side_strict(levels, price_key, qty_key, side)


def _side_strict(levels: object, price_key: str, qty_key: str, side: str) -> list[Level]:
    if type(levels) is not list:
        raise BadFrame(f"{side}s are {type(levels).__name__}, not a list")
    book: list[Level] = []
    for i, level in enumerate(levels):
        if type(level) is not dict:
            raise BadFrame(f"{side} {i} is {type(level).__name__}, not an object")
        price = _number(level, price_key, side, i)
        qty = _number(level, qty_key, side, i)
        if not price > 0.0:
            raise BadFrame(f"{side} {i}: price {price!r} is not positive")
        if qty < 0.0:
            raise BadFrame(f"{side} {i}: quantity {qty!r} is negative")
        if qty > 0.0:
            book.append((price, qty))
    return book


def _number(level: dict[str, Any], key: str, side: str, index: int) -> float:
    value = level.get(key)
    if type(value) is not str:
        raise BadFrame(f"{side} {index}: {key} is {type(value).__name__}, not a string")
    try:
        number = float(value)
    except ValueError:
        raise BadFrame(f"{side} {index}: {key} {value[:30]!r} is not a number") from None
    if not isfinite(number):
        raise BadFrame(f"{side} {index}: {key} is not finite")
    return number


class CoinoneProtocol(WholeBooks):
    """Coinone order-book subscription and decoding (see the module docstring).

    `depth` levels per side are kept (best first). `max_symbols_per_connection` defaults to 50: Coinone
    documents no topic limit per connection, but allows only 20 connections per IP, so a connection must
    carry many symbols (20 x 50 covers every KRW market), and each symbol is one request.
    """

    name: str = "coinone"
    ping_frame: str | None = PING_FRAME

    def __init__(
        self,
        url: str = DEFAULT_URL,
        format: str = "DEFAULT",
        depth: int = DEFAULT_DEPTH,
        max_symbols_per_connection: int = 50,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        if not url.startswith(("wss://", "ws://")):
            raise ValueError(f"Coinone URL must start with wss:// or ws://, got {url!r}")
        if format not in FORMATS:
            raise ValueError(f"Coinone format must be one of {sorted(FORMATS)}, got {format!r}")
        if type(depth) is not int or not 1 <= depth <= max_levels:
            raise ValueError(f"Coinone depth must be an int from 1 to {max_levels}, got {depth!r}")
        if type(max_symbols_per_connection) is not int or max_symbols_per_connection < 1:
            raise ValueError(
                f"max_symbols_per_connection must be a positive int, got {max_symbols_per_connection!r}"
            )
        self.base_url = url
        self.format = format
        self.depth = depth
        self.max_symbols_per_connection = max_symbols_per_connection
        self.max_levels = max_levels
        self._symbols: dict[tuple[object, object], str] = {}  # (quote, target) -> validated symbol

    def __repr__(self) -> str:
        return f"CoinoneProtocol(url={self.base_url!r}, format={self.format!r}, depth={self.depth!r})"

    # ---- connecting ----------------------------------------------------------------------------------

    def url(self, symbols: Sequence[str]) -> str:
        """Subscriptions go in request frames: the URL is the same for every shard."""
        return self.base_url

    @staticmethod
    def topic(symbol: str) -> dict[str, str]:
        """``KRW-BTC`` -> ``{"quote_currency": "KRW", "target_currency": "BTC"}``."""
        quote, dash, target = symbol.partition("-")
        if not dash or not quote or not target or "-" in target:
            raise InvalidSymbolError(f"Coinone symbols are QUOTE-TARGET (KRW-BTC), got {symbol!r}")
        return {"quote_currency": quote, "target_currency": target}

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        """One SUBSCRIBE request per symbol (Coinone takes one topic per request), sent after every connect."""
        return self._requests("SUBSCRIBE", symbols)

    def change_frames(
        self, symbols: Sequence[str], added: Sequence[str], removed: Sequence[str]
    ) -> list[str | bytes]:
        """UNSUBSCRIBE the removed symbols, SUBSCRIBE the added ones (each request names one topic)."""
        return [
            *(self._requests("UNSUBSCRIBE", removed) if removed else []),
            *(self._requests("SUBSCRIBE", added) if added else []),
        ]

    def _requests(self, kind: str, symbols: Sequence[str]) -> list[str | bytes]:
        frames: list[str | bytes] = []
        for symbol in unique_symbols(symbols):
            request: dict[str, Any] = {
                "request_type": kind,
                "channel": "ORDERBOOK",
                "topic": self.topic(symbol),
            }
            if self.format == "SHORT":
                request["format"] = "SHORT"
            frames.append(orjson.dumps(request).decode())
        return frames

    def book_symbol(self, frame: bytes) -> str | None:
        """None: every frame is decoded by `parse` as it arrives."""
        return None

    # ---- decoding ------------------------------------------------------------------------------------

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one frame: a book, a control reply (`Ack`), an error (`ErrorReply`); other channels: ``[]``."""
        if recv_ts is None:
            recv_ts = _now()
        obj = load_json(frame)
        if type(obj) is not dict:
            raise BadFrame(f"frame is a JSON {type(obj).__name__}, not an object")
        keys = _LONG
        kind = obj.get("response_type")
        if kind is None:
            keys = _SHORT
            kind = obj.get("r")
        if kind == "DATA":
            channel = obj.get(keys[1])
            if channel != "ORDERBOOK":
                if type(channel) is str:
                    return []  # TICKER, TRADE: not what an order-book feeder consumes
                raise BadFrame("DATA frame without a string channel")
            return [self._book(obj.get(keys[2]), keys, recv_ts)]
        return self._control(obj, kind)

    def _book(self, data: object, keys: tuple[str, ...], recv_ts: float) -> OrderBookSnapshot:
        if type(data) is not dict:
            raise BadFrame("ORDERBOOK frame without a data object")
        _, _, _, quote_key, target_key, ts_key, id_key, asks_key, bids_key, price_key, qty_key = keys
        pair = (data.get(quote_key), data.get(target_key))
        symbol = self._symbols.get(pair)
        if symbol is None:
            symbol = self._learn_symbol(pair)

        ts = data.get(ts_key)
        if (type(ts) is not int and type(ts) is not float) or not 0 < ts < _INF:
            raise BadFrame(f"ORDERBOOK frame without a positive numeric {ts_key!r}")
        book_id = data.get(id_key)
        if (
            type(book_id) is not str
            or not 0 < len(book_id) <= _MAX_ID_DIGITS
            or not (book_id.isascii() and book_id.isdigit())
        ):
            raise BadFrame(f"ORDERBOOK frame without a string of digits {id_key!r}")

        asks = _side(data.get(asks_key), price_key, qty_key, "ask")
        bids = _side(data.get(bids_key), price_key, qty_key, "bid")
        check_levels(bids, asks, self.max_levels)
        asks.sort()  # documented highest first: one reversed run, sorted in linear time
        bids.sort(reverse=True)
        depth = self.depth
        del asks[depth:], bids[depth:]
        return OrderBookSnapshot(
            symbol, ts / 1000, bids, asks, exchange="coinone", xid=int(book_id), recv_ts=recv_ts
        )

    def _learn_symbol(self, pair: tuple[object, object]) -> str:
        quote, target = pair
        if type(quote) is not str or type(target) is not str:
            raise BadFrame("ORDERBOOK frame without string currencies")
        try:
            symbol = validate_symbol(f"{quote}-{target}")
        except InvalidSymbolError:
            raise BadFrame(f"invalid currencies {quote[:30]!r}, {target[:30]!r}") from None
        if len(self._symbols) >= _SYMBOL_CACHE_MAX:
            self._symbols.clear()
        self._symbols[pair] = symbol
        return symbol

    @staticmethod
    def _control(obj: dict[str, Any], kind: object) -> list[Event]:
        if kind == "ERROR":
            code = obj.get("error_code")
            message = obj.get("message", "")
            if (type(code) is int or type(code) is str) and type(message) is str:
                return [ErrorReply("coinone", str(code), message)]
            raise BadFrame("malformed error frame")
        if kind in ("CONNECTED", "SUBSCRIBED", "UNSUBSCRIBED", "PONG"):
            return [Ack(None, kind)]
        if type(kind) is str:
            return []  # a response type this feeder does not use
        raise BadFrame("frame has no string response_type")


# ---- the descriptor ----------------------------------------------------------------------------------------
class Settings(BaseSettings):
    """Coinone's settings (``MD_COINONE_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    coinone_symbols: SymbolList = "KRW-BTC,KRW-ETH"
    coinone_url: WebSocketUrl = DEFAULT_URL
    coinone_format: Literal["DEFAULT", "SHORT"] = "SHORT"
    """SHORT sends the same books with one- and two-letter keys: fewer bytes to receive and parse."""
    coinone_depth: Annotated[int, Field(ge=1, le=MAX_LEVELS)] = DEFAULT_DEPTH
    """Levels per side written (the documented example has 16 a side)."""
    coinone_symbols_per_connection: AtLeastOne = 50


def _build(settings: FeederSettings) -> CoinoneProtocol:
    return CoinoneProtocol(
        url=settings.coinone_url,
        format=settings.coinone_format,
        depth=settings.coinone_depth,
        max_symbols_per_connection=settings.coinone_symbols_per_connection,
        max_levels=max(settings.max_levels, settings.coinone_depth),
    )


DESCRIPTOR: Final = ExchangeDescriptor(
    name="coinone",
    default_url=DEFAULT_URL,
    # no connection rate is documented, only 20 connections per IP at once (the sharding must keep under it);
    # one SUBSCRIBE per symbol, at 20 per second
    pacing=Pacing(open_rate=5.0, open_burst=5, subscribe_interval=0.05),
    # closed 30 minutes after the last PING: a PING every 30 s is far inside that
    keepalive=KeepAlive(idle_timeout=1800.0, ping_interval=30.0, ping_timeout=10.0),
    # books only on change
    stall=StallRule(floor=1.0, adaptive=True, gaps=20.0),
    build=_build,
    symbols=lambda settings: split_list(settings.coinone_symbols),
)
