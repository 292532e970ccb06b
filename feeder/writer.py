"""`SnapshotWriter`: the latest-wins pending buffer between the connections and Redis.

Connections call `submit` for every decoded book, or `submit_frame` for a received frame of a known symbol that
is decoded only when it is written (under load most frames are replaced by a newer one of their symbol first,
and decoding them all would starve the writer). Neither blocks, and the buffer never grows past one pending
book per key, so a slow or absent Redis costs memory bounded by the number of symbols, not by time. One task
(`run`) drains the buffer into pipelined batches of the atomic write script, sent in chunks so that Redis runs
one chunk while the next is encoded. At low load a book is written as soon as it arrives (the task wakes on
every submit); under load, books that arrive while a batch is in flight replace their pending predecessor
(counted as coalesced), which is exactly the backpressure a book cache wants.

When Redis fails, the batch goes back into the buffer (unless a newer book already replaced it), the writer
waits with capped exponential backoff and tries again; Redis coming back empty (a restart) is handled by the
layout's NOSCRIPT reload and by re-adding the index entries.

Round trips go through `client.transport.PinnedConnection`: on a plain asyncio client, the writer keeps one
connection of the pool for all of them (taking one from redis-py's pool per batch cost more than a small
batch's round trip), and every chunk of a batch is packed with hiredis and sent while the previous chunk's
replies are still coming back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from client.layout import (
    JOINED,
    REFUSED_FUTURE,
    UNCHANGED,
    EncodedBook,
    Flow,
    RedisLayout,
    encode_book,
    encode_book_sides,
    mark_down_flow,
    write_flow,
)
from client.models import OrderBookSnapshot
from client.transport import PinnedConnection
from feeder.exchanges.base import BookSides

log = logging.getLogger(__name__)

BookId = tuple[str, str]  # (exchange, symbol)
BookTimes = tuple[str, float, float | None]  # (exchange, the book's timestamp, its receive time)


class FrameSource(Protocol):
    """Where a deferred frame came from: decodes it when the writer needs it (see `submit_frame`)."""

    def book_sides(self, frame: bytes, recv_ts: float, symbol: str) -> BookSides | None:
        """`symbol`'s book from `frame` with its sides as stored text, when the exchange's decoder can write
        that text straight from the frame (`feeder.exchanges.units_json`); None: `decode_deferred` it."""
        ...

    def decode_deferred(self, frame: bytes, recv_ts: float, symbol: str) -> OrderBookSnapshot | None:
        """`symbol`'s book from `frame`, or None when the frame is malformed (counted by the source)."""
        ...


Deferred = tuple[bytes, float, FrameSource]  # a received frame not decoded yet, its receive time, its source
_CHUNK = 64  # books per chunk of a batch: encoding the next chunk overlaps Redis running this one
_FIRST_CHUNK = 16  # smaller, so that Redis starts early
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


@dataclass
class WriterStats:
    submitted: int = 0
    written: int = 0  # accepted by the ordering check
    rejected: int = 0  # older than the stored book
    joined: int = 0  # the stored book again, delivered by this feeder too: recorded as one of its holders
    unchanged: int = 0  # the same book this feeder wrote last, again (Binance pushes it every interval)
    future: int = 0  # refused: a time-based ordering id too far ahead of Redis's clock
    failed: int = (
        0  # refused by Redis for this key alone (a wrong-typed key...): counted, logged once per key
    )
    rewrites: int = 0  # times Redis lost data (restart, flush, fail-over) and every latest book was rewritten
    coalesced: int = 0  # replaced in the buffer by a newer book before it was written
    batches: int = 0
    marked_down: int = 0
    redis_errors: int = 0
    malformed: int = 0  # deferred frames that did not decode (their source counted and logged them)


