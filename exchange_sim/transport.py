"""The simulator's WebSocket transport: every websockets internal the simulator relies on, behind one door.

Three things the public websockets API does not offer, and what they are built on (websockets 17.x, pinned
in pyproject.toml; tests/integration/test_sim_transport.py fails if one of them silently stops working):

- counting every incoming frame, pings and pongs included, the way Binance's message-rate limit does:
  `SimConnection.process_event` (control frames never reach the application);
- writing a batch of frames with one system call: `send_frames` frames them with the connection's
  ``send_context`` and sans-I/O ``protocol`` (what ``send`` itself uses), and `SimConnection.send_data`
  joins what the protocol queued into one ``transport.write``;
- failing a connection on the spot (`fail`, close code and reason) and the transport-level faults
  (`abort`, `set_reading`, `write_immediately`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode

if TYPE_CHECKING:
    from exchange_sim.session import Session


class IncomingGate(Protocol):
    def note_activity(self, ws: SimConnection, kind: str) -> None: ...

    def admit_incoming(self, ws: SimConnection) -> bool:
        """Count one incoming frame of `ws`; False fails the connection (the frame is dropped)."""
        ...


class SimConnection(ServerConnection):
    """A server connection that counts incoming frames and writes queued frames with one system call."""

    sim_owner: ClassVar[IncomingGate | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim_incoming: deque[float] = deque()
        self.sim_session: Session[Any] | None = None
        self.sim_handshake: Any = None  # what `check_handshake` parsed from the URL, for the handler
        self.sim_failed = False  # failed by the rate limiter: whatever the client still sends is ignored
        self.sim_writes = 0  # transport writes, for the test that proves batches go out in one write

    def process_event(self, event: Any) -> None:
        owner = self.sim_owner
        if self.request is not None and isinstance(event, Frame) and owner is not None:
            if self.sim_failed:
                return
            if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY:
                owner.note_activity(self, "in")
            elif event.opcode is Opcode.PING:
                owner.note_activity(self, "ping")
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
                self._write(b"".join(pending))
                pending = []
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()
        if pending:
            self._write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _write(self, data: bytes) -> None:
        self.sim_writes += 1
        self.transport.write(data)


async def send_frames(ws: SimConnection, frames: Iterable[bytes | str], *, bytes_as_text: bool) -> int:
    """Send `frames` as one batch (one system call when the socket keeps up); how many were sent.

    ``send_context()`` is what ``send()`` itself uses for the state checks and flow control (it waits while
    the client's socket is full); it is not part of websockets' documented API, which has no batch send.
    This is worth ~2x in frames per second. `bytes_as_text` sends bytes as text frames (Binance).
    """
    sent = 0
    protocol = ws.protocol
    async with ws.send_context():
        for item in frames:
            if isinstance(item, str):
                protocol.send_text(item.encode())
            elif bytes_as_text:
                protocol.send_text(item)
            else:
                protocol.send_binary(item)
            sent += 1
    return sent


def fail(ws: SimConnection, code: int, reason: str) -> None:
    """Fail the connection now with `code` (as an exchange's rate limiter does) and send the close frame."""
    ws.protocol.fail(code, reason)
    ws.send_data()


def abort(ws: ServerConnection) -> None:
    """Drop the TCP connection without a close frame, like a network failure or a crashed server."""
    ws.transport.abort()


def set_reading(ws: ServerConnection, reading: bool) -> None:
    """Pause (or resume) reading from the socket: a stalled server leaves the client's pings unanswered."""
    transport = ws.transport
    if not reading:
        transport.pause_reading()
    elif not transport.is_closing():
        transport.resume_reading()


def write_immediately(ws: ServerConnection) -> None:
    """No write buffering (HTTP answers of the control endpoint go out at once)."""
    ws.transport.set_write_buffer_limits(high=0, low=0)
