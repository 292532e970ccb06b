"""Bybit v5 public spot's side of the simulator: ``orderbook.{depth}.{SYMBOL}`` snapshots and deltas.

What the server does, following Bybit's docs (github.com/bybit-exchange/docs at ``072c197d0c11``, 2026-07-24;
tests/data/README.md) and the frames in ``tests/data/frames/bybit-*``:

- one endpoint, ``/v5/public/spot`` (anything else: HTTP 404); JSON text frames both ways;
- ``{"req_id":...,"op":"subscribe","args":[topics]}`` with at most 10 topics (spot's limit); the reply
  ``{"success":true,"ret_msg":"subscribe","conn_id":...,"req_id":...,"op":"subscribe"}`` comes before the
  snapshot of each new topic, then one delta per change of the book's top `depth` levels
  ``{"topic":...,"ts":...,"type":"delta","data":{"s":...,"b":[["p","q"],...],"a":[...],"u":N,"seq":M},
  "cts":...}`` (spot puts ``ts`` before ``type``); ``u`` is consecutive per topic, ``seq`` the symbol's cross
  sequence; size ``"0"`` deletes a level. Prices and sizes are 8-decimal strings. Depths 1, 50, 200, 1000
  (the book has 200 levels: a 1000 topic sends those). Depth 1 is snapshot-only: a snapshot per change (the
  3 s repeat of an unchanged book is not simulated);
- ``unsubscribe`` is answered the same way with ``"ret_msg":"unsubscribe"``; ``{"op":"ping"}`` gets the spot
  pong ``{"success":true,"ret_msg":"pong","conn_id":...,"op":"ping"}`` (no ``req_id``, as documented);
- simulator choices, for what the docs do not show (no failed reply is documented): a request that is not a
  JSON object, an unknown op, more than 10 args, an invalid topic or one already subscribed gets
  ``{"success":false,"ret_msg":"error:...","conn_id":...,"req_id":...,"op":...}`` and nothing is subscribed;
  topics of other kinds (``publicTrade.X``, ``tickers.X``) are accepted and produce nothing;
- Bybit announces no shutdown: the shutdown fault closes the connection with 1012 (service restart). Bybit's
  10-minute idle cut is not simulated;
- delta faults, the truth history and `truth_at`: `exchange_sim.deltas`. A restart is a snapshot with
  ``u=1``, the next deltas continuing from it.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

import orjson
from websockets.frames import CloseCode

from exchange_sim.books import RandomWalkBook, StrLevel
from exchange_sim.deltas import DeltaServer, DeltaStream, DeltaSubscription
from exchange_sim.session import CloseRequest, Outgoing, Session

PATH = "/v5/public/spot"
DEPTHS = (1, 50, 200, 1000)
MAX_ARGS = 10
TOPIC_RE = re.compile(r"orderbook\.(1|50|200|1000)\.([A-Z0-9]{2,30})")
OTHER_TOPIC_RE = re.compile(r"(publicTrade|tickers|kline\.[0-9A-Z]+)\.([A-Z0-9]{2,30})")


def parse_topic(topic: object) -> DeltaSubscription | None:
    """The subscription of a topic, or None when Bybit would refuse it."""
    if not isinstance(topic, str):
        return None
    m = TOPIC_RE.fullmatch(topic)
    if m is not None:
        depth = int(m.group(1))
        return DeltaSubscription(name=topic, symbol=m.group(2), variant=depth, depth=depth)
    m = OTHER_TOPIC_RE.fullmatch(topic)
    if m is not None:
        return DeltaSubscription(name=topic, symbol=m.group(2), realtime=False, generated=False)
    return None


class BybitServer(DeltaServer):
    """Bybit's public spot WebSocket at ``ws://host:port/v5/public/spot``."""

    idle_timeout = 600.0  # with no ping-pong and no data the server cuts after 10 minutes
    idle_activity = frozenset({"in", "out"})

    name = "bybit"
    ws_path = PATH
    restart_is_snapshot = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._conn_ids: dict[int, str] = {}

    def conn_id(self, session: Session[DeltaSubscription]) -> str:
        cid = self._conn_ids.get(session.id)
        if cid is None:
            cid = self._conn_ids[session.id] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{self.seed}:{session.id}")
            )
        return cid

    # -- ids and frames -------------------------------------------------------------------------------

    def first_id(self, rng: random.Random) -> int:
        return rng.randrange(10**6, 10**9)

    def next_id(self, seq: int, rng: random.Random) -> int:
        return seq + 1

    def restart_id(self, seq: int, rng: random.Random) -> int:
        return 1

    def snapshot_only(self, depth: int) -> bool:
        return depth == 1

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
        ts = book.timestamp_ms
        return orjson.dumps(
            {
                "topic": f"orderbook.{stream.depth}.{stream.symbol}",
                "ts": ts,
                "type": "snapshot" if snapshot else "delta",
                "data": {"s": stream.symbol, "b": bids, "a": asks, "u": seq, "seq": book.update_id},
                "cts": ts - 2,
            }
        )

    # -- requests -------------------------------------------------------------------------------------

    def reply(
        self, session: Session[DeltaSubscription], op: str, *, success: bool, ret_msg: str, req_id: Any = None
    ) -> bytes:
        obj: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id(session)}
        if req_id is not None:
            obj["req_id"] = req_id
        obj["op"] = op
        return orjson.dumps(obj)

    async def serve_session(self, session: Session[DeltaSubscription]) -> None:
        try:
            async for message in session.ws:
                if not session.closing:
                    self._request(session, message)
        finally:
            self._conn_ids.pop(session.id, None)

    def _request(self, session: Session[DeltaSubscription], message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            session.enqueue(
                self.reply(session, "", success=False, ret_msg="error:request is not a JSON object")
            )
            return
        op, req_id = request.get("op"), request.get("req_id")
        if op == "ping":
            session.enqueue(self.reply(session, "ping", success=True, ret_msg="pong"))
            return
        if op not in ("subscribe", "unsubscribe"):
            msg = f"error:unknown op {op!r}"
            session.enqueue(self.reply(session, str(op), success=False, ret_msg=msg, req_id=req_id))
            return
        args = request.get("args")
        if not isinstance(args, list) or not args:
            msg = "error:args must be a non-empty array"
            session.enqueue(self.reply(session, op, success=False, ret_msg=msg, req_id=req_id))
            return
        if len(args) > MAX_ARGS:
            msg = f"error:args size >{MAX_ARGS}"
            session.enqueue(self.reply(session, op, success=False, ret_msg=msg, req_id=req_id))
            return
        subs = [parse_topic(a) for a in args]
        bad = [a for a, s in zip(args, subs, strict=True) if s is None]
        if bad:
            msg = f"error:invalid topic:{bad[0]!s:.80}"
            session.enqueue(self.reply(session, op, success=False, ret_msg=msg, req_id=req_id))
            return
        if op == "unsubscribe":
            self.unsubscribe(session, [str(a) for a in args])
            session.enqueue(self.reply(session, op, success=True, ret_msg="unsubscribe", req_id=req_id))
            return
        again = [s.name for s in subs if s is not None and s.name in session.subs]
        if again:
            msg = f"error:already subscribed,topic:{again[0]}"
            session.enqueue(self.reply(session, op, success=False, ret_msg=msg, req_id=req_id))
            return
        session.enqueue(self.reply(session, op, success=True, ret_msg="subscribe", req_id=req_id))
        self.subscribe(session, [s for s in subs if s is not None])

    # -- faults ---------------------------------------------------------------------------------------

    def garbage_payload(self) -> bytes:
        return b'{"topic":"orderbook.50.BTCUSDT","ts":17'

    def error_items(
        self, session: Session[DeltaSubscription], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        return [self.reply(session, name or "subscribe", success=False, ret_msg=message or "error:simulated")]

    def shutdown_items(self, session: Session[DeltaSubscription]) -> list[Outgoing]:
        return [CloseRequest(CloseCode.SERVICE_RESTART, "server restarting")]

    def normalise_symbol(self, symbol: str) -> str:
        return symbol.rpartition(".")[2].upper()
