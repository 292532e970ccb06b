"""The consumers of the mirror's updates: `UpdateQueue` (``wait_for_update``, ``updates()``) and
`CallbackConsumer` (``on_update``). The cache hands each accepted live book to every consumer that wants it.

`UpdateQueue` is the latest-wins buffer of one consumer.

Memory stays bounded by the number of symbols: a slow consumer sees the newest book per symbol, and
``snapshot.skipped`` says how many updates of that book it did not see (from the ``seq`` numbers, so lost
messages count too). Filled by the mirror's subscriber (a thread or a task), drained from any thread or an
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from client.models import OrderBookSnapshot

log = logging.getLogger("client.mirror")

UpdateCallback = Callable[[OrderBookSnapshot], None]


class Consumer(Protocol):
    def wants(self, key: str) -> bool: ...

    def push(self, key: str, snapshot: OrderBookSnapshot, previous_seq: int | None = None) -> None: ...


class CallbackConsumer:
    """An ``on_update`` callback as a consumer: called on the subscriber for every update it wants."""

    def __init__(self, keys: set[str] | None, callback: UpdateCallback) -> None:
        self.keys = keys  # None: every mirrored key
        self.callback = callback

    def wants(self, key: str) -> bool:
        return self.keys is None or key in self.keys

    def push(self, key: str, snapshot: OrderBookSnapshot, previous_seq: int | None = None) -> None:
        try:
            self.callback(snapshot)
        except Exception:
            log.exception("on_update callback failed for %s", key)


class UpdateQueue:
    """Latest-wins buffer of updates for one consumer; safe to fill and drain from different threads."""

    def __init__(self, keys: set[str] | None) -> None:
        self.keys = keys  # None: every mirrored key
        self._pending: dict[str, OrderBookSnapshot] = {}
        self._base: dict[str, int | None] = {}  # per pending key: the seq the consumer saw before it
        self._delivered_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aready: asyncio.Event | None = None

    def wants(self, key: str) -> bool:
        return self.keys is None or key in self.keys

    def push(self, key: str, snapshot: OrderBookSnapshot, previous_seq: int | None = None) -> None:
        """Queue `snapshot`; `previous_seq` is the seq the cache held before it (the baseline of a new key)."""
        with self._lock:
            if key not in self._pending:
                self._base[key] = self._delivered_seq.get(key, previous_seq)
            self._pending[key] = snapshot
        self._ready.set()
        loop, event = self._loop, self._aready
        if loop is not None and event is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            else:
                with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                    loop.call_soon_threadsafe(event.set)

    def drain(self) -> list[OrderBookSnapshot]:
        with self._lock:
            items = [(key, snap, self._base.pop(key, None)) for key, snap in self._pending.items()]
            self._pending.clear()
            self._ready.clear()
            if self._aready is not None:
                self._aready.clear()
        out: list[OrderBookSnapshot] = []
        for key, snap, base in items:
            seq = snap.seq or 0
            skipped = max(0, seq - base - 1) if base is not None else 0
            self._delivered_seq[key] = seq
            out.append(replace(snap, skipped=skipped))
        return out

    def wait(self, timeout: float | None) -> list[OrderBookSnapshot]:
        if not self._ready.wait(timeout):
            return []
        return self.drain()

    async def await_(self, timeout: float | None) -> list[OrderBookSnapshot]:
        if self._aready is None:
            self._loop = asyncio.get_running_loop()
            self._aready = asyncio.Event()
            if self._ready.is_set():
                self._aready.set()
        try:
            await asyncio.wait_for(self._aready.wait(), timeout)
        except TimeoutError:
            return []
        return self.drain()
