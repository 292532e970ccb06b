"""OKX v5 public's side of the simulator: the ``books`` channel (400 levels), snapshots and updates.

What the server does, following OKX's docs ("WS / Order book channel" and "Connect", copies of 2026-07-07/08
and an older one; tests/data/README.md) and the frames in ``tests/data/frames/okx-*``:

- one endpoint, ``/ws/v5/public`` (anything else: HTTP 404); the text ``ping`` gets the text ``pong``;
- ``{"id":...,"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}``: one reply per arg,
  ``{"id":...,"event":"subscribe","arg":{...},"connId":...}`` (no ``id`` when the request had none), then
  the snapshot ``{"arg":{...},"action":"snapshot","data":[{"asks":[["px","sz","0","n"],...],"bids":[...],
  "ts":"ms","checksum":C,"prevSeqId":-1,"seqId":S}]}`` and one ``update`` per change of the top 400 levels,
  ``prevSeqId`` the previous ``seqId``, which grows by random steps; ``unsubscribe`` is answered alike;
- ``checksum``: ``0`` by default (OKX deprecated it and sends 0), or with ``checksum=True`` the real CRC-32
  (signed) of the top 25 levels, ``bid:size:ask:size:...``;
- a step that changes nothing in the view sends OKX's keep-chain update (empty sides, ``prevSeqId == seqId``)
  at once (OKX sends it after about 60 s without changes; sooner here, so that clients meet it);
- a connection that has subscribed nothing after ``subscribe_timeout`` (30 s, as documented) is closed (the
  close code, 1000, is a simulator choice; OKX's cut after 30 s without data pushed is not simulated);
- errors as ``{"id":...,"event":"error","code":...,"msg":...,"connId":...}``: ``60012`` for a request that is
  not valid JSON or lacks ``op``/``args`` (``"Invalid request: <request>"``, as the docs' example), ``60018``
  for an unknown channel or instId, ``64003`` for the tick-by-tick channels that need login and a VIP tier
  (the message texts other than 60012's are the simulator's own). Other public channels (``books5``,
  ``bbo-tbt``, ``tickers``, ``trades``) are accepted and produce nothing;
- the shutdown fault sends ``{"event":"notice","code":"64008","msg":...,"connId":...}`` (OKX's service-upgrade
  notice, as OKX client libraries handle it; not on the pages above) and closes the connection with 1012
  after ``notice_close_delay`` seconds;
- delta faults, the truth history and `truth_at`: `exchange_sim.deltas`. A restart is an update whose
  ``seqId`` is below its ``prevSeqId`` (still linking), as after OKX maintenance.
"""

from __future__ import annotations

import asyncio
import random
import re
import zlib
from typing import Any

import orjson
from websockets.frames import CloseCode

from exchange_sim.books import RandomWalkBook, StrLevel
from exchange_sim.deltas import DeltaServer, DeltaStream, DeltaSubscription
from exchange_sim.session import CloseRequest, Outgoing, Session

PATH = "/ws/v5/public"
BOOKS_DEPTH = 400
INST_RE = re.compile(r"[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,3}")
SILENT_CHANNELS = frozenset({"books5", "bbo-tbt", "tickers", "trades"})
VIP_CHANNELS = frozenset({"books-l2-tbt", "books50-l2-tbt"})
NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."


def checksum_of(bids: list[StrLevel], asks: list[StrLevel]) -> int:
    """OKX's (deprecated) checksum: CRC-32, signed, of ``bid:size:ask:size:...`` over the top 25 levels."""
    parts: list[str] = []
    for i in range(25):
        if i < len(bids):
            parts += bids[i]
        if i < len(asks):
            parts += asks[i]
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def _orders(size: str) -> str:
    """A plausible number of orders at a level (the fourth field), derived from its size text."""
    return str(1 + ord(size[-1]) % 7) if size else "1"


def _levels(levels: list[StrLevel]) -> list[tuple[str, str, str, str]]:
    return [(p, s, "0", "0" if s == "0" else _orders(s)) for p, s in levels]


