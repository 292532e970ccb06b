"""`ExchangeConnection`: one WebSocket to one exchange for a fixed list of symbols, kept alive forever.

The protocol object (pure code, `feeder.exchanges`) says what to send and how to read frames; this module
owns everything with time in it: connect with a timeout, subscribe at the pace the exchange allows, read and
hand books to the writer, ping (websockets' keep-alive: a pong later than ``ping_timeout`` means the connection
is stalled and it is closed), an optional silence watchdog, reconnect with capped exponential backoff plus
jitter (the first retry is immediate), and planned replacement — before Binance's 24-hour cut-off or when the
server announces a shutdown — that opens the new connection and waits for its first frame before closing the
old one, so the books never go down for a rotation.

When a connection drops unplanned, its symbols are marked not live at once (`SnapshotWriter.mark_down`);
fresh books from the new connection make them live again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Frame

from client.models import OrderBookSnapshot
from feeder.exchanges import BadFrame, ErrorReply, Event, ExchangeProtocol, ShutdownNotice
from feeder.exchanges.base import BookSides, Listed, SequenceRestart
from feeder.incremental_book import Resync
from feeder.pacing import OpenLimiter
from feeder.websocket_queue import FastFrameStats, install_fast_data_frames, received_frames
from feeder.writer import SnapshotWriter

log = logging.getLogger(__name__)

_WINDOW = 10.0  # seconds of arrivals the adaptive stall rule averages over
_WARM_UP = 2.0  # at most this long after the first frame, arrivals are the subscription's snapshots
_MIN_FRAMES = 20  # arrivals enough to trust a mean gap (else: half a window of them)
_RESYNC_WINDOW = 60.0  # seconds over which the resyncs of one connection are counted
_STABLE = 30.0  # a connection that delivered for this long dropped by chance: the first retry is immediate


@dataclass(frozen=True)
class StallPolicy:
    """When this connection, open but silent, is stalled (see `ExchangeConnection._watch`).

    `fixed` seconds of silence, if set; else, when `adaptive`, `gaps` times the mean gap between frames
    observed before the silence began. Never less than `floor`. Neither: no silence watchdog.
    """

    fixed: float | None = None
    floor: float = 1.0
    adaptive: bool = False
    gaps: float = 20.0


@dataclass(frozen=True)
class ConnectionSettings:
    connect_timeout: float = 10.0
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    stall: StallPolicy = field(default_factory=StallPolicy)
    reconnect_max_delay: float = 30.0
    max_lifetime: float | None = None  # planned replacement after this many seconds (Binance: < 24 h)
    subscribe_interval: float = 0.25  # pause between subscribe frames (exchange message-rate limits)
    handover_timeout: float = 10.0  # how long a replacement may take to deliver its first frame
    resyncs_per_minute: int = 20  # more resyncs than this: the connection is replaced instead
    missing_after: float = 30.0  # a symbol with no book this long after the first subscription is missing


class ArrivalWindow:
    """The recent arrivals of one session, for the adaptive stall rule. Pure: callers pass the times in.

    A subscription starts with one snapshot per symbol, all at once: no measure of the rate, so arrivals count
    only after those (`skip` frames) or `_WARM_UP` seconds past the first frame, whichever comes first. The
    mean gap is known once `_MIN_FRAMES` frames arrived, or once they span half the window: a busy
    connection is judged within a second of opening, a quiet one only from enough of its own history.
    """

    def __init__(self, first_frame: float, frames: int, skip: int) -> None:
        self._armed_frames = frames + skip
        self._armed_at = first_frame + _WARM_UP
        self._samples: deque[tuple[float, int]] = deque()  # (time of the last frame, frames so far)

    def observe(self, now: float, last_frame: float, frames: int) -> None:
        if not self._samples and frames < self._armed_frames and now < self._armed_at:
            return
        samples = self._samples
        samples.append((last_frame, frames))
        while samples[0][0] < last_frame - _WINDOW:  # the window ends at the last frame
            samples.popleft()

    def mean_gap(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if n1 <= n0 or t1 <= t0 or (n1 - n0 < _MIN_FRAMES and t1 - t0 < _WINDOW / 2):
            return None
        return (t1 - t0) / (n1 - n0)


@dataclass
class ConnectionStats:
    frames: int = 0
    books: int = 0
    bad_frames: int = 0
    unexpected: int = 0  # books of symbols this connection did not subscribe: dropped, never written
    repeats: int = (
        0  # frames identical to the symbol's previous one (Binance's unchanged pushes): not written
    )
    exchange_errors: int = 0
    resyncs: int = 0  # incremental books that broke their chain or a check: marked down, snapshot asked for
    restarts: int = 0  # books whose exchange restarted its ordering ids
    reconnects: int = 0
    rotations: int = 0
    last_error: str = ""


@dataclass(eq=False)
class _Session:
    """One open WebSocket of this connection (two exist briefly during a handover)."""

    ws: ClientConnection
    opened: float = field(default_factory=time.monotonic)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown_announced: asyncio.Event = field(default_factory=asyncio.Event)
    retiring: bool = False
    keepalive: asyncio.Task[None] | None = None  # the exchange's own ping messages, when it wants them
    last_frame: float = 0.0  # time.time() of the last frame received (the read loop stamps it)
    fast_frames: FastFrameStats | None = None  # data frames cut out by feeder.websocket_queue


class ExchangeConnection:
    """Keeps one subscription of `symbols` on one exchange flowing into the writer. `run` until cancelled."""

    def __init__(
        self,
        protocol: ExchangeProtocol,
        symbols: Sequence[str],
        writer: SnapshotWriter,
        settings: ConnectionSettings,
        limiter: OpenLimiter,
        *,
        name: str,
    ) -> None:
        self.protocol = protocol
        self.exchange = protocol.name
        self.symbols = list(symbols)
        self._learned_limit: float | None = None  # the adaptive stall limit last learned (see _stall_limit)
        self._wanted = set(self.symbols)  # changed in place at run time: the read loop holds this very set
        self._last_raw: dict[str, bytes] = {}  # per symbol, the last frame handed to the writer
        self.writer = writer
        self.settings = settings
        self.limiter = limiter
        self.name = name
        self.urls = [protocol.url(self.symbols), *protocol.fallback_urls(self.symbols)]
        self.url = self.urls[0]  # the endpoint in use; the next one is tried after two failed connects
        self.stats = ConnectionStats()
        self.up = False
        self.down_since: float | None = None  # monotonic time since which it has not delivered (None: up)
        self._bad_logged = 0.0
        self._resync_times: deque[float] = deque()
        self._delivered: set[str] = set()  # symbols that delivered a book on any session of this connection
        self._since: float | None = None  # monotonic time of the first subscription
        self._reported: frozenset[str] = frozenset()  # the missing symbols last logged
        self._reading: _Session | None = None  # the session being read (requests go there)

    def __repr__(self) -> str:
        return f"<ExchangeConnection {self.name} {len(self.symbols)} symbols up={self.up}>"

    @property
    def stall_limit(self) -> float | None:
        """The silence (s) after which this connection counts as stalled; None while its rule has no judgement."""
        policy = self.settings.stall
        if policy.fixed is not None:
            return max(policy.fixed, policy.floor)
        return self._learned_limit if policy.adaptive else None

    # ------------------------------------------------------------------------------------------ main loop
    async def run(self) -> None:
        self.down_since = time.monotonic()
        reporter = asyncio.create_task(self._report_missing(), name=f"{self.name}-missing")
        try:
            await self._run()
        finally:
            self.up = False
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def change(self, added: Sequence[str], removed: Sequence[str]) -> None:
        """Subscribe `added` and drop `removed` (``md subscribe`` / ``md unsubscribe``) without reconnecting:
        the protocol's change frames go on the open connection, and a later reconnect subscribes the new set.
        Removed books are marked down at once: nobody vouches for them any more."""
        removed = [s for s in removed if s in self._wanted]
        added = [s for s in added if s not in self._wanted]
        if not added and not removed:
            return
        self.symbols = [s for s in self.symbols if s not in removed] + added
        self._wanted.difference_update(removed)
        self._wanted.update(added)
        self.urls = (
            [self.protocol.url(self.symbols), *self.protocol.fallback_urls(self.symbols)]
            if self.symbols
            else self.urls
        )
        self.url = self.urls[0]
        for symbol in removed:
            self._last_raw.pop(symbol, None)
            self._delivered.discard(symbol)
        if removed:
            self.writer.mark_down(self.exchange, removed)
        session = self._reading
        if added:
            self._since = time.monotonic()  # the new symbols get their own deadline to show up
        log.info(
            "%s: subscription changed at run time: +%s -%s (%d symbols now)",
            self.name, _listed(added) or "none", _listed(removed) or "none", len(self.symbols),
        )  # fmt: skip
        if session is None or not self.symbols:
            return
        with contextlib.suppress(ConnectionClosed):
            for i, frame in enumerate(self.protocol.change_frames(self.symbols, added, removed)):
                if i:
                    await asyncio.sleep(self.settings.subscribe_interval)
                await session.ws.send(frame)

    @property
    def missing(self) -> list[str]:
        """Subscribed symbols with no book yet, `missing_after` seconds after the first subscription: a
        mistyped or delisted symbol (Upbit and Binance send nothing for an unknown one). Empty before."""
        since = self._since
        if since is None or time.monotonic() - since < self.settings.missing_after:
            return []
        delivered = self._delivered
        return [s for s in self.symbols if s not in delivered]

    async def _report_missing(self) -> None:
        """Log the missing symbols when they change (the feeder status and ``md status`` show them too)."""
        while True:
            await asyncio.sleep(1.0)
            missing = frozenset(self.missing)
            if missing == self._reported:
                continue
            arrived = sorted(self._reported - missing)
            if arrived:
                log.info("%s: books arrived for %s, no longer missing", self.name, _listed(arrived))
            new = [s for s in self.symbols if s in missing and s not in self._reported]
            if new:
                log.warning(
                    "%s: no book for %s %.0fs after subscribing: unknown or delisted on %s? "
                    "(the other symbols are unaffected)",
                    self.name, _listed(new), self.settings.missing_after, self.exchange,
                )  # fmt: skip
                await self._ask_listed()
            self._reported = missing

    async def _ask_listed(self) -> None:
        """Ask the exchange which symbols it has this connection subscribed to (Upbit: LIST_SUBSCRIPTIONS)."""
        session = self._reading
        frames = self.protocol.list_frames()
        if session is None or not frames:
            return
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await session.ws.send(frame)

    def _confirm_missing(self, event: Listed) -> None:
        """The exchange's own list of this connection's subscriptions: a missing symbol it does not list is
        unknown to it (mistyped or delisted); one it lists is subscribed but has had no book yet."""
        missing = self.missing
        unknown = [s for s in missing if s not in event.symbols]
        quiet = [s for s in missing if s in event.symbols]
        if unknown:
            log.warning(
                "%s: %s does not list %s among this connection's subscriptions: unknown symbols",
                self.name, self.exchange, _listed(unknown),
            )  # fmt: skip
        if quiet:
            log.info(
                "%s: %s lists %s as subscribed, but sent no book yet",
                self.name,
                self.exchange,
                _listed(quiet),
            )

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                session = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.stats.last_error = _describe(exc)
                if failures % 2 == 0 and len(self.urls) > 1:
                    self._next_url()
                delay = self._backoff(failures)
                log.warning(
                    "%s: connect failed (%s); retry %d in %.2fs", self.name, _describe(exc), failures, delay
                )
                await asyncio.sleep(delay)
                continue
            reason = await self._serve(session)
            self._went_down(reason)
            # only a connection that delivered for a while earns an immediate retry: one that keeps dropping
            # soon after delivering backs off like one that never delivers (exchanges ban such IPs)
            stable = session.first_frame.is_set() and time.monotonic() - session.opened >= _STABLE
            failures = 1 if stable else failures + 1
            delay = self._backoff(failures)
            log.warning("%s: connection lost (%s); reconnecting in %.2fs", self.name, reason, delay)
            self.stats.reconnects += 1
            await asyncio.sleep(delay)

    def _next_url(self) -> None:
        """Move on to the exchange's next endpoint (Binance: port 443, then data-stream.binance.vision)."""
        current = self.urls.index(self.url)
        self.url = self.urls[(current + 1) % len(self.urls)]
        log.warning("%s: trying the next endpoint, %s", self.name, _short(self.url))

    def _backoff(self, failures: int) -> float:
        """0 for the first retry, then 0.25 s doubling up to the cap, with jitter (half to full)."""
        if failures <= 1:
            return 0.0
        cap = self.settings.reconnect_max_delay
        return float(min(cap, 0.25 * 2.0 ** (failures - 2)) * random.uniform(0.5, 1.0))

    async def _open(self) -> _Session:
        await self.limiter.acquire()
        s = self.settings
        if self._since is None:
            self._since = time.monotonic()
        log.info("%s: connecting to %s (%d symbols)", self.name, _short(self.url), len(self.symbols))
        ws = await connect(
            self.url,
            open_timeout=s.connect_timeout,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            # a server that answers nothing (ping timeout) keeps the closing handshake waiting this long before
            # the connection counts as lost and its books are marked down; a healthy one closes in milliseconds
            close_timeout=0.5,
            max_size=2**22,
            compression=None,
        )
        fast_frames = install_fast_data_frames(ws)
        try:
            for i, frame in enumerate(self.protocol.subscribe_frames(self.symbols)):
                if i:
                    await asyncio.sleep(s.subscribe_interval)
                await ws.send(frame)
        except BaseException:
            await ws.close()
            raise
        session = _Session(ws, fast_frames=fast_frames)
        ping = self.protocol.ping_frame
        if ping is not None:
            session.keepalive = asyncio.create_task(self._keepalive(ws, ping), name=f"{self.name}-ping")
        return session

    async def _keepalive(self, ws: ClientConnection, frame: str) -> None:
        """Send the exchange's keep-alive message every ping interval (Bybit ``{"op":"ping"}``, OKX ``ping``);
        its answer is read as an ack. A connection that stopped answering is found by the WebSocket pings
        and the stall rule; this only keeps the exchange from closing a quiet one."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.settings.ping_interval)
                await ws.send(frame)

    async def _close(self, session: _Session) -> None:
        if session.keepalive is not None:
            session.keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.keepalive
        await session.ws.close()

    async def _serve(self, session: _Session) -> str:
        """Read from `session` (and its planned successors) until a connection ends unplanned; say why."""
        reader = asyncio.create_task(self._read(session), name=f"{self.name}-read")
        watch = asyncio.create_task(self._watch(session), name=f"{self.name}-watch")
        stalled = False
        try:
            while True:
                rotate_at = self._rotation_deadline(session)
                shutdown = asyncio.create_task(session.shutdown_announced.wait())
                try:
                    done, _ = await asyncio.wait(
                        {reader, watch, shutdown}, timeout=rotate_at, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    shutdown.cancel()
                if reader in done:
                    return reader.result()
                if watch in done:
                    stalled = True
                    return watch.result()
                why = (
                    "server announced shutdown"
                    if session.shutdown_announced.is_set()
                    else "planned lifetime reached"
                )
                successor = await self._handover(session, why)
                if successor is None:
                    continue  # keep the old one; _rotation_deadline retries soon
                old_reader, reader = reader, successor[1]
                session = successor[0]
                await _finish(old_reader)
                await _finish(watch)
                watch = asyncio.create_task(self._watch(session), name=f"{self.name}-watch")
        finally:
            await _finish(watch)
            await _finish(reader)
            if stalled:
                # a stalled server reads nothing: a closing handshake would only delay the reconnect by
                # close_timeout, so the TCP connection is dropped at once
                session.ws.transport.abort()
            await self._close(session)

    async def _watch(self, session: _Session) -> str:
        """Return (a reason) once `session` is stalled: open, but silent for longer than its `StallPolicy` allows.

        Its books are marked down at once, before the connection is closed (a stalled server may take its
        time over the closing handshake). A check is skipped when this event loop itself was held up, or when
        frames are waiting unread: then the reader is behind, not the server.
        """
        policy = self.settings.stall
        if policy.fixed is None and not policy.adaptive:
            await asyncio.Event().wait()  # no watchdog: wait to be cancelled
        loop = asyncio.get_running_loop()
        tick = 0.05 if policy.fixed is not None and policy.fixed < 1.0 else 0.1
        await session.first_frame.wait()
        arrivals = ArrivalWindow(session.last_frame, self.stats.frames - 1, len(self.symbols))
        expected = loop.time() + tick
        while True:
            await asyncio.sleep(tick)
            now_loop = loop.time()
            held_up = now_loop - expected > tick
            expected = now_loop + tick
            now = time.time()
            arrivals.observe(now, session.last_frame, self.stats.frames)
            limit = self._stall_limit(policy, arrivals)
            silent = now - session.last_frame
            if limit is None or silent <= limit or held_up or session.retiring:
                continue
            fast = received_frames(session.ws)
            if fast is not None and fast.queue:
                continue
            reason = f"stalled: no frame for {silent:.2f}s (limit {limit:.2f}s)"
            log.warning(
                "%s: %s; its books are marked not live, the connection is replaced", self.name, reason
            )
            self._went_down(reason)
            return reason

    def _stall_limit(self, policy: StallPolicy, arrivals: ArrivalWindow) -> float | None:
        """The silence `policy` allows now; None: no judgement yet (only the pings watch this connection).

        The adaptive limit a session learned outlives it: a reconnected connection carries the same symbols,
        so it is judged by the previous session's rate until it has a rate of its own.
        """
        if policy.fixed is not None:
            return max(policy.fixed, policy.floor)
        gap = arrivals.mean_gap()
        if gap is None:
            return self._learned_limit
        self._learned_limit = max(policy.floor, policy.gaps * gap)
        return self._learned_limit

    def _rotation_deadline(self, session: _Session) -> float | None:
        lifetime = self.settings.max_lifetime
        if lifetime is None:
            return None
        return max(0.0, session.opened + lifetime - time.monotonic())

    async def _handover(self, old: _Session, why: str) -> tuple[_Session, asyncio.Task[str]] | None:
        """Open a replacement, wait for its first frame, then retire the old connection."""
        log.info("%s: replacing the connection (%s): opening the new one first", self.name, why)
        try:
            new = await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "%s: replacement failed (%s); keeping the current connection", self.name, _describe(exc)
            )
            old.opened = time.monotonic() - (self.settings.max_lifetime or 0) + 5.0  # try again in ~5 s
            old.shutdown_announced.clear()
            return None
        reader = asyncio.create_task(self._read(new), name=f"{self.name}-read")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(new.first_frame.wait(), self.settings.handover_timeout)
        old.retiring = True
        await self._close(old)
        self.stats.rotations += 1
        log.info("%s: replacement done", self.name)
        return new, reader

    async def _read(self, session: _Session) -> str:
        """Frames in, books out; returns the reason the connection ended.

        This loop runs once per frame, so it keeps what it needs in locals and takes frames as bytes: the
        parsers read bytes, and a text frame that is not UTF-8 is then a bad frame (counted, skipped) instead
        of a connection websockets closes. Complete frames websockets has already received are taken from its
        queue directly (`feeder.websocket_queue`); ``recv`` is awaited only when that queue is empty.

        A frame whose head shows a book of a known symbol (`book_symbol`) goes to the writer undecoded: under
        load most frames are superseded by a newer one of their symbol before they are written, and decoding
        only those that are written (`decode_deferred`) is what keeps the writer from starving (measured: with
        every frame decoded here, 2000 symbols at 40,000 frames/s left 3,300 books/s written; deferred, ~21,000+).
        """
        ws = session.ws
        recv = ws.recv
        fast = received_frames(ws)
        queued: deque[Frame] = fast.queue if fast is not None else deque()
        self._reading = session
        resume = fast.resume if fast is not None else _nothing
        parse = self.protocol.parse
        book_symbol = self.protocol.book_symbol
        submit = self.writer.submit
        submit_frame = self.writer.submit_frame
        wanted = self._wanted
        last_raw = self._last_raw
        delivered = self._delivered
        exchange = self.exchange
        stats = self.stats
        now = time.time
        first = True
        try:
            while True:
                frame: bytes
                if queued and queued[0].fin:
                    data = queued.popleft().data
                    resume()
                    frame = data if type(data) is bytes else bytes(data)
                else:
                    frame = await recv(False)
                stats.frames += 1
                session.last_frame = received = now()
                symbol = book_symbol(frame)
                if symbol is not None:  # a book of a known symbol: decoded only if and when it is written
                    if symbol not in wanted:
                        self._unexpected(symbol)
                        continue
                    if last_raw.get(symbol) == frame:  # the same book pushed again: nothing to write
                        stats.repeats += 1
                        continue
                    last_raw[symbol] = frame
                    if symbol not in delivered:
                        delivered.add(symbol)
                    submit_frame(exchange, symbol, frame, received, self)
                    stats.books += 1
                    if first:
                        first = False
                        self._receiving(session)
                    continue
                try:
                    events = parse(frame, received)
                except BadFrame as exc:
                    stats.bad_frames += 1
                    self._log_bad(exc, frame)
                    continue
                receiving = True  # an error reply or a shutdown notice does not show the subscription works
                for event in events:
                    if type(event) is OrderBookSnapshot:
                        if event.symbol not in wanted:
                            self._unexpected(event.symbol)
                            continue
                        submit(exchange, event)
                        stats.books += 1
                        delivered.add(event.symbol)
                    elif type(event) is Resync:
                        receiving = False
                        if not await self._resync(session, event):
                            return f"resync of {event.symbol}: replacing the connection"
                    elif type(event) is SequenceRestart:
                        self._restarted(event)
                    elif type(event) is Listed:
                        self._confirm_missing(event)
                    elif not self._on_event(session, event):
                        receiving = False
                if first and receiving:
                    first = False
                    self._receiving(session)
        except ConnectionClosed as exc:
            if session.retiring:
                return "retired"
            return _describe(exc)

    async def _resync(self, session: _Session, event: Resync) -> bool:
        """An incremental book broke its chain or failed a check: it is not live from now (marked down at
        once) and a new snapshot is asked for on this connection. False: replace the connection instead (the
        protocol cannot resubscribe one symbol, or this connection resynchronised more than `resyncs_per_minute`
        times in a minute: the exchange limits requests per connection, and a fresh connection gives every
        symbol a new snapshot)."""
        self.stats.resyncs += 1
        self.writer.mark_down(self.exchange, [event.symbol])
        self._last_raw.pop(event.symbol, None)
        now = time.monotonic()
        recent = self._resync_times
        recent.append(now)
        while recent and now - recent[0] > _RESYNC_WINDOW:
            recent.popleft()
        frames = (
            self.protocol.resync_frames(event.symbol)
            if len(recent) <= self.settings.resyncs_per_minute
            else []
        )
        if self.stats.resyncs == 1 or self.stats.resyncs % 100 == 0 or not frames:
            log.warning(
                "%s: %s book not live (%s); %s (%d resyncs so far)",
                self.name,
                event.symbol,
                event.reason,
                "asking for a new snapshot" if frames else "replacing the connection",
                self.stats.resyncs,
            )
        if not frames:
            recent.clear()
            return False
        for frame in frames:
            await session.ws.send(frame)
        return True

    def _restarted(self, event: SequenceRestart) -> None:
        """The exchange restarted this book's ordering ids: the stored book's id stops guarding (see
        `SnapshotWriter.mark_down`), so the verified snapshot that follows replaces it."""
        self.stats.restarts += 1
        log.warning("%s: %s: %s", self.name, event.symbol, event.reason)
        self.writer.mark_down(self.exchange, [event.symbol], restart=True)

    def _unexpected(self, symbol: str) -> None:
        """A book of a symbol this connection never subscribed: dropped (a flood of them must not fill Redis)."""
        self.stats.unexpected += 1
        if self.stats.unexpected == 1 or self.stats.unexpected % 10_000 == 0:
            log.warning(
                "%s: dropped a book of %s, which this connection did not subscribe (%d so far)",
                self.name,
                symbol,
                self.stats.unexpected,
            )

    def _on_event(self, session: _Session, event: Event) -> bool:
        """What the exchange told us besides books; False for a shutdown notice or an error reply."""
        if isinstance(event, ShutdownNotice):
            log.info("%s: server announced a shutdown", self.name)
            session.shutdown_announced.set()
            return False
        if isinstance(event, ErrorReply):
            self.stats.exchange_errors += 1
            self.stats.last_error = str(event)
            log.warning("%s: %s", self.name, event)
            return False
        return True  # an ack

    def _receiving(self, session: _Session) -> None:
        session.first_frame.set()
        if not session.retiring:
            self.up = True
            self.down_since = None
            log.info("%s: receiving (%d symbols)", self.name, len(self.symbols))

    def book_sides(self, frame: bytes, recv_ts: float, symbol: str) -> BookSides | None:
        """A frame handed to the writer undecoded, with its sides as stored text (`FrameSource`); None: the
        writer calls `decode_deferred`, which decides whether the frame is malformed."""
        try:
            sides = self.protocol.book_sides(frame, recv_ts)
        except Exception:  # as in decode_deferred: a bug here must cost one frame, not the writer task
            log.exception("%s: writing a frame's sides failed unexpectedly: %r", self.name, frame[:120])
            return None
        return sides  # the writer checks it is `symbol`'s book

    def decode_deferred(self, frame: bytes, recv_ts: float, symbol: str) -> OrderBookSnapshot | None:
        """Decode a frame handed to the writer undecoded (`FrameSource`); a malformed one is counted here."""
        try:
            events = self.protocol.parse(frame, recv_ts)
        except BadFrame as exc:
            self.stats.bad_frames += 1
            self._log_bad(exc, frame)
            return None
        except Exception:
            # parse raises nothing else (fuzz-tested); but this runs in the writer, which every connection
            # shares: a bug here must cost one frame, not the writer task
            self.stats.bad_frames += 1
            log.exception("%s: decoding a frame failed unexpectedly: %r", self.name, frame[:120])
            return None
        for event in events:  # an error reply cannot look like a book: no book here means malformed
            if type(event) is OrderBookSnapshot and event.symbol == symbol:
                return event
        self.stats.bad_frames += 1
        self._log_bad(BadFrame(f"no {symbol} book in a frame that looked like one"), frame)
        return None

    def _went_down(self, reason: str) -> None:
        self.stats.last_error = reason
        self._last_raw.clear()  # after the mark-down, the same book again must be written (it revives it)
        self.protocol.forget(self.symbols)  # incremental books start again from the next snapshot
        if self.up:
            self.up = False
            self.down_since = time.monotonic()
        # Mark every symbol of this connection not live, even those that had no frame yet on this session.
        self.writer.mark_down(self.exchange, self.symbols)

    def _log_bad(self, exc: BadFrame, frame: bytes | str) -> None:
        now = time.monotonic()
        if now - self._bad_logged > 10.0:
            self._bad_logged = now
            shown = frame[:120] if isinstance(frame, str) else frame[:120].decode("utf-8", "replace")
            log.warning(
                "%s: skipped a malformed frame (%s): %r (%d so far)",
                self.name,
                exc,
                shown,
                self.stats.bad_frames,
            )


def _nothing() -> None:
    return None


async def _finish(task: asyncio.Task[str]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        return str(exc)  # e.g. "sent 1011 (internal error) keepalive ping timeout; no close frame received"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidURI | InvalidHandshake):
        return f"handshake failed: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _listed(symbols: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(symbols[:most])
    return shown if len(symbols) <= most else f"{shown} and {len(symbols) - most} more"


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
