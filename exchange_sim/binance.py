"""Binance spot's side of the simulator: combined streams, partial-book frames and JSON control messages.

What the server does, following Binance's documentation and the frames in ``tests/data/`` (frames/, recordings/):

- ``/stream?streams=a/b/c`` (combined: each frame ``{"stream":name,"data":payload}``), ``/stream`` with no
  streams (subscribe later), ``/ws`` and ``/ws/a/b`` (raw: the payload alone). Other paths: HTTP 404;
- partial book streams ``<symbol>@depth<5|10|20>[@100ms|@1000ms]`` get frames
  ``{"lastUpdateId":N,"bids":[["price","size"],…],"asks":[…]}`` with 8-decimal strings, ``lastUpdateId``
  strictly increasing per symbol. Every subscription gets the current book at once, then one frame per
  update (``rate`` per second), and, as Binance does, the same book again whenever its stream's interval
  (100 ms, or 1 s without the suffix) passed without an update (``binance_cadence``). Other well-formed stream names
  (``@trade``, ``@bookTicker``, diff ``@depth``…) are accepted and produce nothing;
- control messages: ``SUBSCRIBE``, ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY`` /
  ``GET_PROPERTY`` ``combined``; replies ``{"result":…,"id":N}``; bad requests
  ``{"error":{"code":2,"msg":…},"id":N}``; unparsable JSON ``{"code":3,"msg":"Invalid JSON: …","id":null}``;
- more than ``max_streams`` (1024) streams: the **handshake is rejected** with HTTP 400 when the URL asks for
  them, and a ``SUBSCRIBE`` that would go over gets a code 2 error reply (nothing is subscribed, the connection
  stays open);
- more than ``max_incoming_per_second`` (5) incoming messages within one second (pings, pongs and control
  messages all count): the connection is failed with close code 1008 and the TCP connection closed;
- a WebSocket ping every ``ping_interval`` (20 s); a client that sends nothing back for ``ping_timeout``
  (60 s) is dropped;
- the shutdown fault sends ``{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":ms}}`` (raw
  connections: the payload alone) and keeps serving.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import websockets.http11
from websockets.http11 import Request, Response

from exchange_sim.books import RandomWalkBook
from exchange_sim.replay import CapturedFrame, Truth
from exchange_sim.server import ExchangeServer
from exchange_sim.session import Outgoing, Session, Subscription
from exchange_sim.transport import SimConnection

MAX_STREAMS = 1024
STREAM_RE = re.compile(r"[a-z0-9]+@[A-Za-z0-9_@.]+|![A-Za-z0-9_@.]+")
DEPTH_RE = re.compile(r"([a-z0-9]+)@depth(5|10|20)(?:@(?:100|1000)ms)?")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_UNKNOWN_METHOD = (
    "Invalid request: unknown variant `{}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
    "`LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
)


@dataclass(eq=False)
class BinanceSubscription(Subscription):
    depth: int = 0  # 5, 10 or 20 for partial book streams; 0 for streams the simulator does not generate


def parse_stream(name: str, *, combined: bool = True) -> BinanceSubscription | None:
    """A subscription for a stream name, or None if the name is not a valid Binance stream name."""
    if not STREAM_RE.fullmatch(name):
        return None
    m = DEPTH_RE.fullmatch(name)
    if m is None:
        return BinanceSubscription(
            name=name, symbol=name.partition("@")[0].upper(), realtime=False, generated=False
        )
    return BinanceSubscription(
        name=name,
        symbol=m.group(1).upper(),
        variant=(name, combined),
        depth=int(m.group(2)),
        cadence=0.1 if name.endswith("@100ms") else 1.0,
    )


class HandshakeError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_path(path: str, *, max_streams: int = MAX_STREAMS) -> tuple[bool, list[str]]:
    """(combined, stream names) of a connection URL path; HandshakeError for a URL Binance would refuse."""
    parts = urlsplit(path)
    route = parts.path.rstrip("/")
    if route == "/stream":
        combined = True
        joined = parse_qs(parts.query).get("streams", [""])[-1]
    elif route == "/ws" or route.startswith("/ws/"):
        combined = False
        joined = route[4:]
    else:
        raise HandshakeError(404, "Not Found")
    names = [n for n in joined.split("/") if n]
    if len(names) > max_streams:
        raise HandshakeError(400, f"Too many streams: {len(names)} > {max_streams}")
    for name in names:
        if not STREAM_RE.fullmatch(name):
            raise HandshakeError(400, f"Invalid request: invalid stream name {name!r}")
    return combined, list(dict.fromkeys(names))


def encode_depth(
    book: RandomWalkBook, depth: int, stream: str | None
) -> tuple[bytes, list[tuple[float, float]], list[tuple[float, float]]]:
    """One partial-book frame (wrapped for a combined stream when ``stream`` is given) and its levels."""
    data = {"lastUpdateId": book.update_id, "bids": book.bid_strs[:depth], "asks": book.ask_strs[:depth]}
    payload = orjson.dumps(data if stream is None else {"stream": stream, "data": data})
    return payload, book.bids[:depth], book.asks[:depth]


def decode_depth(payload: bytes | str) -> tuple[str, Truth] | None:
    """The book in a combined partial-depth frame, or None (diff depth, other streams, raw frames)."""
    try:
        obj = orjson.loads(payload)
        m = DEPTH_RE.fullmatch(obj["stream"])
        if m is None:
            return None
        data = obj["data"]
        bids = [(float(p), float(q)) for p, q in data["bids"]]
        asks = [(float(p), float(q)) for p, q in data["asks"]]
        # No event time in a partial-depth frame: timestamp 0 means "stamp it when it is sent".
        return m.group(1).upper(), Truth(bids, asks, int(data["lastUpdateId"]), 0.0)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _reply(result: Any, request_id: Any) -> bytes:
    return orjson.dumps({"result": result, "id": request_id})


def _error(code: int, msg: str, request_id: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})


class BinanceServer(ExchangeServer[BinanceSubscription]):
    """Binance spot's market-data WebSocket at ``ws://host:port`` (``/stream?streams=…``, ``/ws``)."""

    name = "binance"
    ws_path = ""
    bytes_as_text = True
    server_pings = True

    def __init__(self, *, max_streams: int = MAX_STREAMS, **kwargs: Any) -> None:
        kwargs.setdefault("max_incoming_per_second", 5.0)
        super().__init__(**kwargs)
        self.max_streams = max_streams

    async def start(self) -> None:
        # A URL with 1024 streams is ~30 KB; websockets refuses request lines over 8 KiB by default, which
        # would make the simulator reject URLs that Binance accepts. The limit is a module global read at
        # parse time, so raising it (never lowering it) is process-wide, and harmless for clients.
        websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, 64 * self.max_streams)
        await super().start()

    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        try:
            ws.sim_handshake = parse_path(request.path, max_streams=self.max_streams)
        except HandshakeError as exc:
            return ws.respond(exc.status, f"{exc}\n")
        return None

    async def serve_session(self, session: Session[BinanceSubscription]) -> None:
        handshake = session.ws.sim_handshake
        combined, names = handshake if handshake is not None else (True, [])
        session.combined = combined
        initial = [parse_stream(n, combined=combined) for n in names]
        self.subscribe(session, [s for s in initial if s is not None])
        async for message in session.ws:
            if not session.closing:
                self._control(session, message)

    def _control(self, session: Session[BinanceSubscription], message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            session.enqueue(
                orjson.dumps({"code": 3, "msg": f"Invalid JSON: expected value at {where}", "id": None})
            )
            return
        if not isinstance(request, dict):
            session.enqueue(_error(2, "Invalid request: expected a JSON object", None))
            return
        request_id = request.get("id")
        if not (
            request_id is None
            or (isinstance(request_id, int) and not isinstance(request_id, bool) and request_id >= 0)
            or (isinstance(request_id, str) and len(request_id) <= 64)
        ):
            session.enqueue(_error(2, "Invalid request: request ID must be an unsigned integer", None))
            return
        method = request.get("method")
        if method is None:
            session.enqueue(_error(2, "Invalid request: missing field `method`", request_id))
            return
        if method not in METHODS:
            session.enqueue(_error(2, _UNKNOWN_METHOD.format(method), request_id))
            return
        params = request.get("params", [])
        if not isinstance(params, list):
            session.enqueue(_error(2, "Invalid request: params must be an array", request_id))
            return
        if method == "LIST_SUBSCRIPTIONS":
            session.enqueue(_reply(list(session.subs), request_id))
        elif method == "SUBSCRIBE":
            self._subscribe_request(session, params, request_id)
        elif method == "UNSUBSCRIBE":
            if not all(isinstance(p, str) for p in params):
                session.enqueue(_error(2, "Invalid request: stream names must be strings", request_id))
                return
            self.unsubscribe(session, params)
            session.enqueue(_reply(None, request_id))
        elif method == "GET_PROPERTY":
            if params != ["combined"]:
                session.enqueue(_error(0, "Unknown property", request_id))
                return
            session.enqueue(_reply(session.combined, request_id))
        else:  # SET_PROPERTY
            if len(params) != 2 or params[0] != "combined":
                session.enqueue(_error(0, "Unknown property", request_id))
                return
            if not isinstance(params[1], bool):
                session.enqueue(_error(1, "Invalid value type: expected Boolean", request_id))
                return
            session.combined = params[1]
            for sub in session.subs.values():
                sub.variant = (sub.name, session.combined)
            session.enqueue(_reply(None, request_id))

    def _subscribe_request(
        self, session: Session[BinanceSubscription], params: list[Any], request_id: Any
    ) -> None:
        subs: list[BinanceSubscription] = []
        for name in params:
            sub = parse_stream(name, combined=session.combined) if isinstance(name, str) else None
            if sub is None:
                session.enqueue(_error(2, f"Invalid request: invalid stream name {name!r}", request_id))
                return
            subs.append(sub)
        new = {s.name for s in subs} - session.subs.keys()
        if len(session.subs) + len(new) > self.max_streams:
            msg = f"Invalid request: too many streams ({len(session.subs) + len(new)} > {self.max_streams})"
            session.enqueue(_error(2, msg, request_id))
            return
        session.enqueue(
            _reply(None, request_id)
        )  # the reply comes before the first frames of the new streams
        self.subscribe(session, subs)

    def encode(
        self,
        session: Session[BinanceSubscription],
        sub: BinanceSubscription,
        book: RandomWalkBook,
        initial: bool,
    ) -> bytes:
        payload, bids, asks = encode_depth(book, sub.depth, sub.name if session.combined else None)
        self.record(sub.symbol, bids, asks, book.update_id, time.time())
        return payload

    def garbage_payload(self) -> str:
        return '{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1005304'

    def error_items(
        self, session: Session[BinanceSubscription], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        return [_error(2 if code is None else code, message or "Invalid request: simulated error", None)]

    def shutdown_items(self, session: Session[BinanceSubscription]) -> list[Outgoing]:
        event = {"e": "serverShutdown", "E": int(time.time() * 1000)}
        return [orjson.dumps({"stream": "!serverShutdown", "data": event} if session.combined else event)]

    def normalise_symbol(self, symbol: str) -> str:
        return symbol.partition("@")[0].upper()

    def replay_truth(self, frame: CapturedFrame) -> tuple[str, Truth] | None:
        return decode_depth(frame.payload)
