"""`ExchangeServer`: one exchange's WebSocket server in the simulator, minus what is particular to the exchange.

`UpbitServer` and `BinanceServer` fill in the protocol (handshake, requests, frame encoding); this class owns
the rest, each concern in a module of its own:

- the **sessions** (`exchange_sim.session`: one per client connection, with its outbox and writer);
- the **books** (one `RandomWalkBook` per symbol, shared by every connection that subscribes to it, as on the
  real exchange) and an index ``symbol -> {session: [subscriptions]}`` for fan-out;
- the **pump** (`exchange_sim.pump`): every tick, the symbols whose next update is due are stepped and each
  frame variant is encoded once and appended to every subscribed session's outbox;
- the **truth** and **replays** (`exchange_sim.replay`): the book last sent for every symbol, exactly as the
  client will decode it, and recorded captures sent instead of generated books;
- **faults** on command (`exchange_sim.faults`);
- the WebSocket details (`exchange_sim.transport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, ClassVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from client.models import OrderBookSnapshot
from exchange_sim.books import MIN_DEPTH, Level, RandomWalkBook
from exchange_sim.faults import Faults
from exchange_sim.pump import Pump
from exchange_sim.replay import CapturedFrame, ReplaySettings, Truth, replay_to, truth_snapshots
from exchange_sim.session import CloseRequest, Session, SubT
from exchange_sim.transport import SimConnection, fail

log = logging.getLogger("exchange_sim")

ControlHandler = Callable[["ExchangeServer[Any]", ServerConnection, Request], Awaitable[Response]]


class ExchangeServer(Faults[SubT]):
    """One exchange's WebSocket server. Subclasses supply the protocol; this class does everything else."""

    name: ClassVar[str]
    ws_path: ClassVar[str]  # appended to ws://host:port to form `url`
    bytes_as_text: ClassVar[bool]  # send encoded frames (bytes) as text frames (Binance) or binary (Upbit)
    server_pings: ClassVar[bool]  # the exchange pings its clients (Binance) or not (Upbit)
    idle_timeout: float | None = None  # the exchange closes a connection idle this long (see `idle_activity`)
    idle_activity: ClassVar[frozenset[str]] = frozenset({"in", "out", "ping"})
    """What keeps a connection from being idle: data frames received ("in") or sent ("out"), WebSocket pings
    received ("ping")."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 10.0,
        levels: int = 30,
        seed: int = 0,
        tick_interval: float = 0.01,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        max_incoming_per_second: float | None = None,
        close_timeout: float = 2.0,
        max_outbox: int = 100_000,
        compression: bool = False,
        control: ControlHandler | None = None,
        repeat_unchanged: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        if levels < 1:
            raise ValueError("levels must be >= 1")
        if tick_interval <= 0:
            raise ValueError("tick_interval must be > 0")
        self.host = host
        self.requested_port = port
        self.levels = levels
        self.seed = seed
        self.tick_interval = tick_interval
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_incoming_per_second = max_incoming_per_second
        self.close_timeout = close_timeout
        self.max_outbox = max_outbox
        self.compression = compression
        self.repeat_unchanged = repeat_unchanged  # cadenced streams are pushed every interval, changed or not
        if idle_timeout is not None:
            self.idle_timeout = idle_timeout  # shorter than the exchange's, for tests
        self.control = control
        self.depth = max(levels, MIN_DEPTH[self.name])
        self.sessions: dict[int, Session[SubT]] = {}
        self.unlisted: set[str] = set()  # symbols the exchange does not list (mistyped, delisted)
        self.books: dict[str, RandomWalkBook] = {}
        self.truth: dict[str, Truth] = {}
        self.replay: ReplaySettings | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "frames_sent",  # every WebSocket data message sent (books, replies, faults)
                "book_frames",  # book frames queued to a connection
                "updates",  # book steps generated
                "connections_opened",
                "rate_limit_drops",
                "ping_timeout_drops",
                "slow_consumer_drops",
                "pings_sent",
                "faults",
                "replayed_frames",
                "idle_closes",
            ),
            0,
        )
        self._index: dict[str, dict[Session[SubT], list[SubT]]] = {}
        self.pump = Pump(rate, seed=seed, name=self.name)
        self._next_id = 1
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    # -- protocol hooks -----------------------------------------------------------------------------------

    @abstractmethod
    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        """Reject a WebSocket handshake (wrong path, bad streams) with an HTTP response, or accept it."""

    @abstractmethod
    async def serve_session(self, session: Session[SubT]) -> None:
        """Read the client's messages until the connection closes."""

    @abstractmethod
    def encode(
        self, session: Session[SubT], sub: SubT, book: RandomWalkBook, initial: bool
    ) -> bytes | list[bytes]:
        """One book frame for a subscription (or several, or none: incremental streams); records the truth."""

    @abstractmethod
    def replay_truth(self, frame: CapturedFrame) -> tuple[str, Truth] | None:
        """The book a captured frame carries, if it is a book frame, for the truth record during replays."""

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} simulator is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self._url_host()}:{self.port}{self.ws_path}"

    @property
    def control_url(self) -> str:
        return f"http://{self._url_host()}:{self.port}/_sim"

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self.name} simulator already started")
        self._changed = asyncio.Event()
        conn_class = type(f"{type(self).__name__}Connection", (SimConnection,), {"sim_owner": self})
        self._server = await serve(
            self._handler,
            self.host,
            self.requested_port,
            process_request=self._process_request,
            create_connection=conn_class,
            # Keep-alive is ours (`_ping_loop`): a stalled session must stop pinging without being closed.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=self.close_timeout,
            max_size=2**20,
            # Off unless asked for: deflate costs more CPU than everything else per frame, and the
            # exchanges' market-data streams are what the feeder must handle uncompressed anyway.
            compression="deflate" if self.compression else None,
            logger=logging.getLogger(f"exchange_sim.{self.name}.ws"),
        )
        self._pump_task = asyncio.create_task(self._pump(), name=f"sim-{self.name}-pump")
        log.info("%s simulator listening on %s (control %s)", self.name, self.url, self.control_url)

    async def stop(self) -> None:
        """Close every connection, cancel every task and timer; afterwards nothing of this server runs."""
        if self._server is None:
            return
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        for session in list(self.sessions.values()):
            session.resume()  # a paused reader could not complete the closing handshake
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        self.pump.clear()
        self._index.clear()
        log.info("%s simulator stopped", self.name)

    # -- state change notification ------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake everyone in `wait_until`: connections, subscriptions or stalls changed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds (re-checked on every state change and every 50 ms)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                event = self._changed
                if event is None:
                    await asyncio.sleep(0.05)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await event.wait()

    # -- connections --------------------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/_sim/") or request.path == "/_sim":
            if self.control is None:
                return ws.respond(404, "no control endpoint\n")
            return await self.control(self, ws, request)
        assert isinstance(ws, SimConnection)
        return self.check_handshake(ws, request)

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, SimConnection)
        session: Session[SubT] = Session(self, ws, self._next_id)
        self._next_id += 1
        ws.sim_session = session
        self.sessions[session.id] = session
        self.counters["connections_opened"] += 1
        log.debug("%r opened: %s", session, ws.request.path if ws.request else "?")
        session.tasks.append(
            asyncio.create_task(session.write_loop(), name=f"sim-{self.name}-{session.id}-w")
        )
        if self.server_pings and self.ping_interval:
            session.tasks.append(asyncio.create_task(self._ping_loop(session), name=f"sim-{self.name}-ping"))
        if self.idle_timeout:
            session.tasks.append(asyncio.create_task(self._idle_loop(session), name=f"sim-{self.name}-idle"))
        self.notify()
        try:
            await self.serve_session(session)
        except ConnectionClosed:
            pass
        finally:
            self.unsubscribe_all(session)
            del self.sessions[session.id]
            await session.aclose()
            log.debug("%r closed", session)
            self.notify()

    async def _ping_loop(self, session: Session[SubT]) -> None:
        """Ping every ``ping_interval``; drop a client that answered nothing for ``ping_timeout`` (Binance)."""
        assert self.ping_interval
        loop = asyncio.get_running_loop()
        ws = session.ws

        def alive(_: object) -> None:
            session.last_alive = loop.time()

        try:
            while True:
                await asyncio.sleep(self.ping_interval)
                if session.stalled or session.closing:
                    continue
                if self.ping_timeout is not None and loop.time() - session.last_alive > self.ping_timeout:
                    log.info("%r: no pong for %.0f s, dropping it", session, self.ping_timeout)
                    self.counters["ping_timeout_drops"] += 1
                    session.abort()
                    return
                # ping() returns a Future (typed as Awaitable); ensure_future hands it back unchanged.
                waiter = asyncio.ensure_future(await ws.ping())
                waiter.add_done_callback(alive)
                self.counters["pings_sent"] += 1
        except ConnectionClosed:
            pass

    async def _idle_loop(self, session: Session[SubT]) -> None:
        """Close a connection with no activity (`idle_activity`) for `idle_timeout` seconds, as the exchange
        does (OKX after 30 s without data, Upbit after ~120 s...). A stalled session is the server's fault and
        is not judged."""
        assert self.idle_timeout
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.idle_timeout / 4)
        while not session.closing:
            await asyncio.sleep(tick)
            if session.stalled:
                continue
            if loop.time() - session.last_activity > self.idle_timeout:
                log.info("%r: idle for %.1f s, closing it", session, self.idle_timeout)
                self.counters["idle_closes"] += 1
                session.enqueue(CloseRequest(CloseCode.NORMAL_CLOSURE, "idle"))
                return

    def note_activity(self, ws: SimConnection, kind: str) -> None:
        """A data frame received ("in") or sent ("out"), or a WebSocket ping received ("ping")."""
        session = ws.sim_session
        if session is not None and kind in self.idle_activity:
            session.last_activity = asyncio.get_running_loop().time()

    def admit_incoming(self, ws: SimConnection) -> bool:
        """Count one incoming frame; over ``max_incoming_per_second`` the connection is failed (1008)."""
        limit = self.max_incoming_per_second
        if limit is None:
            return True
        now = time.monotonic()
        times = ws.sim_incoming
        times.append(now)
        while times and now - times[0] >= 1.0:
            times.popleft()
        if len(times) <= limit:
            return True
        log.info("%s connection exceeded %s incoming messages/s: dropping it", self.name, limit)
        self.counters["rate_limit_drops"] += 1
        if ws.sim_session is not None:
            ws.sim_session.closing = True
        fail(ws, CloseCode.POLICY_VIOLATION, "Too many requests")
        return False

    # -- subscriptions ------------------------------------------------------------------------------------

    def book(self, symbol: str) -> RandomWalkBook:
        book = self.books.get(symbol)
        if book is None:
            book = RandomWalkBook(
                self.name, symbol, depth=self.depth, seed=self.seed, with_strings=self.bytes_as_text
            )
            self.books[symbol] = book
        return book

    def subscribe(self, session: Session[SubT], subs: Iterable[SubT], *, initial: bool = True) -> None:
        """Add subscriptions; send each generated one its current book at once (Upbit's SNAPSHOT)."""
        added: list[SubT] = []
        for sub in subs:
            if sub.name in session.subs:
                continue
            if sub.symbol in self.unlisted:
                sub.generated = False  # unknown to the exchange: no frame, no error (Upbit, Binance)
            session.subs[sub.name] = sub
            added.append(sub)
            if not sub.generated:
                continue
            self._index.setdefault(sub.symbol, {}).setdefault(session, []).append(sub)
            self._schedule(sub.symbol)
        if added:
            session.subscribed_once = True
        if self.replay is not None:
            self._start_replay(session)
        elif initial:
            now = asyncio.get_running_loop().time()
            for sub in added:
                if sub.generated and not session.closing:
                    payload = self.encode(session, sub, self.book(sub.symbol), True)
                    if isinstance(payload, bytes):
                        session.enqueue(payload)
                        self.counters["book_frames"] += 1
                    else:
                        for item in payload:
                            session.enqueue(item)
                        self.counters["book_frames"] += len(payload)
                    sub.last_push = now
        self.notify()

    def unsubscribe(self, session: Session[SubT], names: Iterable[str]) -> None:
        for name in names:
            sub = session.subs.pop(name, None)
            if sub is None or not sub.generated:
                continue
            by_session = self._index.get(sub.symbol)
            if by_session is None:
                continue
            lst = by_session.get(session)
            if lst is not None:
                with contextlib.suppress(ValueError):
                    lst.remove(sub)
                if not lst:
                    del by_session[session]
            if not by_session:
                del self._index[sub.symbol]
        self.notify()

    def unsubscribe_all(self, session: Session[SubT]) -> None:
        self.unsubscribe(session, list(session.subs))

    def subscriber_count(self, symbol: str) -> int:
        return len(self._index.get(self.normalise_symbol(symbol), ()))

    @property
    def subscription_count(self) -> int:
        return sum(len(s.subs) for s in self.sessions.values())

    # -- the pump -----------------------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Updates per second per subscribed symbol."""
        return self.pump.rate

    def _schedule(self, symbol: str) -> None:
        self.pump.schedule(symbol, asyncio.get_running_loop().time())

    def set_rate(self, rate: float) -> None:
        """Change the update rate (per symbol per second) of every subscribed symbol; 0 stops updates."""
        now = asyncio.get_running_loop().time() if self._server is not None else None
        self.pump.set_rate(rate, list(self._index), now)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        pump, index = self.pump, self._index
        pushed = loop.time()
        while True:
            await asyncio.sleep(self.tick_interval)
            if self.replay is not None:
                continue
            if self.repeat_unchanged and loop.time() - pushed >= 0.05:
                pushed = loop.time()
                self._push_due(pushed)
            if pump.idle:
                continue
            now_ms = int(time.time() * 1000)
            now = loop.time()
            for symbol in pump.due(now, lambda s: bool(index.get(s))):
                book = self.book(symbol)
                book.step(now_ms)
                self.counters["updates"] += 1
                self._fanout(book, index[symbol], now)

    def _fanout(
        self,
        book: RandomWalkBook,
        subscribers: dict[Session[SubT], list[SubT]],
        now: float,
        due_only: bool = False,
    ) -> None:
        """Send `book` to its subscribers; `due_only`: only to cadenced ones whose next push is due (the same
        book again, as Binance pushes its partial books every interval whether they changed or not)."""
        cache: dict[Hashable, bytes | list[bytes]] = {}
        sent = 0
        for session, subs in subscribers.items():
            if session.stalled or session.closing:
                continue  # a stalled server sends nothing; what it would have sent is lost
            for sub in subs:
                if not sub.realtime:
                    continue
                if due_only and (sub.cadence is None or now - sub.last_push < sub.cadence):
                    continue
                payload = cache.get(sub.variant)
                if payload is None:
                    payload = cache[sub.variant] = self.encode(session, sub, book, False)
                if isinstance(payload, bytes):
                    session.enqueue(payload)
                    sent += 1
                else:  # several frames, or none (an incremental stream's faults, an unchanged book)
                    for item in payload:
                        session.enqueue(item)
                    sent += len(payload)
                sub.last_push = now
        self.counters["book_frames"] += sent

    def _push_due(self, now: float) -> None:
        """Books of cadenced streams that no update refreshed within their interval are sent again."""
        for symbol, subscribers in self._index.items():
            self._fanout(self.book(symbol), subscribers, now, due_only=True)

    # -- truth --------------------------------------------------------------------------------------------

    def record(self, symbol: str, bids: list[Level], asks: list[Level], xid: int, timestamp: float) -> None:
        """Remember what was just sent for a symbol (the lists must be the caller's own copies)."""
        self.truth[symbol] = Truth(bids, asks, xid, timestamp)

    def last_sent(self) -> dict[tuple[str, str], OrderBookSnapshot]:
        return truth_snapshots(self.name, self.truth)

    # -- replay -------------------------------------------------------------------------------------------

    def set_replay(
        self, frames: list[CapturedFrame] | None, *, speed: float | None = 1.0, loop: bool = False
    ) -> None:
        """Replay ``frames`` to every connection (from its first subscription on) instead of generating.

        ``None`` returns to generated books. Connections already replaying finish their replay.
        """
        if frames is None:
            self.replay = None
            return
        if not frames:
            raise ValueError("a replay needs at least one frame")
        truths = [self.replay_truth(f) for f in frames]
        self.replay = ReplaySettings(list(frames), speed or None, loop, truths)
        for session in self.sessions.values():
            if session.subscribed_once:
                self._start_replay(session)

    def _start_replay(self, session: Session[SubT]) -> None:
        if any(t.get_name().endswith("-replay") and not t.done() for t in session.tasks):
            return
        task = asyncio.create_task(self._replay(session), name=f"sim-{self.name}-{session.id}-replay")
        session.tasks.append(task)

    async def _replay(self, session: Session[SubT]) -> None:
        if self.replay is not None:
            await replay_to(session, self.replay, self.truth, self.counters)

    # -- introspection ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "connections_current": len(self.sessions),
            "subscriptions": self.subscription_count,
            "symbols_subscribed": len(self._index),
            "rate": self.rate,
            "replaying": self.replay is not None,
        }

    def state(self, *, with_truth: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.url if self.running else None,
            "counters": self.stats(),
            "connections": [s.describe() for s in self.sessions.values()],
        }
        if with_truth:
            out["last_sent"] = {
                symbol: {
                    "timestamp": t.timestamp,
                    "xid": t.xid,
                    "bids": t.bids,
                    "asks": t.asks,
                }
                for symbol, t in self.truth.items()
            }
        return out
