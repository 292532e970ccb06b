"""Live mirror: a local copy of books kept current by pub/sub, and the update streams built on it.

`BookCache` is the state (pure code, no I/O): it applies pub/sub messages and full re-reads, ignores anything
older than what it holds, reports ``seq`` gaps (a lost message) so the key is re-read, and hands every accepted
live book to the registered `UpdateQueue`s and callbacks. `SyncSubscriber` (a thread) and `AsyncSubscriber` (an
asyncio task) do the I/O: subscribe, load every mirrored book, then apply messages; after any disconnect they
reconnect with backoff and re-read everything before the cache is marked connected again, so nothing
published during the gap stays wrong. While disconnected the cache reports its books as unavailable.

Feeder liveness is refreshed every `FEEDER_REFRESH` seconds (and at once when a message names a feeder the
cache has not seen), so a dead feeder's books stop being served within its heartbeat expiry plus that period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import redis
import redis.asyncio
import redis.exceptions

from client.errors import CorruptSnapshotError, InvalidSymbolError
from client.layout import (
    Command,
    RedisLayout,
    StoredBook,
    arun_flow,
    decode_book_fields,
    feeder_alive,
    read_book_command,
    run_flow,
)
from client.models import OrderBookSnapshot

log = logging.getLogger(__name__)

FEEDER_REFRESH = 0.5  # seconds between feeder-state refreshes
POLL = 0.1  # how long one get_message waits; bounds the stop latency of the subscriber
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
UpdateCallback = Callable[[OrderBookSnapshot], None]


# --------------------------------------------------------------------------------------------- update queue
class UpdateQueue:
    """Latest-wins buffer of updates for one consumer: memory stays bounded by the number of symbols.

    A slow consumer sees the newest book per symbol; ``snapshot.skipped`` says how many updates of that book it
    did not see (from the ``seq`` numbers, so lost messages count too). Safe to fill from the subscriber thread
    and drain from another thread or an event loop.
    """

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


# --------------------------------------------------------------------------------------------- the cache
@dataclass
class BookCache:
    """The mirrored books and the feeder states that judge them; fed by a subscriber, read by the provider."""

    layout: RedisLayout
    books: dict[str, StoredBook] = field(default_factory=dict)
    by_symbol: dict[str, list[str]] = field(
        default_factory=dict
    )  # symbol -> keys (resolution of bare symbols)
    feeder_states: dict[str, Any] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)  # feeders whose last known state is alive (fast path)
    connected: bool = False
    unknown_feeders: set[str] = field(default_factory=set)
    queues: list[UpdateQueue] = field(default_factory=list)
    callbacks: list[tuple[set[str] | None, UpdateCallback]] = field(default_factory=list)
    messages: int = 0
    gaps: int = 0
    reloads: int = 0

    def load(self, key: str, raw: Any) -> None:
        """Apply a full read of one key (`read_book_command`); it replaces the copy unless the copy is newer."""
        try:
            book = decode_book_fields(self.layout, key, raw)
        except CorruptSnapshotError as exc:
            log.warning("mirror: ignoring %s", exc)
            return
        if book is None:
            return
        current = self.books.get(key)
        if current is None or book.seq >= current.seq:
            self._store(key, book, current is None)

    def apply(self, channel: bytes | str, data: bytes | str) -> str | None:
        """Apply one pub/sub message; returns a key to re-read when a ``seq`` gap shows a lost message."""
        self.messages += 1
        key = channel.decode() if isinstance(channel, bytes) else channel
        try:
            message = orjson.loads(data)
            seq = int(message["seq"])
            live = bool(message.get("live", True))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("mirror: ignoring a malformed message on %s", key)
            return None
        current = self.books.get(key)
        if not live:
            if current is not None and seq >= current.seq and current.live:
                self.books[key] = replace(current, live=False)
            return None
        if current is not None and seq <= current.seq:
            return None  # already have it (or newer): e.g. a message that raced the initial load
        try:
            book = _book_from_message(self.layout, key, message, seq)
        except (InvalidSymbolError, KeyError, TypeError, ValueError):
            log.warning("mirror: ignoring a malformed book message on %s", key)
            return key
        self._store(key, book, current is None)
        self._publish(key, book.snapshot, current.seq if current is not None else None)
        if current is not None and seq > current.seq + 1:
            self.gaps += 1
            return key  # a message was lost: the message is a whole book, but re-read to be sure
        return None

    def _store(self, key: str, book: StoredBook, new: bool) -> None:
        self.books[key] = book
        if new:
            self.by_symbol.setdefault(book.snapshot.symbol, []).append(key)
        if book.heartbeat and book.feeder not in self.feeder_states:
            self.unknown_feeders.add(book.feeder)

    def _publish(self, key: str, snapshot: OrderBookSnapshot, previous_seq: int | None) -> None:
        for queue in self.queues:
            if queue.wants(key):
                queue.push(key, snapshot, previous_seq)
        for keys, callback in self.callbacks:
            if keys is None or key in keys:
                try:
                    callback(snapshot)
                except Exception:
                    log.exception("on_update callback failed for %s", key)

    def feeders(self) -> list[str]:
        return sorted({b.feeder for b in self.books.values() if b.heartbeat} | self.unknown_feeders)


def _book_from_message(layout: RedisLayout, key: str, m: dict[str, Any], seq: int) -> StoredBook:
    exchange, symbol = layout.parse_book_key(key)
    bids = [(float(p), float(q)) for p, q in m["bids"]]
    asks = [(float(p), float(q)) for p, q in m["asks"]]
    recv_ts = float(m["recv_ts"])
    snapshot = OrderBookSnapshot(
        symbol, float(m["ts"]), bids, asks, exchange=exchange, seq=seq, recv_ts=recv_ts, xid=int(m["xid"])
    )
    return StoredBook(
        key=key,
        snapshot=snapshot,
        feeder=str(m.get("feeder", "")),
        live=True,
        heartbeat=bool(m.get("hb", False)),
        recv_ts=recv_ts,
        seq=seq,
    )


# --------------------------------------------------------------------------------------------- what to mirror
@dataclass
class MirrorPlan:
    """Channels and patterns to subscribe, and how to find the keys to (re-)load."""

    layout: RedisLayout
    keys: set[str] = field(default_factory=set)  # explicit book keys
    exchanges: set[str] | None = None  # whole exchanges; empty set = every exchange

    def channels(self) -> list[str]:
        return sorted(self.keys)

    def patterns(self) -> list[str]:
        if self.exchanges is None:
            return []
        if not self.exchanges:
            return [self.layout.book_pattern()]
        return [self.layout.book_pattern(ex) for ex in sorted(self.exchanges)]

    def covers(self, key: str) -> bool:
        if key in self.keys:
            return True
        if self.exchanges is None:
            return False
        return not self.exchanges or key.split(":", 2)[1] in self.exchanges

    def load_flow(self, cache: BookCache, extra: Iterable[str] = ()) -> Any:
        """Read every mirrored book and the state of their feeders (a flow: see client.layout)."""
        keys = set(self.keys) | set(extra)
        if self.exchanges is not None:
            exchanges = sorted(self.exchanges)
            if not exchanges:
                replies = yield [("SMEMBERS", self.layout.exchanges_key())]
                exchanges = sorted(x.decode() if isinstance(x, bytes) else x for x in replies[0])
            if exchanges:
                replies = yield [("SMEMBERS", self.layout.symbols_key(ex)) for ex in exchanges]
                for ex, members in zip(exchanges, replies, strict=True):
                    for s in members:
                        with contextlib.suppress(InvalidSymbolError):
                            keys.add(self.layout.book_key(ex, s.decode() if isinstance(s, bytes) else s))
        ordered = sorted(keys)
        if ordered:
            replies = yield [read_book_command(k) for k in ordered]
            for key, raw in zip(ordered, replies, strict=True):
                if not isinstance(raw, Exception):
                    cache.load(key, raw)
        cache.reloads += 1
        yield from feeder_state_flow(cache)


def feeder_state_flow(cache: BookCache) -> Any:
    feeders = cache.feeders()
    if not feeders:
        return None
    commands: list[Command] = [("HGET", cache.layout.feeder_key(f), "state") for f in feeders]
    replies = yield commands
    for feeder, state in zip(feeders, replies, strict=True):
        if not isinstance(state, Exception):
            cache.feeder_states[feeder] = state
            if feeder_alive(state):
                cache.alive.add(feeder)
            else:
                cache.alive.discard(feeder)
    cache.unknown_feeders.difference_update(feeders)
    return None


def reload_flow(cache: BookCache, keys: Iterable[str]) -> Any:
    ordered = sorted(set(keys))
    replies = yield [read_book_command(k) for k in ordered]
    for key, raw in zip(ordered, replies, strict=True):
        if not isinstance(raw, Exception):
            cache.load(key, raw)
    return None


def _backoff(failures: int) -> float:
    if failures <= 1:
        return 0.0
    return float(min(2.0, 0.05 * 2.0 ** (failures - 2)) * random.uniform(0.5, 1.0))


# --------------------------------------------------------------------------------------------- subscribers
class SyncSubscriber:
    """The mirror's background thread (sync providers). `start` waits for the first full load."""

    def __init__(self, client: redis.Redis, plan: MirrorPlan, cache: BookCache) -> None:
        self._redis = client
        self.plan = plan
        self.cache = cache
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._added: set[str] = set()
        self._added_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="md-mirror", daemon=True)

    def start(self, timeout: float) -> bool:
        self._thread.start()
        return self._loaded.wait(timeout)

    def add_keys(self, keys: Iterable[str]) -> None:
        """Subscribe more book channels (event consumers in read-through mode)."""
        new = set(keys) - self.plan.keys
        if new:
            with self._added_lock:
                self._added |= new

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                self._session(pubsub)
                failures = 0
            except REDIS_ERRORS as exc:
                self.cache.connected = False
                failures += 1
                if failures == 1:
                    log.warning(
                        "mirror: pub/sub connection lost (%s); books read as unavailable until resynced", exc
                    )
                self._stop.wait(_backoff(failures))
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    pubsub.close()
        self.cache.connected = False

    def _session(self, pubsub: Any) -> None:
        plan, cache = self.plan, self.cache
        self._take_added()
        if plan.channels():
            pubsub.subscribe(*plan.channels())
        if plan.patterns():
            pubsub.psubscribe(*plan.patterns())
        run_flow(self._redis, plan.load_flow(cache))
        cache.connected = True
        self._loaded.set()
        log.debug("mirror: synced %d books", len(cache.books))
        refreshed = time.monotonic()
        while not self._stop.is_set():
            added = self._take_added()
            if added:
                pubsub.subscribe(*sorted(added))
                run_flow(self._redis, reload_flow(cache, added))
            message = pubsub.get_message(timeout=POLL)
            gaps: set[str] = set()
            while message is not None:
                if message["type"] in ("message", "pmessage"):
                    gap = cache.apply(message["channel"], message["data"])
                    if gap:
                        gaps.add(gap)
                message = pubsub.get_message(timeout=0)
            if gaps:
                run_flow(self._redis, reload_flow(cache, gaps))
            if cache.unknown_feeders or time.monotonic() - refreshed > FEEDER_REFRESH:
                run_flow(self._redis, feeder_state_flow(cache))
                refreshed = time.monotonic()

    def _take_added(self) -> set[str]:
        with self._added_lock:
            added, self._added = self._added, set()
        self.plan.keys |= added
        return added


