"""The frames websockets has received but ``recv`` has not returned: the only websockets internals the feeder uses.

``recv`` costs about 1 µs more per frame than taking a complete frame from this queue (a coroutine, the
reassembly of a one-frame message, flow-control bookkeeping): a few percent of the feeder's CPU at 20,000
frames/s. The queue is websockets' internal state (``recv_messages``, the `Assembler` of the pinned 17.x);
the reader takes only frames that are complete messages (``fin``) and calls ``maybe_resume`` after each, as
``Assembler.get`` does, so flow control works unchanged. If the internals are not there (another websockets
version), `received_frames` returns None and every frame goes through ``recv``;
tests/integration/test_websocket_fastpath.py fails when that happens with the installed version.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame


@dataclass(frozen=True, slots=True)
class ReceivedFrames:
    """The connection's queue of received frames and the call that resumes reading after taking one."""

    queue: deque[Frame]
    resume: Callable[[], None]


def received_frames(ws: ClientConnection) -> ReceivedFrames | None:
    """The fast path into `ws`'s received frames, or None when this websockets version does not offer it."""
    try:
        assembler = ws.recv_messages
        queue = assembler.frames.queue
        resume = assembler.maybe_resume
    except AttributeError:
        return None
    if not isinstance(queue, deque) or not callable(resume):
        return None
    return ReceivedFrames(queue, resume)
