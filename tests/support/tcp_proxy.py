"""A TCP forwarder on 127.0.0.1 standing in for a virtual IP in front of Redis: `switch` points it at another
server and cuts every open connection, as a VIP that moves to a promoted replica does (the old server is
unreachable through it afterwards). It runs its own event loop in a thread, so that a test's blocking calls
cannot stall the traffic it forwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`; start with `start`, stop with `close` (or ``with``)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0  # connections accepted so far (a test checks that clients did come through)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.Task[None]] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def switch(self, target: int) -> None:
        """Send new connections to `target` and close every open one: clients must reconnect, and reach it."""
        self._call(self._switch(target))

    def close(self) -> None:
        """Stop listening, close every connection, stop the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- in its loop
    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, HOST, 0, family=socket.AF_INET)

    async def _switch(self, target: int) -> None:
        self.target = target
        await self._cancel_pairs()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._cancel_pairs()
        await self._server.wait_closed()

    async def _cancel_pairs(self) -> None:
        pairs = list(self._pairs)
        for pair in pairs:
            pair.cancel()
        await asyncio.gather(*pairs, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._pairs.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(HOST, self.target)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pairs.discard(task)
            for stream in _present(writer, upstream):
                stream.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await stream.wait_closed()


def _present(*streams: asyncio.StreamWriter | None) -> Iterator[asyncio.StreamWriter]:
    return (stream for stream in streams if stream is not None)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until `source` ends, then end `sink` too (a client or server that hung up is passed on)."""
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    sink.close()
