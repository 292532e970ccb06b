"""`SnapshotWriter`: the latest-wins pending buffer between the connections and Redis.

Connections call `submit` for every decoded book; it never blocks and never grows past one pending book per
key, so a slow or absent Redis costs memory bounded by the number of symbols, not by time. One task (`run`)
drains the buffer into pipelined batches of the atomic write script. At low load a book is written as soon as
it arrives (the task wakes on every submit); under load, books that arrive while a batch is in flight replace
their pending predecessor (counted as coalesced), which is exactly the backpressure a book cache wants.

When Redis fails, the batch goes back into the buffer (unless a newer book already replaced it), the writer
waits with capped exponential backoff and tries again; Redis coming back empty (a restart) is handled by the
layout's NOSCRIPT reload and by re-adding the index entries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from client.layout import RedisLayout, arun_flow, encode_book, mark_down_flow, write_flow
from client.models import OrderBookSnapshot

log = logging.getLogger(__name__)

BookId = tuple[str, str]  # (exchange, symbol)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


@dataclass
class WriterStats:
    submitted: int = 0
    written: int = 0  # accepted by the ordering check
    rejected: int = 0  # older than (or as old as another writer's) stored book
    coalesced: int = 0  # replaced in the buffer by a newer book before it was written
    batches: int = 0
    marked_down: int = 0
    redis_errors: int = 0


class SnapshotWriter:
    """Owns the pending buffer and the task that writes it; `run` is started and cancelled by its owner."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        layout: RedisLayout,
        feeder_id: str,
        *,
        batch: int = 500,
        max_backoff: float = 1.0,
    ) -> None:
        self._redis = client
        self._layout = layout
        self._feeder_id = feeder_id
        self._batch = batch
        self._max_backoff = max_backoff
        self._pending: dict[BookId, OrderBookSnapshot] = {}
        self._down: dict[BookId, None] = {}
        self._indexed: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = WriterStats()
        self.redis_ok = True
        self.last_error = ""
        self.last_write = 0.0

    # ------------------------------------------------------------------------------------------ producers
    def submit(self, exchange: str, snapshot: OrderBookSnapshot) -> None:
        """Queue a book; a pending older book of the same key is replaced (and counted as coalesced)."""
        book_id = (exchange, snapshot.symbol)
        pending = self._pending
        if book_id in pending:
            self.stats.coalesced += 1
        pending[book_id] = snapshot
        self.stats.submitted += 1
        if self._down:
            self._down.pop(book_id, None)
        if not self._wake.is_set():
            self._idle.clear()
            self._wake.set()

    def mark_down(self, exchange: str, symbols: Iterable[str]) -> None:
        """The connection delivering these books dropped: readers must see them as not live at once.

        Pending books of those symbols are discarded: written now, they would announce a live book from a
        connection that no longer exists.
        """
        for symbol in symbols:
            book_id = (exchange, symbol)
            self._pending.pop(book_id, None)
            self._down[book_id] = None
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._down)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written (or `timeout` passes); True when it was."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------------------------------ the task
    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._down:
                try:
                    await self._write_some()
                except REDIS_ERRORS as exc:
                    failures += 1
                    self._on_error(exc, failures)
                    delay = 0.0 if failures == 1 else min(self._max_backoff, 0.05 * 2 ** (failures - 2))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                if failures:
                    log.info("Redis is back after %d failed attempts: writing the newest books", failures)
                    failures = 0
                self.redis_ok = True
            self._idle.set()

    async def _write_some(self) -> None:
        downs = list(self._down)
        self._down.clear()
        if downs:
            try:
                marked = await arun_flow(self._redis, mark_down_flow(self._layout, self._feeder_id, downs))
            except BaseException:
                for book_id in downs:
                    if book_id not in self._pending:
                        self._down[book_id] = None
                raise
            self.stats.marked_down += marked
        if not self._pending:
            return
        if len(self._pending) <= self._batch:
            items = list(self._pending.items())
            self._pending.clear()
        else:
            items = []
            for book_id in list(self._pending)[: self._batch]:
                items.append((book_id, self._pending.pop(book_id)))
        try:
            encoded = [
                encode_book(
                    self._layout, snap, exchange=ex, writer=self._feeder_id, heartbeat=True, validate=False
                )
                for (ex, _), snap in items
            ]
            seqs = await arun_flow(self._redis, write_flow(self._layout, encoded, indexed=self._indexed))
        except BaseException:
            # Put the batch back unless something newer (or a mark-down) arrived meanwhile.
            for book_id, snap in items:
                if book_id not in self._pending and book_id not in self._down:
                    self._pending[book_id] = snap
            raise
        for book in encoded:
            self._indexed.add(book.key)
        accepted = sum(1 for s in seqs if s)
        self.stats.written += accepted
        self.stats.rejected += len(seqs) - accepted
        self.stats.batches += 1
        self.last_write = time.time()

    def _on_error(self, exc: BaseException, failures: int) -> None:
        self.stats.redis_errors += 1
        self.redis_ok = False
        self.last_error = f"redis: {exc}"
        self._indexed.clear()  # Redis may come back empty: index every book again
        if failures == 1 or failures % 50 == 0:
            log.warning(
                "Redis write failed (%s); keeping the newest book per key (%d pending) and retrying",
                exc,
                len(self._pending),
            )
