"""Upbit's side of the simulator: the request format, the orderbook frames, errors and ``PING``.

What the server does, following Upbit's documentation and the captures in ``tests/data/`` (frames/, recordings/):

- one endpoint, ``/websocket/v1`` (anything else: HTTP 404);
- the client sends a JSON array ``[{"ticket":…},{"type":"orderbook","codes":[…]},{"format":…}]`` (text or
  binary); a new request **replaces** the connection's subscription and every code starts again with a
  SNAPSHOT frame;
- ``CODE.N`` asks for N units: 1, 5, 15 or 30 (since 2025-07-02); any other number gets 30 units, as Upbit
  answers it (no error); without a suffix the simulator sends ``levels`` units (default 30, Upbit's default
  since 2025-05-07);
- frames are **binary** WebSocket messages of UTF-8 JSON, in the DEFAULT, SIMPLE, JSON_LIST or SIMPLE_LIST
  shape; the first frame per code is a SNAPSHOT, later ones REALTIME; ``is_only_snapshot`` /
  ``is_only_realtime`` (or the camelCase spelling seen in captures) are honoured;
- codes that do not look like ``[A-Z]+-[A-Z0-9]+`` are unknown: no frame, no error (as Upbit);
  ``ticker``/``trade``/``candle.*`` types are accepted and produce nothing (the simulator generates books only);
- an invalid request gets ``{"error":{"name":…,"message":…}}`` (binary, like every Upbit frame) and the
  connection is then closed with code 1000;
- the text message ``PING`` gets the text reply ``{"status":"UP"}``; a ``LIST_SUBSCRIPTIONS`` request gets the
  connection's order-book codes (unknown ones left out) and changes nothing;
- Upbit sends no WebSocket pings of its own and has no shutdown announcement: the shutdown fault closes the
  connection with 1012 (service restart), which is what a client sees when Upbit restarts a node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from exchange_sim.books import RandomWalkBook
from exchange_sim.replay import CapturedFrame, Truth
from exchange_sim.server import ExchangeServer
from exchange_sim.session import CloseRequest, Outgoing, Session, Subscription
from exchange_sim.transport import SimConnection

FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
UNIT_CHOICES = (1, 5, 15, 30)
CODE_RE = re.compile(r"[A-Z]+-[A-Z0-9]+")
KNOWN_TYPES = frozenset({"ticker", "trade", "orderbook", "myOrder", "myAsset"})
PATH = "/websocket/v1"
PING_REPLY = '{"status":"UP"}'


class UpbitRequestError(Exception):
    """A request Upbit answers with an error frame (and a close)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(eq=False)
class UpbitSubscription(Subscription):
    units: int = 15
    format: str = "DEFAULT"
    level: int | float = 0
    only_realtime: bool = False


@dataclass(frozen=True)
class UpbitRequest:
    ticket: str
    format: str
    subscriptions: list[UpbitSubscription]  # orderbook codes only; other types produce nothing


def _flag(obj: dict[str, Any], snake: str, camel: str) -> bool:
    value = obj.get(snake, obj.get(camel, False))
    if not isinstance(value, bool):
        raise UpbitRequestError("INVALID_PARAM", f"{snake} 는 boolean 이어야 합니다.")
    return value


