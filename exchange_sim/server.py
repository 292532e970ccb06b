"""The exchange-independent half of the simulator: sessions, the book pump, the truth record and faults.

One `ExchangeServer` is one WebSocket server speaking one exchange's protocol (`UpbitServer`,
`BinanceServer` fill in the protocol). It owns

- the **sessions** (one per client connection), each with an outbox drained by its own writer task, so that a
  slow client only ever delays itself, never the pump or the other clients;
- the **books** (one `RandomWalkBook` per symbol, shared by every connection that subscribes to it, as on the
  real exchange) and an index ``symbol -> {session: [subscriptions]}`` for fan-out;
- the **pump**: one task that wakes every ``tick_interval`` and steps every symbol whose next update is due
  (a heap of due times, ``1/rate`` apart with a random phase per symbol), encoding each frame variant once
  and appending it to every subscribed session's outbox. Ticks instead of one sleep per frame keep the
  per-frame cost at a few microseconds, which is what lets one process send tens of thousands of frames/s;
- the **truth**: for every symbol, the book last encoded for a client, exactly as the client will decode it;
- **faults** on command, aimed at all sessions, one connection id, or the sessions subscribed to a symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response

from client.models import OrderBookSnapshot
from exchange_sim.books import MIN_DEPTH, Level, RandomWalkBook
from exchange_sim.replay import CapturedFrame

log = logging.getLogger("exchange_sim")

ControlHandler = Callable[["ExchangeServer[Any]", ServerConnection, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """An outbox item: close the connection with this code once everything queued before it is sent."""

    code: int
    reason: str = ""


Outgoing = bytes | str | CloseRequest
_BATCH = 256  # frames written per system call at most


@dataclass(frozen=True, slots=True)
class Truth:
    """The book last sent for a symbol, as the client decodes it (levels best first, floats)."""

    bids: list[Level]
    asks: list[Level]
    xid: int  # Upbit: timestamp ms; Binance: lastUpdateId
    timestamp: float  # seconds since the epoch: Upbit's timestamp, or when Binance's frame was encoded


@dataclass(eq=False)
class Subscription:
    """One name a connection subscribed to (an Upbit code, a Binance stream) and the book it reads."""

    name: str  # Upbit: the code without its .N suffix ("KRW-ETH"); Binance: the stream ("btcusdt@depth5")
    symbol: str  # the book key, as the feeder stores it: "KRW-ETH", "BTCUSDT"
    realtime: bool = True  # False: only the initial frame (Upbit is_only_snapshot, Binance non-book streams)
    variant: Hashable = None  # frames with equal variants for one update are encoded once
    generated: bool = True  # False: a valid name the simulator has no data for (it sends nothing)


SubT = TypeVar("SubT", bound=Subscription)


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """A capture replayed to each connection of an exchange instead of generated books."""

    frames: list[CapturedFrame]
    speed: float | None = 1.0  # 1.0: the recorded pace; 2.0: twice as fast; None or 0: as fast as possible
    loop: bool = False  # start again from the first frame at the end
    truths: list[tuple[str, Truth] | None] = field(default_factory=list)  # per frame, if it is a book


class SimConnection(ServerConnection):
    """A server connection that counts incoming frames, to enforce a per-connection message rate.

    Control frames (ping, pong) never reach the application, so the only place to count them the way Binance
    does ("pings, pongs and JSON control messages all count") is `process_event`.
    """

    sim_owner: ClassVar[ExchangeServer[Any] | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim_incoming: deque[float] = deque()
        self.sim_session: Session[Any] | None = None
        self.sim_handshake: Any = None  # what `check_handshake` parsed from the URL, for the handler
        self.sim_failed = False  # failed by the rate limiter: whatever the client still sends is ignored

    def process_event(self, event: Any) -> None:
        owner = self.sim_owner
        if self.request is not None and isinstance(event, Frame) and owner is not None:
            if self.sim_failed:
                return
            if event.opcode is not Opcode.CLOSE and not owner.admit_incoming(self):
                self.sim_failed = True
                return
        super().process_event(event)

    def send_data(self) -> None:
        """Write everything the protocol has queued with one ``transport.write`` instead of one per frame.

        The base class writes chunk by chunk, which costs a ``send()`` system call per frame when the socket
        keeps up; the batched writer queues hundreds of frames per tick, so joining them matters for
        throughput. An empty chunk means "end of stream", handled as the base class does.
        """
        pending: list[bytes] = []
        for data in self.protocol.data_to_send():
            if data:
                pending.append(data)
                continue
            if pending:
                self.transport.write(b"".join(pending))
                pending = []
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()
        if pending:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))


class Session(Generic[SubT]):
    """One client connection: its subscriptions, its outbox and writer, and its fault state."""

    def __init__(self, server: ExchangeServer[SubT], ws: SimConnection, session_id: int) -> None:
        self.server = server
        self.ws = ws
        self.id = session_id
        self.subs: dict[str, SubT] = {}  # by name, in subscription order
        self.outbox: deque[Outgoing] = deque()
        self.opened_at = time.time()
        self.remote = str(ws.remote_address[0]) if ws.remote_address else "?"
        self.messages_sent = 0
        self.stalled = False
        self.stall_epoch = 0  # bumped by every stall, so a ping timer can tell a stall happened meanwhile
        self.closing = False  # no more frames: an error reply and a close are queued, or it was dropped
        self.subscribed_once = False
        self.combined = True  # Binance: frames wrapped as {"stream","data"}
        self.last_alive = asyncio.get_running_loop().time()  # last pong or resume, for the ping timeout
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._stall_timer: asyncio.TimerHandle | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<{self.server.name} connection {self.id} from {self.remote}>"

    # -- sending ------------------------------------------------------------------------------------------

    def enqueue(self, item: Outgoing) -> None:
        """Queue a frame (or a close) for the writer; a client too slow to keep up is dropped, as exchanges do."""
        if self.closing:
            return
        if len(self.outbox) >= self.server.max_outbox:
            log.warning("%r: %d frames queued, dropping the slow consumer", self, len(self.outbox))
            self.server.counters["slow_consumer_drops"] += 1
            self.abort()
            return
        self.outbox.append(item)
        if isinstance(item, CloseRequest):
            self.closing = True
        self._wake.set()

    async def write_loop(self) -> None:
        """Send the outbox in order; nothing is sent while the session is stalled."""
        ws, outbox, counters = self.ws, self.outbox, self.server.counters
        as_text = self.server.bytes_as_text
        try:
            while True:
                while not outbox or self.stalled:
                    if not outbox:
                        self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                self._idle.clear()
                if isinstance(outbox[0], CloseRequest):
                    close = outbox.popleft()
                    assert isinstance(close, CloseRequest)
                    await ws.close(close.code, close.reason)
                    return
                # Frame up to _BATCH messages at once and write them with one system call (see
                # SimConnection.send_data). send_context() is what send() itself uses for the state checks and
                # flow control (it waits while the client's socket is full); it is not part of websockets'
                # documented API, which has no batch send. This is worth ~2x in frames per second.
                sent = 0
                protocol = ws.protocol
                async with ws.send_context():
                    while outbox and sent < _BATCH and not isinstance(outbox[0], CloseRequest):
                        item = outbox.popleft()
                        if isinstance(item, str):
                            protocol.send_text(item.encode())
                        elif isinstance(item, CloseRequest):  # pragma: no cover - excluded by the loop test
                            outbox.appendleft(item)
                            break
                        elif as_text:
                            protocol.send_text(item)
                        else:
                            protocol.send_binary(item)
                        sent += 1
                self.messages_sent += sent
                counters["frames_sent"] += sent
        except ConnectionClosed:
            pass

    async def wait_idle(self, max_queued: int = 0) -> None:
        """Wait until the outbox holds at most ``max_queued`` items (back-pressure for replays)."""
        while len(self.outbox) > max_queued and not self.closing:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._idle.wait()

    # -- faults -------------------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a network failure or a crashed server."""
        self.closing = True
        self.outbox.clear()
        self._set_stalled(False)
        self.ws.transport.abort()

    def stall(self, seconds: float | None) -> None:
        """Stop sending and stop reading (so client pings go unanswered) without closing anything."""
        if self.closing:
            return
        self.stall_epoch += 1
        self._set_stalled(True)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if seconds is not None and seconds > 0:
            self._stall_timer = asyncio.get_running_loop().call_later(seconds, self.resume)

    def resume(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.stalled:
            self._set_stalled(False)
            self.last_alive = asyncio.get_running_loop().time()
            self._wake.set()
            self.server.notify()

    def _set_stalled(self, stalled: bool) -> None:
        if stalled == self.stalled:
            return
        self.stalled = stalled
        transport = self.ws.transport
        if stalled:
            self._unstalled.clear()
            transport.pause_reading()
        else:
            self._unstalled.set()
            if not transport.is_closing():
                transport.resume_reading()

    async def wait_unstalled(self) -> None:
        await self._unstalled.wait()

    async def aclose(self) -> None:
        """Cancel this session's tasks and wait for them: nothing of a closed connection keeps running."""
        self.closing = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._set_stalled(False)
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "remote": self.remote,
            "opened_at": self.opened_at,
            "subscriptions": list(self.subs),
            "stalled": self.stalled,
            "queued": len(self.outbox),
            "messages_sent": self.messages_sent,
        }


