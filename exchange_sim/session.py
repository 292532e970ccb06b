"""`Session`: one client connection of the simulator: its subscriptions, its outbox and writer, its faults.

Every session has an outbox drained by its own writer task, so that a slow client only ever delays itself,
never the pump or the other clients; a client too slow to keep up is dropped, as exchanges do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from websockets.exceptions import ConnectionClosed

from exchange_sim.transport import SimConnection, abort, send_frames, set_reading

if TYPE_CHECKING:
    from exchange_sim.server import ExchangeServer

log = logging.getLogger("exchange_sim")

_BATCH = 256  # frames written per system call at most


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """An outbox item: close the connection with this code once everything queued before it is sent."""

    code: int
    reason: str = ""


Outgoing = bytes | str | CloseRequest


@dataclass(eq=False)
class Subscription:
    """One name a connection subscribed to (an Upbit code, a Binance stream) and the book it reads."""

    name: str  # Upbit: the code without its .N suffix ("KRW-ETH"); Binance: the stream ("btcusdt@depth5")
    symbol: str  # the book key, as the feeder stores it: "KRW-ETH", "BTCUSDT"
    realtime: bool = True  # False: only the initial frame (Upbit is_only_snapshot, Binance non-book streams)
    variant: Hashable = None  # frames with equal variants for one update are encoded once
    generated: bool = True  # False: a valid name the simulator has no data for (it sends nothing)
    cadence: float | None = None  # a stream pushed every `cadence` s, changed or not (Binance partial books)
    last_push: float = 0.0  # loop time of the last frame sent for it


SubT = TypeVar("SubT", bound=Subscription)


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
        self.closing = False  # no more frames: an error reply and a close are queued, or it was dropped
        self.subscribed_once = False
        self.combined = True  # Binance: frames wrapped as {"stream","data"}
        self.last_alive = asyncio.get_running_loop().time()  # last pong or resume, for the ping timeout
        self.last_activity = self.last_alive  # last frame in or out (what counts: server.idle_activity)
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
                # Up to _BATCH frames at once, written with one system call (`transport.send_frames`).
                batch: list[bytes | str] = []
                while outbox and len(batch) < _BATCH:
                    item = outbox[0]
                    if isinstance(item, CloseRequest):
                        break
                    batch.append(item)
                    outbox.popleft()
                sent = await send_frames(ws, batch, bytes_as_text=as_text)
                self.server.note_activity(ws, "out")
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
        abort(self.ws)

    def stall(self, seconds: float | None) -> None:
        """Stop sending and stop reading (so client pings go unanswered) without closing anything."""
        if self.closing:
            return
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
        if stalled:
            self._unstalled.clear()
        else:
            self._unstalled.set()
            self.last_activity = asyncio.get_running_loop().time()  # a stall is the server's, not idleness
        set_reading(self.ws, not stalled)

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
