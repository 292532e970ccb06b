"""OKX v5 public order books (``wss://ws.okx.com:8443/ws/v5/public``, channel ``books``): a snapshot, then updates.

Facts this module relies on (OKX API v5 docs, "WS / Order book channel" and "Connect", read from stored copies
dated 2026-07-07 and 2026-07-08 and an older full-page copy; see tests/data/README.md):

- Subscribe ``{"id":...,"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}``; the reply is
  ``{"id":...,"event":"subscribe","arg":{...},"connId":...}``, a failure ``{"id":...,"event":"error",
  "code":"60012","msg":...,"connId":...}``. ``books`` is 400 levels: a snapshot, then incremental updates
  every 100 ms when the book changed.
- Pushes: ``{"arg":{"channel":"books","instId":...},"action":"snapshot"|"update","data":[{"asks":[...],
  "bids":[...],"ts":"ms","checksum":C,"prevSeqId":P,"seqId":S}]}``. Levels are ``[price, size, "0"
  (deprecated), number of orders]`` strings; size ``"0"`` deletes the price, a changed size replaces it, a
  new price is inserted in order.
- Sequence: an update's ``prevSeqId`` is the previous message's ``seqId``; in a snapshot ``prevSeqId`` is -1.
  After about 60 s without changes an empty update with ``prevSeqId == seqId`` keeps the chain. After
  maintenance the ids may reset: an update with ``seqId < prevSeqId`` that still links (`SequenceRestart`).
- Checksum: deprecated (2026-07-07 copy; the changelog entry is dated 2026-06-23 by third-party notes only):
  the field stays but is fixed to 0. The older copy defines it as the CRC-32, as a signed 32-bit integer, of
  the top 25 bids and asks interleaved ``bid:size:ask:size:...`` (a side with fewer levels is skipped). It is
  verified when non-zero, and 0 means absent.
- Keep-alive and limits: the connection breaks if no subscription is made, or nothing is pushed, for more than
  30 s: send the text ``ping`` when nothing arrived for N < 30 s and expect the text ``pong`` (not JSON).
  3 connection requests per second per IP; 480 subscribe/unsubscribe/login requests per connection per hour;
  fewer than 30 channels per connection recommended for many 50- or 400-level channels; the args of one
  request must total under 64 KB.
- Not from those pages: OKX announces a service upgrade with ``{"event":"notice","code":"64008",...}`` before
  it closes the connection (as OKX client libraries handle it): read as a `ShutdownNotice`.

Choices: ``ping`` every 20 s (under the 30 s limit, with room for a late pong). ``MD_OKX_DEPTH`` (1..400) is
the number of levels a side written to Redis and must not exceed ``MD_MAX_LEVELS`` (building the protocol
fails if it does). 20 symbols per connection by default (OKX recommends fewer than 30 400-level channels),
and at most 20 channels per subscribe request. A resync costs two requests of the 480 an hour.
"""

from __future__ import annotations

import itertools
import zlib
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
    ShutdownNotice,
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

DEFAULT_URL: Final = "wss://ws.okx.com:8443/ws/v5/public"
CHANNEL: Final = "books"
MAX_DEPTH: Final = 400
DEFAULT_SYMBOLS_PER_CONNECTION: Final = 20
MAX_SYMBOLS_PER_CONNECTION: Final = 100
MAX_ARGS_PER_REQUEST: Final = 20
SHUTDOWN_NOTICE_CODE: Final = "64008"
_MAX_BOOKS: Final = 8192
_MAX_TS: Final = 10**15

_str = str
_list = list


def okx_checksum(bids: Sequence[RawLevel], asks: Sequence[RawLevel]) -> int:
    """OKX's checksum of a book: CRC-32 (signed) of ``bid:size:ask:size:...`` over the top 25 levels."""
    parts: list[str] = []
    nb, na = min(len(bids), 25), min(len(asks), 25)
    for i in range(max(nb, na)):
        if i < nb:
            parts += bids[i][:2]
        if i < na:
            parts += asks[i][:2]
    value = zlib.crc32(":".join(parts).encode())
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value


class _Malformed(Exception):
    """A books push of a known instrument but the wrong structure (becomes BadFrame or Resync)."""