class ExchangeServer(ABC, Generic[SubT]):
    """One exchange's WebSocket server. Subclasses supply the protocol; this class does everything else."""

    name: ClassVar[str]
    ws_path: ClassVar[str]  # appended to ws://host:port to form `url`
    bytes_as_text: ClassVar[bool]  # send encoded frames (bytes) as text frames (Binance) or binary (Upbit)
    server_pings: ClassVar[bool]  # the exchange pings its clients (Binance) or not (Upbit)

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 10.0,
        levels: int = 15,
        seed: int = 0,
        tick_interval: float = 0.01,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        max_incoming_per_second: float | None = None,
        close_timeout: float = 2.0,
        max_outbox: int = 100_000,
        compression: bool = False,
        control: ControlHandler | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if levels < 1:
            raise ValueError("levels must be >= 1")
        if tick_interval <= 0:
            raise ValueError("tick_interval must be > 0")
        self.host = host
        self.requested_port = port
        self.rate = float(rate)
        self.levels = levels
        self.seed = seed
        self.tick_interval = tick_interval
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_incoming_per_second = max_incoming_per_second
        self.close_timeout = close_timeout
        self.max_outbox = max_outbox
        self.compression = compression
        self.control = control
        self.depth = max(levels, MIN_DEPTH[self.name])
        self.sessions: dict[int, Session[SubT]] = {}
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
            ),
            0,
        )
        self._index: dict[str, dict[Session[SubT], list[SubT]]] = {}
        self._heap: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        self._phase_rng = random.Random(f"{seed}:{self.name}:phase")
        self._next_id = 1
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._stopping = False

    # -- protocol hooks -----------------------------------------------------------------------------------

    @abstractmethod
    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        """Reject a WebSocket handshake (wrong path, bad streams) with an HTTP response, or accept it."""

    @abstractmethod
    async def serve_session(self, session: Session[SubT]) -> None:
        """Read the client's messages until the connection closes."""

    @abstractmethod
    def encode(self, session: Session[SubT], sub: SubT, book: RandomWalkBook, initial: bool) -> bytes:
        """One book frame for a subscription; records the truth of what it contains."""

    @abstractmethod
    def garbage_payload(self) -> bytes | str:
        """A frame a parser must reject: truncated JSON in the exchange's frame type."""

    @abstractmethod
    def error_items(
        self, session: Session[SubT], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        """The exchange's error reply (and a close, where the exchange closes after an error)."""

    @abstractmethod
    def shutdown_items(self, session: Session[SubT]) -> list[Outgoing]:
        """What the exchange sends when it announces a restart."""

    @abstractmethod
    def normalise_symbol(self, symbol: str) -> str:
        """A symbol as the feeder stores it (the key of `books` and `truth`)."""

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
        self._stopping = False
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
        self._stopping = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        for session in list(self.sessions.values()):
            session.resume()  # a paused reader could not complete the closing handshake
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        self._heap.clear()
        self._scheduled.clear()
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
        ws.protocol.fail(CloseCode.POLICY_VIOLATION, "Too many requests")
        ws.send_data()
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
            for sub in added:
                if sub.generated and not session.closing:
                    session.enqueue(self.encode(session, sub, self.book(sub.symbol), True))
                    self.counters["book_frames"] += 1
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

    def _schedule(self, symbol: str) -> None:
        if self.rate <= 0 or symbol in self._scheduled:
            return
        self._scheduled.add(symbol)
        period = 1.0 / self.rate
        due = asyncio.get_running_loop().time() + self._phase_rng.random() * period
        heapq.heappush(self._heap, (due, symbol))

    def set_rate(self, rate: float) -> None:
        """Change the update rate (per symbol per second) of every subscribed symbol; 0 stops updates."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = float(rate)
        self._heap.clear()
        self._scheduled.clear()
        if self._server is not None:
            for symbol in self._index:
                self._schedule(symbol)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            await asyncio.sleep(self.tick_interval)
            if self.replay is not None or self.rate <= 0 or not heap:
                continue
            now = loop.time()
            period = 1.0 / self.rate
            wall = time.time()
            now_ms = int(wall * 1000)
            while heap and heap[0][0] <= now:
                due, symbol = heap[0]
                subscribers = self._index.get(symbol)
                if not subscribers:
                    heapq.heappop(heap)
                    self._scheduled.discard(symbol)
                    continue
                book = self.book(symbol)
                book.step(now_ms)
                self.counters["updates"] += 1
                self._fanout(book, subscribers)
                nxt = due + period
                if nxt < now - 1.0:
                    # More than a second behind (the loop was blocked): skip the backlog, don't burst it.
                    nxt = now + self._phase_rng.random() * period
                heapq.heapreplace(heap, (nxt, symbol))

    def _fanout(self, book: RandomWalkBook, subscribers: dict[Session[SubT], list[SubT]]) -> None:
        cache: dict[Hashable, bytes] = {}
        sent = 0
        for session, subs in subscribers.items():
            if session.stalled or session.closing:
                continue  # a stalled server sends nothing; what it would have sent is lost
            for sub in subs:
                if not sub.realtime:
                    continue
                payload = cache.get(sub.variant)
                if payload is None:
                    payload = cache[sub.variant] = self.encode(session, sub, book, False)
                session.enqueue(payload)
                sent += 1
        self.counters["book_frames"] += sent

    # -- truth --------------------------------------------------------------------------------------------

    def record(self, symbol: str, bids: list[Level], asks: list[Level], xid: int, timestamp: float) -> None:
        """Remember what was just sent for a symbol (the lists must be the caller's own copies)."""
        self.truth[symbol] = Truth(bids, asks, xid, timestamp)

    def last_sent(self) -> dict[tuple[str, str], OrderBookSnapshot]:
        return {
            (self.name, symbol): OrderBookSnapshot(
                symbol=symbol,
                timestamp=t.timestamp,
                bids=list(t.bids),
                asks=list(t.asks),
                exchange=self.name,
                xid=t.xid,
            )
            for symbol, t in self.truth.items()
        }

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
        settings = self.replay
        if settings is None:
            return
        loop = asyncio.get_running_loop()
        frames, truths, speed = settings.frames, settings.truths, settings.speed
        while not session.closing:
            start, t0 = loop.time(), frames[0].ts
            for i, frame in enumerate(frames):
                if speed:
                    delay = start + (frame.ts - t0) / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i % 200 == 0:
                    await session.wait_idle(1000)  # as fast as the client reads, with bounded memory
                if session.stalled:
                    await session.wait_unstalled()  # a capture is not lost to a stall, only delayed
                if session.closing:
                    return
                session.enqueue(frame.payload)
                self.counters["replayed_frames"] += 1
                truth = truths[i] if i < len(truths) else None
                if truth is not None:
                    symbol, t = truth
                    self.truth[symbol] = t if t.timestamp else dataclasses.replace(t, timestamp=time.time())
            if not settings.loop:
                return

    # -- faults -------------------------------------------------------------------------------------------

    def targets(self, connection: int | None = None, symbol: str | None = None) -> list[Session[SubT]]:
        """The open sessions a fault aims at: all, one connection id, and/or those subscribed to a symbol."""
        sessions = [s for s in self.sessions.values() if not s.closing]
        if connection is not None:
            sessions = [s for s in sessions if s.id == connection]
        if symbol is not None:
            key = self.normalise_symbol(symbol)
            sessions = [s for s in sessions if any(sub.symbol == key for sub in s.subs.values())]
        return sessions

    async def drop(self, connection: int | None = None, symbol: str | None = None) -> int:
        """Abort the targeted TCP connections (no close frame); returns once their sessions are gone."""
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.abort()
        self.counters["faults"] += bool(sessions)
        ids = {s.id for s in sessions}
        await self.wait_until(lambda: not ids & self.sessions.keys(), timeout=5.0)
        return len(sessions)

    def stall(
        self, seconds: float | None = None, connection: int | None = None, symbol: str | None = None
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.stall(seconds)
        self.counters["faults"] += bool(sessions)
        self.notify()
        return len(sessions)

    def resume(self, connection: int | None = None, symbol: str | None = None) -> int:
        sessions = [s for s in self.targets(connection, symbol) if s.stalled]
        for session in sessions:
            session.resume()
        return len(sessions)

    def send_garbage(
        self, payload: bytes | str | None = None, connection: int | None = None, symbol: str | None = None
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.enqueue(self.garbage_payload() if payload is None else payload)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

    def send_error(
        self,
        *,
        name: str | None = None,
        code: int | None = None,
        message: str | None = None,
        connection: int | None = None,
        symbol: str | None = None,
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            for item in self.error_items(session, name, code, message):
                session.enqueue(item)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

    def announce_shutdown(self, connection: int | None = None, symbol: str | None = None) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            for item in self.shutdown_items(session):
                session.enqueue(item)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

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