class OkxServer(DeltaServer):
    """OKX's public WebSocket at ``ws://host:port/ws/v5/public``."""

    idle_timeout = 30.0  # "the connection breaks if ... no data is pushed for more than 30 s": send "ping"
    idle_activity = frozenset({"in", "out"})  # whether WebSocket pings count is not documented: they do not

    name = "okx"
    ws_path = PATH
    restart_is_snapshot = False

    def __init__(
        self,
        *,
        checksum: bool = False,
        subscribe_timeout: float | None = 30.0,
        notice_close_delay: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checksum = checksum
        self.subscribe_timeout = subscribe_timeout
        self.notice_close_delay = notice_close_delay

    def conn_id(self, session: Session[DeltaSubscription]) -> str:
        return f"{(session.id * 2654435761 + self.seed) & 0xFFFFFFFF:08x}"

    # -- ids and frames -------------------------------------------------------------------------------

    def first_id(self, rng: random.Random) -> int:
        return rng.randrange(10**8, 10**10)

    def next_id(self, seq: int, rng: random.Random) -> int:
        return seq + 1 + int(rng.random() * 8)

    def restart_id(self, seq: int, rng: random.Random) -> int:
        return int(rng.random() * (seq // 2))

    def book_checksum(self, stream: DeltaStream, book: RandomWalkBook) -> int:
        if not self.checksum:
            return 0
        depth = min(25, stream.depth)
        return checksum_of(book.bid_strs[:depth], book.ask_strs[:depth])

    def fault_applies(self, kind: str, stream: DeltaStream) -> bool:
        if kind == "checksum":
            return self.checksum
        return super().fault_applies(kind, stream)

    def book_frame(
        self,
        stream: DeltaStream,
        book: RandomWalkBook,
        bids: list[StrLevel],
        asks: list[StrLevel],
        *,
        snapshot: bool,
        seq: int,
        prev: int,
        checksum: int,
    ) -> bytes:
        return orjson.dumps(
            {
                "arg": {"channel": "books", "instId": stream.symbol},
                "action": "snapshot" if snapshot else "update",
                "data": [
                    {
                        "asks": _levels(asks),
                        "bids": _levels(bids),
                        "ts": str(book.timestamp_ms),
                        "checksum": checksum,
                        "prevSeqId": prev,
                        "seqId": seq,
                    }
                ],
            }
        )

    def idle_frames(self, stream: DeltaStream, book: RandomWalkBook) -> list[bytes]:
        frame = self.book_frame(
            stream,
            book,
            [],
            [],
            snapshot=False,
            seq=stream.seq,
            prev=stream.seq,
            checksum=self.book_checksum(stream, book),
        )
        return [frame]

    # -- requests -------------------------------------------------------------------------------------

    def _event(self, session: Session[DeltaSubscription], request_id: Any, **fields: Any) -> bytes:
        obj: dict[str, Any] = {} if request_id is None else {"id": request_id}
        obj.update(fields)
        obj["connId"] = self.conn_id(session)
        return orjson.dumps(obj)

    def _error(self, session: Session[DeltaSubscription], request_id: Any, code: str, msg: str) -> bytes:
        return self._event(session, request_id, event="error", code=code, msg=msg)

    async def serve_session(self, session: Session[DeltaSubscription]) -> None:
        if self.subscribe_timeout is not None:
            session.tasks.append(
                asyncio.create_task(self._subscribe_deadline(session), name=f"sim-okx-{session.id}-deadline")
            )
        async for message in session.ws:
            if session.closing:
                continue
            if message in ("ping", b"ping"):
                session.enqueue("pong")
                continue
            self._request(session, message)

    async def _subscribe_deadline(self, session: Session[DeltaSubscription]) -> None:
        assert self.subscribe_timeout is not None
        await asyncio.sleep(self.subscribe_timeout)
        if not session.subscribed_once and not session.closing:
            session.enqueue(CloseRequest(CloseCode.NORMAL_CLOSURE, "no subscription"))

    def _request(self, session: Session[DeltaSubscription], message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        request_id = request.get("id") if isinstance(request, dict) else None
        op = request.get("op") if isinstance(request, dict) else None
        args = request.get("args") if isinstance(request, dict) else None
        if (
            op not in ("subscribe", "unsubscribe")
            or not isinstance(args, list)
            or not args
            or not all(isinstance(a, dict) for a in args)
        ):
            session.enqueue(self._error(session, request_id, "60012", f"Invalid request: {text[:500]}"))
            return
        subs: list[DeltaSubscription] = []
        for arg in args:
            channel, inst = arg.get("channel"), arg.get("instId")
            if channel in VIP_CHANNELS:
                msg = "Users on this fee tier do not have access to this channel"
                session.enqueue(self._error(session, request_id, "64003", msg))
                return
            if (
                not isinstance(channel, str)
                or not isinstance(inst, str)
                or INST_RE.fullmatch(inst) is None
                or (channel != "books" and channel not in SILENT_CHANNELS)
            ):
                msg = f"Wrong URL or channel:{channel},instId:{inst} doesn't exist"
                session.enqueue(self._error(session, request_id, "60018", msg))
                return
            generated = channel == "books"
            subs.append(
                DeltaSubscription(
                    name=f"{channel}:{inst}",
                    symbol=inst,
                    realtime=generated,
                    variant=BOOKS_DEPTH,
                    generated=generated,
                    depth=BOOKS_DEPTH,
                )
            )
        for arg in args:
            echoed = {"channel": arg["channel"], "instId": arg["instId"]}
            session.enqueue(self._event(session, request_id, event=op, arg=echoed))
        if op == "subscribe":
            self.subscribe(session, subs)
        else:
            self.unsubscribe(session, [s.name for s in subs])

    # -- faults ---------------------------------------------------------------------------------------

    def garbage_payload(self) -> bytes:
        return b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"upd'

    def error_items(
        self, session: Session[DeltaSubscription], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        code_text = name or (str(code) if code is not None else "60012")
        return [self._error(session, None, code_text, message or "Simulated error")]

    def shutdown_items(self, session: Session[DeltaSubscription]) -> list[Outgoing]:
        session.tasks.append(
            asyncio.create_task(self._close_after_notice(session), name=f"sim-okx-{session.id}-notice")
        )
        return [self._event(session, None, event="notice", code="64008", msg=NOTICE_MSG)]

    async def _close_after_notice(self, session: Session[DeltaSubscription]) -> None:
        await asyncio.sleep(self.notice_close_delay)
        session.enqueue(CloseRequest(CloseCode.SERVICE_RESTART, "service upgrade"))

    def normalise_symbol(self, symbol: str) -> str:
        return symbol.upper()  # instIds are the symbols (BTC-USDT)