class AsyncSubscriber:
    """The mirror's background task (asyncio providers)."""

    def __init__(self, client: redis.asyncio.Redis, plan: MirrorPlan, cache: BookCache) -> None:
        self._redis = client
        self.plan = plan
        self.cache = cache
        self._loaded = asyncio.Event()
        self._added: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> bool:
        self._task = asyncio.create_task(self._run(), name="md-mirror")
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def add_keys(self, keys: Iterable[str]) -> None:
        self._added |= set(keys) - self.plan.keys

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.cache.connected = False

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await self._session(pubsub)
            except REDIS_ERRORS as exc:
                self.cache.connected = False
                failures += 1
                if failures == 1:
                    log.warning(
                        "mirror: pub/sub connection lost (%s); books read as unavailable until resynced", exc
                    )
                await asyncio.sleep(_backoff(failures))
            else:
                failures = 0
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _session(self, pubsub: Any) -> None:
        plan, cache = self.plan, self.cache
        self._take_added()
        if plan.channels():
            await pubsub.subscribe(*plan.channels())
        if plan.patterns():
            await pubsub.psubscribe(*plan.patterns())
        await arun_flow(self._redis, plan.load_flow(cache))
        cache.connected = True
        self._loaded.set()
        refreshed = time.monotonic()
        while True:
            added = self._take_added()
            if added:
                await pubsub.subscribe(*sorted(added))
                await arun_flow(self._redis, reload_flow(cache, added))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
            gaps: set[str] = set()
            while message is not None:
                if message["type"] in ("message", "pmessage"):
                    gap = cache.apply(message["channel"], message["data"])
                    if gap:
                        gaps.add(gap)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if gaps:
                await arun_flow(self._redis, reload_flow(cache, gaps))
            if cache.unknown_feeders or time.monotonic() - refreshed > FEEDER_REFRESH:
                await arun_flow(self._redis, feeder_state_flow(cache))
                refreshed = time.monotonic()

    def _take_added(self) -> set[str]:
        added, self._added = self._added, set()
        self.plan.keys |= added
        return added
