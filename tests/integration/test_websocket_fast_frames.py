"""`feeder.websocket_queue.install_fast_data_frames`: the feeder's own parser of complete data frames.

A real websockets client connection (to a local websockets server) is fed server frames through its
``data_received``, as the transport feeds it, in every way a byte stream can be cut: the messages queued must
be exactly what websockets alone queues, control frames must still reach websockets (a ping is answered), and
what websockets refuses (a masked frame, one over the size limit) it still refuses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN

from feeder.websocket_queue import install_fast_data_frames

pytestmark = pytest.mark.integration
MAX_SIZE = 2**20


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A websockets server on a free port; what each connection receives (the client's pongs show there)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}", []


async def client(url: str, fast: bool) -> ClientConnection:
    ws = await connect(url, compression=None, max_size=MAX_SIZE)
    if fast:
        assert install_fast_data_frames(ws) is not None, "the fast path is not available with this websockets"
    return ws


def wire(frames: list[Frame]) -> bytes:
    return b"".join(f.serialize(mask=False, extensions=[]) for f in frames)


def payloads(ws: ClientConnection) -> list[tuple[Any, bytes]]:
    queue = ws.recv_messages.frames.queue
    out = [(f.opcode, bytes(f.data), f.fin) for f in queue]
    queue.clear()
    ws.recv_messages.maybe_resume()  # as a reader that took them does (reading was paused past the high mark)
    return [(op, data) for op, data, fin in out if fin]


def data_frames(rng: random.Random) -> list[Frame]:
    """Text and binary frames with every header size: 7-bit, 16-bit and 64-bit lengths."""
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000] + [rng.randrange(0, 3000) for _ in range(40)]
    rng.shuffle(sizes)
    return [
        Frame(Opcode.TEXT if i % 2 else Opcode.BINARY, bytes(rng.randrange(32, 127) for _ in range(n)))
        for i, n in enumerate(sizes)
    ]


async def test_every_cut_of_the_stream_queues_the_same_messages_as_websockets(
    server: tuple[str, list[bytes]],
) -> None:
    rng = random.Random(7)
    frames = data_frames(rng)
    stream = wire(frames)
    expected = [(f.opcode, bytes(f.data)) for f in frames]
    plain, fast = await client(server[0], False), await client(server[0], True)
    try:
        # random cuts, then reads of one byte at a time through the headers of the first frames
        cuts = sorted(rng.sample(range(1, len(stream)), 300)) + list(range(1, 300))
        for ws in (plain, fast):
            pos = 0
            for cut in sorted(set(cuts)):
                ws.data_received(stream[pos:cut])
                pos = cut
            ws.data_received(stream[pos:])
        assert payloads(plain) == expected
        assert payloads(fast) == expected
        assert fast.protocol.state is OPEN
    finally:
        for ws in (plain, fast):
            await ws.close()


async def test_data_frames_are_parsed_here_and_control_frames_by_websockets(
    server: tuple[str, list[bytes]],
) -> None:
    ws = await connect(server[0], compression=None, max_size=MAX_SIZE)
    stats = install_fast_data_frames(ws)
    assert stats is not None
    try:
        before = [Frame(Opcode.TEXT, b'{"a":1}'), Frame(Opcode.BINARY, b"xyz")]
        after = [Frame(Opcode.TEXT, b'{"b":2}')]
        # a ping in the middle: websockets must answer it (a pong goes out) and the data around it arrive
        sent: list[bytes] = []
        transport = ws.transport
        real_write = transport.write

        def recording_write(data: Any) -> None:
            sent.append(bytes(data))
            real_write(data)

        transport.write = recording_write  # type: ignore[method-assign]
        ws.data_received(wire([*before, Frame(Opcode.PING, b"hello"), *after]))
        assert payloads(ws) == [(f.opcode, bytes(f.data)) for f in [*before, *after]]
        assert stats.frames == 3, "the data frames went through websockets' parser, not the fast path"
        assert stats.delegated >= 1
        # the client's pong (masked): its opcode is in the low bits of the first byte
        assert any(chunk[0] & 0x0F == Opcode.PONG for chunk in sent), f"no pong sent: {sent!r}"
        # a fragmented message goes to websockets whole, and the stream goes on
        ws.data_received(wire([Frame(Opcode.TEXT, b"ab", fin=False), Frame(Opcode.CONT, b"cd")]))
        ws.data_received(wire(after))
        queue = ws.recv_messages.frames.queue
        assert [(bytes(f.data), f.fin) for f in queue] == [(b"ab", False), (b"cd", True), (b'{"b":2}', True)]
        queue.clear()
        ws.recv_messages.maybe_resume()
        assert stats.frames == 4
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"x" * (MAX_SIZE + 1)).serialize(mask=False, extensions=[]), 1009),
        (Frame(Opcode.TEXT, b"masked").serialize(mask=True, extensions=[]), 1002),
    ],
    ids=["over max_size", "masked by the server"],
)
async def test_what_websockets_refuses_it_still_refuses(
    server: tuple[str, list[bytes]], frame: bytes, code: int
) -> None:
    ws = await client(server[0], True)
    try:
        ws.data_received(wire([Frame(Opcode.TEXT, b"before")]) + frame)
        assert payloads(ws) == [(Opcode.TEXT, b"before")]
        assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == code
    finally:
        await ws.close()


async def test_the_feeder_takes_the_fast_path_with_the_installed_websockets(
    server: tuple[str, list[bytes]],
) -> None:
    """If a websockets upgrade moved the internals, install_fast_data_frames would return None and every
    frame would silently go back to the slow parser: this fails instead."""
    ws = await connect(server[0], compression=None, max_size=MAX_SIZE)
    try:
        stats = install_fast_data_frames(ws)
        assert stats is not None
        ws.data_received(wire([Frame(Opcode.TEXT, b"1"), Frame(Opcode.TEXT, b"2")]))
        assert stats.frames == 2 and stats.delegated == 0
        assert await asyncio.wait_for(ws.recv(), 1) == "1"
    finally:
        await ws.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_frames_from_the_socket_take_the_fast_path_on_either_event_loop(loop: str) -> None:
    """Through a real socket: asyncio's transport looks data_received up on every read, uvloop's keeps the
    method it was given (install_fast_data_frames sets the protocol again so that it takes the new one)."""
    from feeder.event_loop import loop_factory

    async def main() -> tuple[list[bytes], int]:
        async def handler(ws: ServerConnection) -> None:
            await ws.recv()  # after the client asked, as an exchange answers a subscription
            for i in range(20):
                await ws.send(f'{{"n":{i}}}')
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            ws = await connect(f"ws://127.0.0.1:{port}", compression=None, max_size=MAX_SIZE, close_timeout=1)
            stats = install_fast_data_frames(ws)
            assert stats is not None
            try:
                await ws.send("subscribe")
                got = [await asyncio.wait_for(ws.recv(False), 5) for _ in range(20)]
            finally:
                await ws.close()
            return got, stats.frames

    name, factory = loop_factory(loop)
    assert name == loop
    with asyncio.Runner(loop_factory=factory) as runner:
        got, fast = runner.run(main())
    assert got == [f'{{"n":{i}}}'.encode() for i in range(20)]
    assert fast >= 19, f"{fast} of 20 frames parsed by the fast path on {loop}"