def parse_request(
    data: str | bytes,
    *,
    default_units: int = 15,
    formats: Iterable[str] = FORMATS,
    unit_choices: Iterable[int] = UNIT_CHOICES,
    unit_fallback: int | None = None,
) -> UpbitRequest:
    """Validate one Upbit request; raise UpbitRequestError with the name Upbit would use.

    `formats` and `unit_choices` (the ``CODE.N`` suffixes accepted) differ on Bithumb. `unit_fallback`: the
    units sent for a numeric suffix outside `unit_choices` (Upbit: 30); None: such a suffix is an error.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpbitRequestError("WRONG_FORMAT", "요청 포맷이 맞지 않습니다.") from None
    if not isinstance(message, list) or not message or not all(isinstance(o, dict) for o in message):
        raise UpbitRequestError("WRONG_FORMAT", "요청 포맷이 맞지 않습니다.")
    ticket: str | None = None
    fmt = "DEFAULT"
    type_objects: list[dict[str, Any]] = []
    for obj in message:
        if "ticket" in obj:
            ticket = obj["ticket"]
        elif "format" in obj:
            if obj["format"] not in formats:
                raise UpbitRequestError("WRONG_FORMAT", "Format 이 맞지 않습니다.")
            fmt = obj["format"]
        elif "type" in obj:
            type_objects.append(obj)
        else:
            raise UpbitRequestError("WRONG_FORMAT", "요청 포맷이 맞지 않습니다.")
    if not isinstance(ticket, str) or not ticket:
        raise UpbitRequestError("NO_TICKET", "티켓이 존재하지 않거나, 유효하지 않습니다.")
    if not type_objects:
        raise UpbitRequestError("NO_TYPE", "타입 필드가 존재하지 않습니다.")
    subs: dict[str, UpbitSubscription] = {}
    for obj in type_objects:
        kind = obj["type"]
        if not isinstance(kind, str) or not (kind in KNOWN_TYPES or kind.startswith("candle.")):
            raise UpbitRequestError("INVALID_PARAM", f"{kind} 은 지원하지 않는 타입입니다.")
        codes = obj.get("codes")
        if kind in ("myOrder", "myAsset") and codes is None:
            continue
        if not isinstance(codes, list) or not codes:
            raise UpbitRequestError("NO_CODES", "코드 필드가 존재하지 않거나, 유효하지 않습니다.")
        if not all(isinstance(c, str) for c in codes):
            raise UpbitRequestError("INVALID_PARAM", "codes 는 문자열 배열이어야 합니다.")
        only_snapshot = _flag(obj, "is_only_snapshot", "isOnlySnapshot")
        only_realtime = _flag(obj, "is_only_realtime", "isOnlyRealtime")
        level = obj.get("level", 0)
        if isinstance(level, bool) or not isinstance(level, int | float) or level < 0:
            raise UpbitRequestError("INVALID_PARAM", "level 은 0 이상의 숫자여야 합니다.")
        if kind != "orderbook":
            continue
        for name in codes:
            code, dot, suffix = name.partition(".")
            units = default_units
            if dot:
                if suffix.isdigit() and int(suffix) in unit_choices:
                    units = int(suffix)
                elif suffix.isdigit() and unit_fallback is not None:
                    units = unit_fallback
                else:
                    raise UpbitRequestError("INVALID_PARAM", f"{name} 은 지원하지 않는 호가 개수입니다.")
            subs[code] = UpbitSubscription(
                name=code,
                symbol=code,
                realtime=not only_snapshot,
                variant=(fmt, units, level),
                generated=CODE_RE.fullmatch(code) is not None,
                units=units,
                format=fmt,
                level=level,
                only_realtime=only_realtime,
            )
    return UpbitRequest(ticket, fmt, list(subs.values()))


def list_subscriptions_reply(message: str | bytes, session: Session[UpbitSubscription]) -> bytes | None:
    """The reply to a ``LIST_SUBSCRIPTIONS`` request (Upbit, since 2024-08-07), or None for other messages.

    It lists the connection's order-book codes and leaves the subscription as it is. Codes the exchange does
    not know (unlisted, or not code-shaped) are not listed: the simulator's reading of "the streams this
    connection is subscribed to", which Upbit does not spell out for unknown codes."""
    try:
        request = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, list) or not any(
        isinstance(o, dict) and o.get("method") == "LIST_SUBSCRIPTIONS" for o in request
    ):
        return None
    ticket = next((o["ticket"] for o in request if isinstance(o, dict) and "ticket" in o), None)
    codes = [sub.symbol for sub in session.subs.values() if sub.generated]
    simple = any(isinstance(o, dict) and str(o.get("format", "")).startswith("SIMPLE") for o in request)
    if simple:
        return orjson.dumps({"mthd": "LIST_SUBSCRIPTIONS", "rslt": [{"ty": "orderbook", "cds": codes, "lv": 0}],
                             "tckt": ticket})  # fmt: skip
    return orjson.dumps(
        {"method": "LIST_SUBSCRIPTIONS", "result": [{"type": "orderbook", "codes": codes, "level": 0}],
         "ticket": ticket}
    )  # fmt: skip