def _pairs(levels: object) -> list[RawLevel]:
    """``[[px, sz, "0", orders], ...]`` as (px, sz) text pairs; _Malformed when it is anything else."""
    if type(levels) is not _list:
        raise _Malformed("levels are not a list")
    try:
        pairs = [
            (p, q)
            for level in levels
            if type(level) is _list
            for p, q, _, _ in (level,)
            if type(p) is _str is type(q)
        ]
    except ValueError:
        raise _Malformed("a level is not [price, size, liquidated, orders]") from None
    if len(pairs) != len(levels):
        raise _Malformed("a level is not a list with price and size strings")
    return pairs


class OkxProtocol(IncrementalBooks):
    """OKX ``books`` (400 levels) kept incrementally, checksum verified when sent; see the module docstring."""

    name: str = "okx"
    title = "OKX"
    max_depth = MAX_DEPTH
    max_connection_symbols = MAX_SYMBOLS_PER_CONNECTION
    ping_frame: str | None = "ping"

    def __init__(
        self,
        depth: int = 20,
        url: str = DEFAULT_URL,
        max_symbols_per_connection: int = DEFAULT_SYMBOLS_PER_CONNECTION,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        self._configure(depth, url, max_symbols_per_connection, max_levels)
        self._request_ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"OkxProtocol(depth={self.depth!r}, url={self.base_url!r})"

    # ---- connecting ----------------------------------------------------------------------------------

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        return self._requests("subscribe", symbols)

    def unsubscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        return self._requests("unsubscribe", symbols)

    def _requests(self, op: str, symbols: Sequence[str]) -> list[str | bytes]:
        args = [{"channel": CHANNEL, "instId": symbol} for symbol in unique_symbols(symbols)]
        return [
            self._request(op, args[i : i + MAX_ARGS_PER_REQUEST])
            for i in range(0, len(args), MAX_ARGS_PER_REQUEST)
        ]

    def resync_frames(self, symbol: str) -> list[str | bytes]:
        """Unsubscribe, then subscribe the instrument's ``books`` again: OKX answers with a new snapshot."""
        args = [{"channel": CHANNEL, "instId": validate_symbol(symbol)}]
        return [self._request("unsubscribe", args), self._request("subscribe", args)]

    def _request(self, op: str, args: list[dict[str, str]]) -> str:
        return orjson.dumps({"id": str(next(self._request_ids)), "op": op, "args": args}).decode()

    # ---- decoding ------------------------------------------------------------------------------------

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        """Decode one frame: the book after a snapshot or update (`SequenceRestart` first after an id reset),
        `Resync` when the chain or the checksum broke, acks, errors, the shutdown notice; else `BadFrame`."""
        if frame == b"pong" or frame == "pong":
            return [Ack(None, "pong")]
        if recv_ts is None:
            recv_ts = _now()
        obj = load_json(frame)
        if type(obj) is not dict:
            raise BadFrame(f"frame is a JSON {type(obj).__name__}, not an object")
        action = obj.get("action")
        arg = obj.get("arg")
        if action is None or type(arg) is not dict:
            return self._control(obj)
        if arg.get("channel") != CHANNEL:
            return []  # books-l2-tbt and the like: not subscribed by this protocol
        symbol = arg.get("instId")
        book = self._books.get(symbol) if type(symbol) is _str else None
        if book is None:
            book = self._book(symbol)
        try:
            if action == "update":
                snapshot = False
            elif action == "snapshot":
                snapshot = True
            else:
                raise _Malformed("action is neither snapshot nor update")
            data = obj["data"]
            if type(data) is not _list or not data:
                raise _Malformed("data is not a non-empty list")
            updates = []
            for item in data:
                seq = item["seqId"]
                prev = item["prevSeqId"]
                checksum = item.get("checksum", 0)
                ts = item["ts"]
                if type(seq) is not int or type(prev) is not int or type(checksum) is not int:
                    raise _Malformed("seqId, prevSeqId or checksum is not an integer")
                if type(ts) is not _str or not 0 < (ms := int(ts)) < _MAX_TS:
                    raise _Malformed("ts is not a time in ms")
                updates.append(
                    BookUpdate(
                        book.symbol,
                        ms / 1000,
                        _pairs(item["bids"]),
                        _pairs(item["asks"]),
                        seq,
                        snapshot,
                        prev,
                        checksum,
                    )
                )
        except (_Malformed, KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = f"{book.symbol}: malformed books push ({exc})"
            if book.live:  # an update was lost: the chain is broken
                return [book.reset(reason)]
            raise BadFrame(reason) from None
        events: list[Event] = []
        for update in updates:
            result = book.apply(update)
            if result is None:
                continue
            if type(result) is Resync:
                events.append(result)
                break
            assert type(result) is OrderBookSnapshot
            result.recv_ts = recv_ts
            if book.restarted:
                events.append(
                    SequenceRestart(
                        book.symbol,
                        f"{book.symbol}: seqId {update.seq} after {update.prev_seq} resets the ids",
                    )
                )
            events.append(result)
        return events

    def _book(self, symbol: object) -> IncrementalBook:
        """The book of an instrument seen for the first time (kept)."""
        if type(symbol) is not str:
            raise BadFrame("arg.instId is not a string")
        try:
            validate_symbol(symbol)
        except InvalidSymbolError:
            raise BadFrame(f"invalid instId {symbol[:70]!r}") from None
        if len(self._books) >= _MAX_BOOKS:
            raise BadFrame(f"instId {symbol[:70]!r}: too many books")
        book = self._books[symbol] = IncrementalBook(
            self.name, symbol, chain=Chain.LINKED, depth=self.depth, checksum=okx_checksum
        )
        return book

    @staticmethod
    def _control(obj: dict[str, Any]) -> list[Event]:
        event = obj.get("event")
        if event == "subscribe" or event == "unsubscribe":
            return [Ack(obj.get("id"), event)]
        if event == "error":
            code, message = obj.get("code"), obj.get("msg", "")
            if (type(code) is str or type(code) is int) and type(message) is str:
                return [ErrorReply("okx", str(code), message)]
            raise BadFrame("malformed error reply")
        if event == "notice":
            return [ShutdownNotice("okx")] if obj.get("code") == SHUTDOWN_NOTICE_CODE else []
        if type(event) is str:
            return []  # another event (channel-conn-count...): nothing to do
        if "arg" in obj and "data" in obj:
            return []  # a push without action: books5, bbo-tbt..., not subscribed by this protocol
        raise BadFrame("unknown frame shape")


# ---- the descriptor ----------------------------------------------------------------------------------------
OkxDepth = Annotated[int, Field(ge=1, le=MAX_DEPTH)]
OkxSymbolsPerConnection = Annotated[int, Field(ge=1, le=MAX_SYMBOLS_PER_CONNECTION)]


class Settings(BaseSettings):
    """OKX's settings (``MD_OKX_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    okx_symbols: SymbolList = "BTC-USDT,ETH-USDT"
    okx_url: WebSocketUrl = DEFAULT_URL
    okx_depth: OkxDepth = 20
    """Levels a side written to Redis (1..400, at most MD_MAX_LEVELS) of the 400-level ``books`` channel."""
    okx_symbols_per_connection: OkxSymbolsPerConnection = DEFAULT_SYMBOLS_PER_CONNECTION
    """OKX recommends fewer than 30 400-level channels per connection."""


def _build(settings: FeederSettings) -> OkxProtocol:
    s = settings
    return OkxProtocol(
        depth=s.okx_depth,
        url=s.okx_url,
        max_symbols_per_connection=s.okx_symbols_per_connection,
        max_levels=s.max_levels,
    )


DESCRIPTOR: Final = ExchangeDescriptor(
    name="okx",
    default_url=DEFAULT_URL,
    # 3 connection requests per second per IP; 480 (un)subscribe requests per connection per hour
    pacing=Pacing(open_rate=3.0, open_burst=3, subscribe_interval=0.2, resyncs_per_minute=3),
    # the server cuts a connection that received no subscription or no data for 30 s: ping every 20 s
    keepalive=KeepAlive(idle_timeout=30.0, ping_interval=20.0, ping_timeout=8.0),
    # updates only on change (100 ms), an empty keep-chain update after ~60 s idle: adaptive
    stall=StallRule(floor=1.0, adaptive=True, gaps=20.0),
    build=_build,
    symbols=lambda settings: split_list(settings.okx_symbols),
)