class WriteObserver(Protocol):
    """Who wants to know about the books each round trip got accepted, and the round trip (the metrics): once
    per round trip, with the (exchange, timestamp, receive time) of each book Redis took and when it answered."""

    def books_written(self, books: Sequence[BookTimes], now: float) -> None: ...

    def round_trip_done(self, seconds: float) -> None: ...


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
        time_ordered: Container[str] = (),
        simulated: bool = False,
        history: int = 0,
    ) -> None:
        self._redis = client
        self._connection = PinnedConnection(client)  # one connection for every round trip of `run`
        self._history = history  # MD_HISTORY_MAXLEN: each accepted version also goes to its capped stream
        self._layout = layout
        self._feeder_id = feeder_id
        self._batch = batch
        self._max_backoff = max_backoff
        self._pending: dict[BookId, OrderBookSnapshot | Deferred] = {}
        self._down: dict[BookId, bool] = {}  # books to mark down -> the exchange restarted its ids
        self._indexed: set[str] = set()
        self._time_ordered = time_ordered  # exchanges whose ordering id is a time (Upbit's timestamp)
        self._simulated = simulated  # the books come from the exchange simulator: marked so
        # the latest book Redis took, per key (for rewrites): a received frame is kept as the frame (decoded
        # again only for a rewrite), so that its decoded levels are freed at once, while still in the cache
        self._last: dict[BookId, OrderBookSnapshot | Deferred] = {}
        self._failing: dict[str, str] = {}  # keys Redis refuses, with the reason (logged once each)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = WriterStats()
        self.redis_ok = True
        self.last_error = ""
        self.observers: list[WriteObserver] = []  # the status latencies; the metrics, when they are on

    # ------------------------------------------------------------------------------------------ producers
    def submit(self, exchange: str, snapshot: OrderBookSnapshot) -> None:
        """Queue a book; a pending older book of the same key is replaced (and counted as coalesced)."""
        self._queue((exchange, snapshot.symbol), snapshot)

    def submit_frame(
        self, exchange: str, symbol: str, frame: bytes, recv_ts: float, source: FrameSource
    ) -> None:
        """Queue a received frame that holds `symbol`'s book, undecoded: `source` decodes it when it is written.

        Under load most frames are replaced by a newer one of their symbol before the writer gets to them;
        decoding only the ones that are written leaves the CPU to reading and writing, so a feeder keeps both
        up at a higher frame rate. A frame that turns out malformed is `source`'s to count; its key then keeps
        the book Redis already holds until the next frame.
        """
        self._queue((exchange, symbol), (frame, recv_ts, source))

    def _queue(self, book_id: BookId, item: OrderBookSnapshot | Deferred) -> None:
        pending = self._pending
        if book_id in pending:
            self.stats.coalesced += 1
        pending[book_id] = item
        self.stats.submitted += 1
        if not self._wake.is_set():
            self._idle.clear()
            self._wake.set()

    def mark_down(self, exchange: str, symbols: Iterable[str], *, restart: bool = False) -> None:
        """The connection delivering these books dropped (or an incremental book lost its chain): readers
        must see them as not live at once.

        Pending books of those symbols are discarded: written now, they would announce a live book from a
        connection that no longer exists. `restart`: the exchange restarted the books' ordering ids (Bybit
        ``u=1``): once no feeder holds a book any more, its stored id stops guarding, so that the first book
        of the new sequence, queued after this call, is written (docs/redis-layout.md, mark-down).
        """
        for symbol in symbols:
            book_id = (exchange, symbol)
            self._pending.pop(book_id, None)
            self._last.pop(book_id, None)  # not ours to rewrite any more
            self._down[book_id] = restart or self._down.get(book_id, False)
        self._idle.clear()
        self._wake.set()

    def rewrite_all(self, why: str) -> None:
        """Redis lost data (restarted empty, flushed, failed over): write the latest book of every key again,
        so that quiet books, which no new frame would rewrite, are not lost. Newer pending books stay."""
        self.stats.rewrites += 1
        self._indexed.clear()
        count = 0
        for book_id, item in self._last.items():
            if book_id not in self._pending and book_id not in self._down:
                self._pending[book_id] = item
                count += 1
        log.warning("%s: rewriting the latest book of %d keys", why, count)
        if count:
            self._idle.clear()
            self._wake.set()

    def latest_received(self) -> Iterable[tuple[BookId, float | None]]:
        """When the latest version Redis took of each book this feeder holds was received (the age metrics)."""
        return [
            (book_id, item.recv_ts if isinstance(item, OrderBookSnapshot) else item[1])
            for book_id, item in self._last.items()
        ]

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
        try:
            await self._run()
        finally:  # cancelled by its owner: the connection goes back to the pool
            await self._connection.release()

    async def _run(self) -> None:
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
        downs = dict(self._down)
        self._down.clear()
        if downs:
            # mark-downs run before the books queued after them: a book Redis then refuses (older) must not
            # leave the version it could not replace live
            restarts = {book_id for book_id, restart in downs.items() if restart}
            try:
                marked = await self._run_flow(
                    mark_down_flow(self._layout, self._feeder_id, list(downs), restarts)
                )
            except BaseException:
                for book_id, restart in downs.items():
                    self._down[book_id] = restart or self._down.get(book_id, False)
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
        # per book: its id, its timestamp and receive time, the encoding, and what is kept for rewrites (the
        # frame when the book came as one)
        encoded: list[tuple[BookId, float, float | None, EncodedBook, OrderBookSnapshot | Deferred]] = []
        decoded: dict[BookId, OrderBookSnapshot | None] = {}  # deferred frames decoded for this batch
        time_ordered = self._time_ordered
        writer, simulated, layout = self._feeder_id, self._simulated, self._layout

        def encode(chunk: list[tuple[BookId, OrderBookSnapshot | Deferred]]) -> list[EncodedBook]:
            books = []
            for book_id, item in chunk:
                exchange = book_id[0]
                if isinstance(item, OrderBookSnapshot):
                    snap = item
                else:
                    frame, recv_ts, source = item
                    sides = source.book_sides(frame, recv_ts, book_id[1])
                    if (
                        sides is not None and sides.symbol == book_id[1]
                    ):  # text from the frame: no floats made
                        book = encode_book_sides(
                            layout, exchange=exchange, symbol=sides.symbol, timestamp=sides.timestamp,
                            xid=sides.xid, recv_ts=recv_ts, bids_json=sides.bids_json, asks_json=sides.asks_json,
                            best_bid=sides.best_bid, best_ask=sides.best_ask, writer=writer, heartbeat=True,
                            time_ordered=exchange in time_ordered, simulated=simulated,
                        )  # fmt: skip
                        books.append(book)
                        encoded.append((book_id, sides.timestamp, recv_ts, book, item))
                        continue
                    decoded[book_id] = fresh = source.decode_deferred(frame, recv_ts, book_id[1])
                    if fresh is None:
                        self.stats.malformed += 1
                        continue
                    snap = fresh
                book = encode_book(
                    layout,
                    snap,
                    exchange=exchange,
                    writer=writer,
                    heartbeat=True,
                    validate=False,
                    time_ordered=exchange in time_ordered,
                    simulated=simulated,
                )
                books.append(book)
                encoded.append((book_id, snap.timestamp, snap.recv_ts, book, item))
            return books

        def flows() -> Iterator[Flow[list[int | Exception]]]:
            # chunks, each encoded only when the previous one is on its way to Redis (`_packed_round_trips`);
            # a small batch goes in one write (one syscall), a large one starts with a small chunk
            bounds = (
                [0, len(items)]
                if len(items) <= _CHUNK
                else [0, *range(_FIRST_CHUNK, len(items), _CHUNK), len(items)]
            )
            for start, end in pairwise(bounds):
                books = encode(items[start:end])
                if books:
                    yield write_flow(self._layout, books, indexed=self._indexed, history=self._history)

        started = time.perf_counter()
        try:
            results = [r for chunk in await self._run_flows(flows()) for r in chunk]
        except BaseException:
            # Put the batch back unless something newer (or a mark-down) arrived meanwhile; a frame decoded
            # already goes back as its book (a malformed one not at all, it was counted).
            for book_id, item in items:
                if book_id not in self._pending and book_id not in self._down:
                    if book_id in decoded:
                        snap = decoded[book_id]
                        if snap is not None:
                            self._pending[book_id] = snap
                    else:
                        self._pending[book_id] = item
            raise
        if self.observers:
            took = time.perf_counter() - started
            for observer in self.observers:
                observer.round_trip_done(took)
        self._account(encoded, results)
        self.stats.batches += 1

    def _account(
        self,
        encoded: list[tuple[BookId, float, float | None, EncodedBook, OrderBookSnapshot | Deferred]],
        results: list[int | Exception],
    ) -> None:
        stats = self.stats
        observers = self.observers
        accepted: list[BookTimes] = []
        for (book_id, timestamp, recv_ts, book, kept), result in zip(encoded, results, strict=True):
            if isinstance(result, Exception):
                stats.failed += 1
                if self._failing.get(book.key) is None:
                    log.error(
                        "Redis refuses writes of %s (%s); the other books are written", book.key, result
                    )
                    self._failing[book.key] = str(result)
                continue
            self._indexed.add(book.key)
            if self._failing and self._failing.pop(book.key, None) is not None:
                log.info("writes of %s are accepted again", book.key)
            if result > 0:
                stats.written += 1
                self._last[book_id] = kept
                accepted.append((book_id[0], timestamp, recv_ts))
            elif result == JOINED:
                stats.joined += 1
                self._last[book_id] = kept
            elif result == UNCHANGED:
                stats.unchanged += 1
            elif result == REFUSED_FUTURE:
                stats.future += 1
                if stats.future == 1 or stats.future % 1000 == 0:
                    log.warning(
                        "%s: ordering id %d is ahead of Redis's clock by more than the allowed margin: "
                        "refused (%d so far; is a clock wrong?)", book.key, book.xid, stats.future,
                    )  # fmt: skip
            else:
                stats.rejected += 1
        if accepted and observers:
            now = time.time()
            for observer in observers:
                observer.books_written(accepted, now)

    async def _run_flow(self, flow: Flow[Any]) -> Any:
        return (await self._run_flows([flow]))[0]

    async def _run_flows(self, flows: Iterable[Flow[Any]]) -> list[Any]:
        return await self._connection.run_flows(flows)

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