def error_frame(name: str, message: str) -> bytes:
    return orjson.dumps({"error": {"name": name, "message": message}})


def encode_orderbook(
    code: str,
    book: RandomWalkBook,
    *,
    units: int,
    fmt: str,
    level: int | float,
    snapshot: bool,
    timestamp_last: bool = False,
    integer_prices: bool = False,
) -> tuple[bytes, list[tuple[float, float]], list[tuple[float, float]]]:
    """One orderbook frame in the requested format, plus the (bids, asks) it carries.

    Bithumb's documented order puts ``level``, ``timestamp`` and ``stream_type`` after the units
    (`timestamp_last`), and writes whole prices as integers (`integer_prices`: ``478800``, not ``478800.0``).
    """
    bids, asks = book.bids[:units], book.asks[:units]
    total_ask = round(sum(a[1] for a in asks), 8)
    total_bid = round(sum(b[1] for b in bids), 8)
    stream_type = "SNAPSHOT" if snapshot else "REALTIME"
    if integer_prices:
        asks_out = [(int(p) if p.is_integer() else p, q) for p, q in asks]
        bids_out = [(int(p) if p.is_integer() else p, q) for p, q in bids]
    else:
        asks_out, bids_out = asks, bids
    obj: dict[str, Any]
    if fmt in ("SIMPLE", "SIMPLE_LIST"):
        obj = {
            "ty": "orderbook",
            "cd": code,
            "tms": book.timestamp_ms,
            "tas": total_ask,
            "tbs": total_bid,
            "obu": [
                {"ap": a[0], "bp": b[0], "as": a[1], "bs": b[1]}
                for a, b in zip(asks_out, bids_out, strict=True)
            ],
            "st": stream_type,
            "lv": level,
        }
    else:
        obj = {
            "type": "orderbook",
            "code": code,
            "timestamp": book.timestamp_ms,
            "total_ask_size": total_ask,
            "total_bid_size": total_bid,
            "orderbook_units": [
                {"ask_price": a[0], "bid_price": b[0], "ask_size": a[1], "bid_size": b[1]}
                for a, b in zip(asks_out, bids_out, strict=True)
            ],
            "stream_type": stream_type,
            "level": level,
        }
    if timestamp_last:
        ts_key = "tms" if "tms" in obj else "timestamp"
        level_key, type_key = ("lv", "st") if "lv" in obj else ("level", "stream_type")
        obj[level_key] = obj.pop(level_key)
        obj[ts_key] = obj.pop(ts_key)
        obj[type_key] = obj.pop(type_key)
    payload = orjson.dumps([obj] if fmt.endswith("LIST") else obj)
    return payload, bids, asks


