"""Bithumb public WebSocket v1 (``wss://ws-api.bithumb.com/websocket/v1``): request building and frame decoding.

Bithumb's public v1 API speaks Upbit's dialect, so this module is `feeder.exchanges.upbit`'s protocol with
Bithumb's name, URL, formats and limits. Facts (apidocs.bithumb.com v2.1.5 pages 호가 (orderbook), 요청 포맷,
웹소켓 에러 and 연결 관리, and the current 기본 정보 page, as read for tests/data on 2025-05; see the Bithumb
section of tests/data/README.md):

- One request per connection, a JSON array ``[{"ticket": ...}, {"type": "orderbook", "codes": [...]},
  {"format": "DEFAULT" | "SIMPLE"}]``; codes are upper case, quote first (``KRW-BTC``). The request's
  optional ``level`` (price grouping, default 1) is not sent.
- Every ``orderbook`` frame is a whole book (no deltas, no sequence number, no checksum): ``type``, ``code``,
  ``total_ask_size``, ``total_bid_size``, ``orderbook_units`` (``ask_price``, ``bid_price``, ``ask_size``,
  ``bid_size``), ``level``, ``timestamp`` (ms), ``stream_type``, in that order in the documented example;
  SIMPLE names them ``ty cd tas tbs obu ap bp as bs lv tms st`` (no SIMPLE orderbook example is published:
  SIMPLE frames are assumed to keep the DEFAULT order). The example writes prices as integers
  (``"ask_price":478800``): integers and decimals are both accepted. The ``timestamp`` is the book's ordering
  id (``xid``), as on Upbit. A ``.N`` suffix on a received code (the example request's ``"KRW-ETH.3"``,
  unexplained by the page) is stripped.
- Depth: the example has 15 units; the maximum is not documented. `BithumbProtocol` keeps ``depth`` units a
  side (default 15, at most 30: Upbit's largest, and the simulator's) and drops the rest.
- Errors: ``{"error": {"name": ..., "message": ...}}`` (WRONG_FORMAT, NO_TICKET, NO_TYPE, NO_CODES,
  INVALID_PARAM); the text ``PING`` is answered with ``{"status":"UP"}`` (an `Ack`).
- Frame type: not documented. Upbit sends binary frames, and third-party browser clients of this endpoint
  convert a ``Blob`` (a binary frame) to text, so binary is what the simulator sends; text is accepted too.
- Pacing: 10 connection requests per second per IP (over that: HTTP 429, and continued excess can block the
  IP for 10 minutes). Keep-alive: the server closes a connection after about 120 s with no data either way;
  WebSocket pings suffice (the text ``PING`` is not needed). Books are sent only on change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.settings import AtLeastOne
from feeder.exchanges.base import (
    MAX_LEVELS,
    ExchangeDescriptor,
    KeepAlive,
    Pacing,
    StallRule,
    SymbolList,
    WebSocketUrl,
    split_list,
)
from feeder.exchanges.upbit import (
    _FAST_IGNORED_FIELD,
    _FAST_NUMBER,
    _LONG_UNIT_KEYS,
    _SIMPLE_UNIT_KEYS,
    FastSpelling,
    UpbitLikeProtocol,
)

if TYPE_CHECKING:
    from feeder.settings import FeederSettings

DEFAULT_URL: Final = "wss://ws-api.bithumb.com/websocket/v1"
FORMATS: Final = frozenset({"DEFAULT", "SIMPLE"})
DEFAULT_DEPTH: Final = 15  # the documented example's units
MAX_DEPTH: Final = 30  # not documented: Upbit's largest book, and what the simulator generates

_TMS: Final = rb"(?P<tms>[1-9][0-9]{0,14})"
_IGNORED: Final = rb"(?:" + _FAST_IGNORED_FIELD + rb")*"

# The fast path (see `feeder.exchanges.upbit`): the documented order (timestamp after the units), and
# Upbit's order (timestamp first) in case Bithumb's serializer writes it so; numbers with or without a dot.
_BITHUMB_FAST: Final = (
    FastSpelling.of(
        rb'\{"type":"orderbook","code":"([A-Za-z0-9._-]{1,80})","total_ask_size":' + _FAST_NUMBER + rb","
        rb'"total_bid_size":' + _FAST_NUMBER + rb',"orderbook_units":',
        _IGNORED + rb',"timestamp":' + _TMS + _IGNORED + rb"\}",
        _LONG_UNIT_KEYS,
        integers=True,
    ),
    FastSpelling.of(
        rb'\{"ty":"orderbook","cd":"([A-Za-z0-9._-]{1,80})","tas":' + _FAST_NUMBER + rb","
        rb'"tbs":' + _FAST_NUMBER + rb',"obu":',
        _IGNORED + rb',"tms":' + _TMS + _IGNORED + rb"\}",
        _SIMPLE_UNIT_KEYS,
        integers=True,
    ),
    FastSpelling.of(
        rb'\{"type":"orderbook","code":"([A-Za-z0-9._-]{1,80})","timestamp":' + _TMS + rb","
        rb'"total_ask_size":'
        + _FAST_NUMBER
        + rb',"total_bid_size":'
        + _FAST_NUMBER
        + rb',"orderbook_units":',
        _IGNORED + rb"\}",
        _LONG_UNIT_KEYS,
        integers=True,
    ),
    FastSpelling.of(
        rb'\{"ty":"orderbook","cd":"([A-Za-z0-9._-]{1,80})","tms":' + _TMS + rb","
        rb'"tas":' + _FAST_NUMBER + rb',"tbs":' + _FAST_NUMBER + rb',"obu":',
        _IGNORED + rb"\}",
        _SIMPLE_UNIT_KEYS,
        integers=True,
    ),
)


class BithumbProtocol(UpbitLikeProtocol):
    """Bithumb order-book subscription and decoding (see the module docstring).

    `depth`: units kept per side (1 to 30, default 15). `max_symbols_per_connection` defaults to 100:
    Bithumb documents no limit per connection; the bound is ours, as Upbit's.
    """

    name: str = "bithumb"
    title: ClassVar[str] = "Bithumb"
    formats: ClassVar[frozenset[str]] = FORMATS
    fast_spellings: ClassVar[tuple[FastSpelling, ...]] = _BITHUMB_FAST

    def __init__(
        self,
        url: str = DEFAULT_URL,
        format: str = "DEFAULT",
        depth: int = DEFAULT_DEPTH,
        max_symbols_per_connection: int = 100,
        ticket: str | None = None,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        if type(depth) is not int or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"Bithumb depth must be an int from 1 to {MAX_DEPTH}, got {depth!r}")
        super().__init__(url, format, max_symbols_per_connection, ticket, max_levels, depth)

    def __repr__(self) -> str:
        return f"BithumbProtocol(url={self.base_url!r}, format={self.format!r}, depth={self.depth!r})"


# ---- the descriptor ----------------------------------------------------------------------------------------
class Settings(BaseSettings):
    """Bithumb's settings (``MD_BITHUMB_*``); part of `feeder.settings.FeederSettings`."""

    model_config = SettingsConfigDict(env_prefix="MD_", env_file=".env", extra="ignore")

    bithumb_symbols: SymbolList = "KRW-BTC,KRW-ETH"
    bithumb_url: WebSocketUrl = DEFAULT_URL
    bithumb_format: Literal["DEFAULT", "SIMPLE"] = "DEFAULT"
    """DEFAULT is the documented (and default) format; SIMPLE has shorter keys but no published example."""
    bithumb_depth: Annotated[int, Field(ge=1, le=MAX_DEPTH)] = DEFAULT_DEPTH
    """Units per side written (the documented example has 15; the maximum is not documented: 30 is ours)."""
    bithumb_symbols_per_connection: AtLeastOne = 100


def _build(settings: FeederSettings) -> BithumbProtocol:
    return BithumbProtocol(
        url=settings.bithumb_url,
        format=settings.bithumb_format,
        depth=settings.bithumb_depth,
        max_symbols_per_connection=settings.bithumb_symbols_per_connection,
        max_levels=settings.max_levels,
    )


DESCRIPTOR: Final = ExchangeDescriptor(
    name="bithumb",
    default_url=DEFAULT_URL,
    # 10 connection requests per second per IP; one request frame per connection.
    pacing=Pacing(open_rate=10.0, open_burst=10, subscribe_interval=0.25),
    # closed after ~120 s idle: WebSocket pings every 10 s keep it open and find a dead TCP connection
    keepalive=KeepAlive(idle_timeout=120.0, ping_interval=10.0, ping_timeout=10.0),
    # books only on change, like Upbit's
    stall=StallRule(floor=1.0, adaptive=True, gaps=20.0),
    build=_build,
    symbols=lambda settings: split_list(settings.bithumb_symbols),
    time_ordered_ids=True,
)
