"""Coinone's side of the simulator: the public WebSocket's requests, replies, orderbook frames and limits.

What the server does, following Coinone's documentation (see `feeder.exchanges.coinone` for the sources):

- one endpoint, ``/`` (anything else: HTTP 404); every frame is a text message of JSON;
- on connect: ``{"response_type":"CONNECTED","data":{"session_id":"<uuid>"}}``;
- past ``max_connections`` (20) connections from one IP, the new connection is closed with code 4290;
- ``{"request_type":"SUBSCRIBE","channel":"ORDERBOOK","topic":{"quote_currency":"KRW",
  "target_currency":"BTC"},"format":"SHORT"}`` (format optional, DEFAULT) gets ``{"response_type":
  "SUBSCRIBED","channel":...,"data":{topic}}``, then the whole book at once and on every change; TICKER and
  TRADE subscriptions are acknowledged and produce nothing; UNSUBSCRIBE stops the channel;
- a book is ``{"response_type":"DATA","channel":"ORDERBOOK","data":{"quote_currency","target_currency",
  "timestamp","id","asks":[{"price","qty"}],"bids":[...]}}`` (SHORT: ``r c d qc tc t i a b p q``), asks
  listed from the highest price down as in the documented example (best ask last), bids from the highest
  down, numbers as shortest decimal strings (``"687.7"``); ``id`` is ``timestamp_ms * 1000 + n``, increasing
  per symbol;
- errors (the connection stays open): unparsable or non-object requests 160010 ``Invalid Request``; an
  unknown request_type, channel or format 160011 ``Invalid Type : <field>``; a bad topic 160012 ``Invalid
  Topic``; ``{"request_type":"PING"}`` gets ``{"response_type":"PONG"}``;
- no server pings; the shutdown fault closes with 1012 (Coinone says connections may be closed when the
  WebSocket is updated).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from exchange_sim.books import Level, RandomWalkBook
from exchange_sim.replay import CapturedFrame, Truth
from exchange_sim.server import ExchangeServer
from exchange_sim.session import CloseRequest, Outgoing, Session, Subscription
from exchange_sim.transport import SimConnection

MAX_CONNECTIONS = 20
CLOSE_TOO_MANY = 4290
CHANNELS = ("ORDERBOOK", "TICKER", "TRADE")
CURRENCY_RE = re.compile(r"[A-Z0-9]{1,20}")
PONG = '{"response_type":"PONG"}'
INVALID_REQUEST = (160010, "Invalid Request")
INVALID_TOPIC = (160012, "Invalid Topic")

BOOK_LEVELS = 16  # levels a side in every ORDERBOOK frame, as in the documented examples


class CoinoneRequestError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(eq=False)
class CoinoneSubscription(Subscription):
    short: bool = False
    quote: str = ""
    target: str = ""
    channel: str = "ORDERBOOK"


def error_frame(code: int, message: str) -> str:
    return orjson.dumps({"response_type": "ERROR", "error_code": code, "message": message}).decode()


def parse_request(data: str | bytes) -> tuple[str, CoinoneSubscription | None]:
    """(request_type, subscription) of one request; PING has no subscription. CoinoneRequestError if bad."""
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CoinoneRequestError(*INVALID_REQUEST) from None
    if not isinstance(request, dict) or "request_type" not in request:
        raise CoinoneRequestError(*INVALID_REQUEST)
    kind = request["request_type"]
    if kind == "PING":
        return kind, None
    if kind not in ("SUBSCRIBE", "UNSUBSCRIBE"):
        raise CoinoneRequestError(160011, "Invalid Type : request_type")
    channel = request.get("channel")
    if channel not in CHANNELS:
        raise CoinoneRequestError(160011, "Invalid Type : channel")
    fmt = request.get("format", "DEFAULT")
    if fmt not in ("DEFAULT", "SHORT"):
        raise CoinoneRequestError(160011, "Invalid Type : format")
    topic = request.get("topic")
    if not isinstance(topic, dict):
        raise CoinoneRequestError(*INVALID_TOPIC)
    quote, target = topic.get("quote_currency"), topic.get("target_currency")
    if not (isinstance(quote, str) and isinstance(target, str)):
        raise CoinoneRequestError(*INVALID_TOPIC)
    if not (CURRENCY_RE.fullmatch(quote) and CURRENCY_RE.fullmatch(target)):
        raise CoinoneRequestError(*INVALID_TOPIC)
    symbol = f"{quote}-{target}"
    return kind, CoinoneSubscription(
        name=f"{channel} {symbol}",
        channel=channel,
        symbol=symbol,
        variant=fmt,
        generated=channel == "ORDERBOOK",
        short=fmt == "SHORT",
        quote=quote,
        target=target,
    )


def _number(value: float) -> str:
    """The shortest decimal string of a float (``687.7``), never exponent notation."""
    text = repr(value)
    return f"{value:.8f}" if "e" in text else text


def encode_orderbook(
    sub: CoinoneSubscription, book: RandomWalkBook, levels: int, book_id: int
) -> tuple[bytes, list[Level], list[Level]]:
    """One DATA frame (asks highest first, as documented) and the (bids, asks) it carries, best first."""
    bids, asks = book.bids[:levels], book.asks[:levels]
    if sub.short:
        p, q = "p", "q"
        data: dict[str, Any] = {"qc": sub.quote, "tc": sub.target, "t": book.timestamp_ms, "i": str(book_id)}
        data["a"] = [{p: _number(a[0]), q: _number(a[1])} for a in reversed(asks)]
        data["b"] = [{p: _number(b[0]), q: _number(b[1])} for b in bids]
        obj: dict[str, Any] = {"r": "DATA", "c": "ORDERBOOK", "d": data}
    else:
        p, q = "price", "qty"
        data = {
            "quote_currency": sub.quote,
            "target_currency": sub.target,
            "timestamp": book.timestamp_ms,
            "id": str(book_id),
        }
        data["asks"] = [{p: _number(a[0]), q: _number(a[1])} for a in reversed(asks)]
        data["bids"] = [{p: _number(b[0]), q: _number(b[1])} for b in bids]
        obj = {"response_type": "DATA", "channel": "ORDERBOOK", "data": data}
    return orjson.dumps(obj), bids, asks


def decode_orderbook(payload: bytes | str) -> tuple[str, Truth] | None:
    """The book in a DATA ORDERBOOK frame (either format), best first, or None (replay truth only)."""
    try:
        obj = orjson.loads(payload)
        short = "r" in obj
        if (
            obj["r" if short else "response_type"] != "DATA"
            or obj["c" if short else "channel"] != "ORDERBOOK"
        ):
            return None
        data = obj["d" if short else "data"]
        keys = ("qc", "tc", "t", "i", "a", "b", "p", "q") if short else _LONG_KEYS
        qc, tc, t, i, a, b, p, q = keys
        asks = sorted((float(x[p]), float(x[q])) for x in data[a] if float(x[q]) > 0)
        bids = sorted(((float(x[p]), float(x[q])) for x in data[b] if float(x[q]) > 0), reverse=True)
        return f"{data[qc]}-{data[tc]}", Truth(bids, asks, int(data[i]), data[t] / 1000.0)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


_LONG_KEYS = ("quote_currency", "target_currency", "timestamp", "id", "asks", "bids", "price", "qty")


class CoinoneServer(ExchangeServer[CoinoneSubscription]):
    """Coinone's public WebSocket at ``ws://host:port`` (path ``/``)."""

    name = "coinone"
    ws_path = ""
    bytes_as_text = True
    server_pings = False
    idle_timeout = 1800.0  # closed 30 minutes after the client's last PING (any request counts here)
    idle_activity = frozenset({"in"})

    def __init__(self, *, max_connections: int | None = MAX_CONNECTIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_connections = max_connections  # per IP; None: no limit
        self._ids: dict[str, tuple[int, int]] = {}  # symbol -> (book update_id, its frame id)
        self.counters["connections_refused"] = 0

    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        if request.path.partition("?")[0] not in ("", "/"):
            return ws.respond(404, "Not Found\n")
        return None

    async def serve_session(self, session: Session[CoinoneSubscription]) -> None:
        limit = self.max_connections
        if limit is not None and sum(s.remote == session.remote for s in self.sessions.values()) > limit:
            self.counters["connections_refused"] += 1
            session.enqueue(CloseRequest(CLOSE_TOO_MANY, "too many connections"))
        else:
            connected = {"response_type": "CONNECTED", "data": {"session_id": str(uuid.uuid4())}}
            session.enqueue(orjson.dumps(connected).decode())
        async for message in session.ws:
            if session.closing:
                continue
            try:
                kind, sub = parse_request(message)
            except CoinoneRequestError as exc:
                session.enqueue(error_frame(exc.code, exc.message))
                continue
            if sub is None:
                session.enqueue(PONG)
                continue
            channel = sub.channel
            topic = {"quote_currency": sub.quote, "target_currency": sub.target}
            if kind == "UNSUBSCRIBE":
                self.unsubscribe(session, [sub.name])
                reply = {"response_type": "UNSUBSCRIBED", "channel": channel, "data": topic}
                session.enqueue(orjson.dumps(reply).decode())
                continue
            reply = {"response_type": "SUBSCRIBED", "channel": channel, "data": topic}
            session.enqueue(orjson.dumps(reply).decode())
            self.subscribe(session, [sub])

    def book_id(self, book: RandomWalkBook) -> int:
        """The frame id of the book's current state: ``timestamp_ms * 1000 + n``, increasing per symbol."""
        last = self._ids.get(book.symbol)
        if last is not None and last[0] == book.update_id:
            return last[1]
        book_id = book.timestamp_ms * 1000 + 1
        if last is not None and book_id <= last[1]:
            book_id = last[1] + 1
        self._ids[book.symbol] = (book.update_id, book_id)
        return book_id

    def encode(
        self,
        session: Session[CoinoneSubscription],
        sub: CoinoneSubscription,
        book: RandomWalkBook,
        initial: bool,
    ) -> bytes:
        book_id = self.book_id(book)
        payload, bids, asks = encode_orderbook(sub, book, BOOK_LEVELS, book_id)
        self.record(sub.symbol, bids, asks, book_id, book.timestamp_ms / 1000.0)
        return payload

    def garbage_payload(self) -> str:
        return '{"response_type":"DATA","channel":"ORDERBOOK","data":{"quote_currency":"KRW","tim'

    def error_items(
        self, session: Session[CoinoneSubscription], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        return [error_frame(INVALID_REQUEST[0] if code is None else code, message or INVALID_REQUEST[1])]

    def shutdown_items(self, session: Session[CoinoneSubscription]) -> list[Outgoing]:
        return [CloseRequest(CloseCode.SERVICE_RESTART, "server updating")]

    def normalise_symbol(self, symbol: str) -> str:
        return symbol.upper()

    def replay_truth(self, frame: CapturedFrame) -> tuple[str, Truth] | None:
        return decode_orderbook(frame.payload)