def decode_orderbook(payload: bytes | str) -> tuple[str, Truth] | None:
    """The book in an Upbit orderbook frame (any format), or None for anything else.

    Only used for the truth record of replays; the feeder's real parser lives in ``feeder.exchanges``.
    Zero-padded units (a one-sided book) are dropped, as a client must.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        return None
    simple = "ty" in obj
    if obj.get("ty" if simple else "type") != "orderbook":
        return None
    try:
        code = obj["cd" if simple else "code"]
        tms = int(obj["tms" if simple else "timestamp"])
        units = obj["obu" if simple else "orderbook_units"]
        ap, bp, az, bz = (
            ("ap", "bp", "as", "bs") if simple else ("ask_price", "bid_price", "ask_size", "bid_size")
        )
        asks = [(float(u[ap]), float(u[az])) for u in units if float(u[ap]) > 0]
        bids = [(float(u[bp]), float(u[bz])) for u in units if float(u[bp]) > 0]
    except (KeyError, TypeError, ValueError):
        return None
    return str(code), Truth(bids, asks, tms, tms / 1000.0)


class UpbitServer(ExchangeServer[UpbitSubscription]):
    """Upbit's WebSocket API at ``ws://host:port/websocket/v1``."""

    name = "upbit"
    ws_path = PATH
    bytes_as_text = False
    server_pings = False
    idle_timeout = 120.0  # Upbit closes a connection with no data either way for ~120 s (pings count)
    formats: tuple[str, ...] = FORMATS
    unit_choices: tuple[int, ...] = UNIT_CHOICES
    default_units: int | None = None  # units without a CODE.N suffix; None: the server's `levels`
    unit_fallback: int | None = 30  # Upbit answers any other count with 30 units (since 2025-07-02)
    timestamp_last = False  # Bithumb's field order
    integer_prices = False  # Bithumb writes whole prices as integers

    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path.rstrip("/") != PATH:
            return ws.respond(404, "Not Found\n")
        return None

    async def serve_session(self, session: Session[UpbitSubscription]) -> None:
        async for message in session.ws:
            if session.closing:
                continue
            if message in ("PING", b"PING"):
                session.enqueue(PING_REPLY)
                continue
            listing = list_subscriptions_reply(message, session)
            if listing is not None:
                session.enqueue(listing)
                continue
            try:
                request = parse_request(
                    message,
                    default_units=self.default_units or self.levels,
                    formats=self.formats,
                    unit_choices=self.unit_choices,
                    unit_fallback=self.unit_fallback,
                )
            except UpbitRequestError as exc:
                self.unsubscribe_all(session)
                session.enqueue(error_frame(exc.name, exc.message))
                session.enqueue(CloseRequest(CloseCode.NORMAL_CLOSURE))
                continue
            self.unsubscribe_all(session)
            self.subscribe(session, request.subscriptions)

    def subscribe(
        self, session: Session[UpbitSubscription], subs: Iterable[UpbitSubscription], *, initial: bool = True
    ) -> None:
        subs = list(subs)
        # is_only_realtime: no SNAPSHOT; the first frame the client sees is the next REALTIME one.
        super().subscribe(session, [s for s in subs if not s.only_realtime], initial=initial)
        super().subscribe(session, [s for s in subs if s.only_realtime], initial=False)

    def encode(
        self, session: Session[UpbitSubscription], sub: UpbitSubscription, book: RandomWalkBook, initial: bool
    ) -> bytes:
        payload, bids, asks = encode_orderbook(
            sub.symbol,
            book,
            units=sub.units,
            fmt=sub.format,
            level=sub.level,
            snapshot=initial,
            timestamp_last=self.timestamp_last,
            integer_prices=self.integer_prices,
        )
        self.record(sub.symbol, bids, asks, book.timestamp_ms, book.timestamp_ms / 1000.0)
        return payload

    def garbage_payload(self) -> bytes:
        return b'{"type":"orderbook","code":"KRW-BTC","timestamp":17'

    def error_items(
        self, session: Session[UpbitSubscription], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        return [
            error_frame(name or "INVALID_PARAM", message or "simulated error"),
            CloseRequest(CloseCode.NORMAL_CLOSURE),
        ]

    def shutdown_items(self, session: Session[UpbitSubscription]) -> list[Outgoing]:
        return [CloseRequest(CloseCode.SERVICE_RESTART, "server restarting")]

    def normalise_symbol(self, symbol: str) -> str:
        return symbol.upper().partition(".")[0]

    def replay_truth(self, frame: CapturedFrame) -> tuple[str, Truth] | None:
        return decode_orderbook(frame.payload)
