"""`RedisMarketDataProvider`: the engines' `MarketDataProvider` interface, served from the shared Redis cache.

Every public method comes as a sync and an asyncio twin (``get_latest_snapshot`` / ``aget_latest_snapshot``…),
in that order, and both are one line over the same flow (see `client.layout.flows`): the sync twin runs it
with `_execute` (the sync client), the asyncio twin with `_aexecute` (the asyncio client), so the two cannot
drift apart. The flows live at the end of the class.

A read is one pipelined round trip in the steady state: the book hashes plus the state of the feeders that
wrote them last time (a book's feeder rarely changes, so it is guessed from the previous read and only checked
again when the guess was wrong). Whether a book is served is decided by `client.freshness` (the one liveness
rule), bare symbols are resolved by `client.resolver`, and mirror mode reads `client.mirror`'s local copy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis
import redis.asyncio
import redis.exceptions

from client.errors import (
    CorruptSnapshotError,
    InvalidSnapshotError,
    MarketDataError,
    MarketDataUnavailableError,
    StaleSnapshotError,
    redis_error,
    redis_failure,
)
from client.freshness import LIVE, Judged, book_state, judge
from client.layout import (
    REFUSED_FUTURE,
    TIME_ID_LEAD_MS,
    Flow,
    RedisLayout,
    StoredBook,
    book_identity,
    command_error,
    decode_book_fields,
    encode_book,
    feeder_alive,
    feeder_states_flow,
    history_flow,
    indexed_books_flow,
    last_symbol_flow,
    process_writer_id,
    read_book_command,
    read_books_flow,
    refuses_all,
    split_target,
    validate_exchange,
    validate_symbol,
    write_flow,
)
from client.legacy import LatestSnapshots
from client.mirror import (
    BookCache,
    CallbackConsumer,
    MirrorPlan,
    TaskSubscriber,
    ThreadSubscriber,
    UpdateCallback,
    UpdateQueue,
)
from client.mirror.cache import HEALTH_TIMEOUT
from client.models import BookState, OrderBookSnapshot, SnapshotStatus
from client.resolver import SymbolResolver, Target, ambiguous, guess_exchange
from client.settings import ClientSettings, load_settings
from client.topology import async_client, describe, sync_client
from client.transport import SERVER_AWAY, arun_flow, run_flow

if TYPE_CHECKING:  # prometheus_client is imported only by a process that enables the metrics
    from prometheus_client import CollectorRegistry, Histogram

    from client.seen_latency import SeenLatency

log = logging.getLogger(__name__)

T = TypeVar("T")
_DECODED_LIMIT = 100_000  # decoded books remembered for unchanged re-reads
_UNSET: Any = object()
_REDIS_DOWN = (*SERVER_AWAY, OSError)


class MarketDataProvider(ABC):
    """The interface engines call today; unchanged so that engine code does not change."""

    @abstractmethod
    def get_latest_snapshot(self, symbol: str) -> OrderBookSnapshot | None: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    async def aget_latest_snapshot(self, symbol: str) -> OrderBookSnapshot | None: ...

    @abstractmethod
    async def astart(self) -> None: ...

    @abstractmethod
    async def astop(self) -> None: ...


class RedisMarketDataProvider(MarketDataProvider):
    """Order books from the shared Redis cache, with the legacy fields of the in-process provider.

    Pass existing clients (``redis=`` sync, ``async_redis=`` asyncio; this is how tests use fakeredis), or
    nothing to build them from settings (``MD_REDIS_URL`` …). Reads return ``None`` for a missing or stale book;
    ``strict=True`` raises `StaleSnapshotError` / `CorruptSnapshotError` / `MarketDataUnavailableError` instead.
    """

    _write_redis: redis.Redis | None
    _async_write_redis: redis.asyncio.Redis | None

    def __init__(
        self,
        redis: redis.Redis | None = None,
        async_redis: redis.asyncio.Redis | None = None,
        *,
        settings: ClientSettings | None = None,
        prefix: str | None = None,
        max_age: float | None = _UNSET,
        strict: bool | None = None,
        writer_id: str | None = None,
        mode: str | None = None,
        mirror_symbols: Iterable[str] | None = None,
        mirror_exchanges: Iterable[str] | None = None,
    ) -> None:
        overrides: dict[str, Any] = {}
        if mode is not None:
            overrides["mode"] = mode
        if mirror_symbols is not None:
            overrides["mirror_symbols"] = ",".join(mirror_symbols)
        if mirror_exchanges is not None:
            overrides["mirror_exchanges"] = ",".join(mirror_exchanges)
        if prefix is not None:
            overrides["prefix"] = prefix
        if max_age is not _UNSET:
            overrides["max_age"] = max_age
        if strict is not None:
            overrides["strict"] = strict
        if settings is None:
            settings = load_settings(ClientSettings, **overrides)
        elif overrides:  # explicit arguments win over the given settings, validated the same way
            settings = load_settings(type(settings), **{**settings.model_dump(), **overrides})
        self.settings = settings
        self.layout = RedisLayout(settings.prefix, sharded=settings.redis_cluster)
        self.max_age = settings.max_age
        self.strict = settings.strict
        self.writer_id = writer_id or "client:" + process_writer_id(":")
        self.mode = settings.mode
        self._redis = redis  # reads (a replica with MD_REDIS_READ_URL), and writes unless _write_redis is set
        self._async_redis = async_redis
        self._write_redis = None  # the primary, when reads go to a replica
        self._async_write_redis = None
        self._owns_sync = False
        self._owns_async = False
        if redis is None and async_redis is None:
            self._redis = sync_client(settings, read=True)
            if settings.redis_read_url:
                self._write_redis = sync_client(settings)  # no connection until a legacy write needs one
            self._owns_sync = True
            self._owns_async = True  # built lazily, inside the event loop that first needs it
        self._resolver = SymbolResolver(self.layout)
        self._feeder_guess: dict[str, tuple[str, ...]] = {}  # book key -> its holders at the last read
        self._warned: set[tuple[str, str]] = set()
        self._corrupt: dict[tuple[str, str], CorruptSnapshotError] = {}
        self._decoded: dict[str, tuple[tuple[Any, ...], StoredBook]] = {}
        self._last_unavailable_log = 0.0
        self._pending_writes: set[asyncio.Task[bool]] = set()
        self._latest = LatestSnapshots(self.inspect_books, self.all_books)
        self._cache = BookCache(self.layout)
        self._seen: SeenLatency | None = None  # enable_latency_metrics
        self._mirror: MirrorPlan | None = None  # set by start/astart in mirror mode
        self._subscriber: ThreadSubscriber | TaskSubscriber | None = None
        self._wait_queues: dict[frozenset[str] | None, UpdateQueue] = {}
        self._wait_queues_lock = threading.Lock()
        self._keys_memo: dict[tuple[tuple[str, ...] | None, str | None], set[str] | None] = {}

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisMarketDataProvider:
        """A provider that owns clients built for `url` (closed by stop/astop)."""
        settings = load_settings(ClientSettings, redis_url=url)
        return cls(settings=settings, **kwargs)

    def _sync(self) -> redis.Redis:
        if self._redis is None:
            raise MarketDataError(
                "this provider was given only an asyncio Redis client: use the a* methods, or pass redis="
            )
        return self._redis

    def _async(self) -> redis.asyncio.Redis:
        if self._async_redis is None:
            if not self._owns_async:
                raise MarketDataError(
                    "this provider was given only a sync Redis client: use the sync methods, or pass async_redis="
                )
            self._async_redis = async_client(self.settings, read=True)
        return self._async_redis

    def _sync_writer(self) -> redis.Redis:
        return self._write_redis if self._write_redis is not None else self._sync()

    def _async_writer(self) -> redis.asyncio.Redis:
        if self._owns_async and self.settings.redis_read_url:
            if self._async_write_redis is None:
                self._async_write_redis = async_client(self.settings)
            return self._async_write_redis
        return self._async()

    def __repr__(self) -> str:
        return f"<RedisMarketDataProvider prefix={self.layout.prefix!r} strict={self.strict} max_age={self.max_age}>"

    # ----------------------------------------------------------------------------------------- execute points
    def _execute(self, flow: Flow[T], *, write: bool = False) -> T:
        """Run a flow with the sync client (the one execute point of every sync method); `write`: with the
        primary's client, when reads go to a replica."""
        try:
            return run_flow(self._sync_writer() if write else self._sync(), flow)
        except MarketDataError:
            raise
        except _REDIS_DOWN as exc:
            raise self._unreachable(exc) from exc
        except redis.exceptions.RedisError as exc:
            raise redis_error(exc) from exc

    async def _aexecute(self, flow: Flow[T], *, write: bool = False) -> T:
        """Run a flow with the asyncio client (the one execute point of every asyncio method)."""
        try:
            return await arun_flow(self._async_writer() if write else self._async(), flow)
        except MarketDataError:
            raise
        except _REDIS_DOWN as exc:
            raise self._unreachable(exc) from exc
        except redis.exceptions.RedisError as exc:
            raise redis_error(exc) from exc

    async def _aexecute_any(self, flow: Flow[T]) -> T:
        """`_aexecute`, or, for a provider given only a sync client, `_execute` on a worker thread (never a
        blocking call in the event loop): event consumers may await on a sync provider."""
        if self._async_redis is not None or self._owns_async:
            return await self._aexecute(flow)
        return await asyncio.to_thread(self._execute, flow)

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Check that Redis answers (a warning only: an engine may start before Redis does).

        In mirror mode, also start the subscriber thread and wait (up to ``MD_REDIS_TIMEOUT``) until every
        mirrored book is loaded, so the first read already returns the current books.
        """
        try:
            self._sync().ping()
        except _REDIS_DOWN as exc:
            self._warn_not_answering(exc)
        if self.mode == "mirror" and self._subscriber is None:
            self._mirror = self._execute(self._plan_flow())
            subscriber = ThreadSubscriber(self._sync(), self._mirror, self._cache)
            self._subscriber = subscriber
            if not subscriber.start(self.settings.redis_timeout):
                log.warning("mirror: initial load not finished; books read as unavailable until it is")

    def enable_latency_metrics(self, registry: CollectorRegistry | None = None) -> Histogram:
        """Observe how long each book took from Redis accepting it to this process applying it (mirror mode,
        and the subscriptions behind `updates`, `on_update` and `wait_for_update`): the histogram
        ``md_written_to_seen_seconds{exchange}``, registered in `registry` (Prometheus's default registry
        when None), for the engine to serve with its own metrics. Calling it again returns the same one."""
        from client.seen_latency import SeenLatency

        seen = self._seen
        if seen is None:
            seen = self._seen = SeenLatency(registry)
            self._cache.on_seen = seen
        return seen.histogram

    def stop(self) -> None:
        if isinstance(self._subscriber, ThreadSubscriber):
            self._subscriber.stop()
            self._subscriber = None
        if self._owns_sync and self._redis is not None:
            self._redis.close()
        if self._write_redis is not None:
            self._write_redis.close()

    async def astart(self) -> None:
        try:
            await self._async().ping()
        except _REDIS_DOWN as exc:
            self._warn_not_answering(exc)
        if self.mode == "mirror" and self._subscriber is None:
            self._mirror = await self._aexecute(self._plan_flow())
            subscriber = TaskSubscriber(self._async(), self._mirror, self._cache)
            self._subscriber = subscriber
            if not await subscriber.start(self.settings.redis_timeout):
                log.warning("mirror: initial load not finished; books read as unavailable until it is")

    async def astop(self) -> None:
        if self._pending_writes:
            await asyncio.gather(*self._pending_writes, return_exceptions=True)
        if isinstance(self._subscriber, TaskSubscriber):
            await self._subscriber.stop()
            self._subscriber = None
        if self._owns_async and self._async_redis is not None:
            await self._async_redis.aclose()
            self._async_redis = None
        if self._async_write_redis is not None:
            await self._async_write_redis.aclose()
            self._async_write_redis = None
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    def _unreachable(self, exc: BaseException) -> MarketDataUnavailableError:
        return MarketDataUnavailableError(
            f"Redis at {describe(self.settings, read=True)} is unavailable: {exc}"
        )

    def _warn_not_answering(self, exc: BaseException) -> None:
        log.warning(
            "Redis at %s does not answer yet (%s); reads return None until it does",
            describe(self.settings, read=True),
            exc,
        )

    # ----------------------------------------------------------------------------------------- reads
    def get_latest_snapshot(self, symbol: str, exchange: str | None = None) -> OrderBookSnapshot | None:
        """The live book of `symbol`, or None (missing or stale; strict mode raises for stale)."""
        if self._mirror is not None and exchange is None:
            book = self._mirror_hit(symbol)
            if book is not None:
                return book
        return self._execute(self._snapshot_flow(symbol, exchange))

    async def aget_latest_snapshot(
        self, symbol: str, exchange: str | None = None
    ) -> OrderBookSnapshot | None:
        if self._mirror is not None and exchange is None:
            book = self._mirror_hit(symbol)
            if book is not None:
                return book
        return await self._aexecute(self._snapshot_flow(symbol, exchange))

    def get_latest_snapshots(
        self, symbols: Iterable[str], exchange: str | None = None
    ) -> dict[str, OrderBookSnapshot | None]:
        """Many books in one round trip (plus one to resolve bare symbols the first time)."""
        symbols = list(symbols)
        if self._mirror is not None and exchange is None:
            hits = {s: self._mirror_hit(s) for s in symbols}
            if all(book is not None for book in hits.values()):
                return hits
        return self._execute(self._snapshots_flow(symbols, exchange))

    async def aget_latest_snapshots(
        self, symbols: Iterable[str], exchange: str | None = None
    ) -> dict[str, OrderBookSnapshot | None]:
        return await self._aexecute(self._snapshots_flow(list(symbols), exchange))

    def snapshot_status(self, symbol: str, exchange: str | None = None) -> SnapshotStatus:
        """Why a book is or is not served: live, missing, connection down, feeder dead, too old, corrupt."""
        return self._execute(self._lookup_flow([(exchange, symbol)]))[0][0]

    async def asnapshot_status(self, symbol: str, exchange: str | None = None) -> SnapshotStatus:
        return (await self._aexecute(self._lookup_flow([(exchange, symbol)])))[0][0]

    def inspect_books(self, targets: Iterable[Target]) -> list[Judged]:
        """Status and stored book of each ``(exchange or None, symbol)``, in order, in one batch read.

        For tools that show what Redis holds (the ``md`` CLI), not for trading: unlike `get_latest_snapshots`
        a stale book comes back with its status saying why it must not be used, and nothing raises for stale,
        corrupt or unreachable data, not even in strict mode (the status is ``corrupt`` / ``unavailable`` and
        the book ``None``). Invalid names raise InvalidSymbolError, an ambiguous bare symbol
        AmbiguousSymbolError, as everywhere else.
        """
        return self._execute(self._lookup_flow(list(targets)))

    async def ainspect_books(self, targets: Iterable[Target]) -> list[Judged]:
        return await self._aexecute(self._lookup_flow(list(targets)))

    def all_books(self) -> list[tuple[str, str]]:
        """Every (exchange, symbol) that has a book, from the indexes."""
        return self._execute(indexed_books_flow(self.layout))

    async def aall_books(self) -> list[tuple[str, str]]:
        return await self._aexecute(indexed_books_flow(self.layout))

    def get_history(self, symbol: str, exchange: str, last: int = 100) -> list[OrderBookSnapshot]:
        """The book's `last` past versions, oldest first, from its capped history (feeders run with
        ``MD_HISTORY_MAXLEN``); empty when there is none. History is for looking back, never "live": it says
        nothing about whether the exchange's book is still that."""
        return self._execute(self._history_flow(symbol, exchange, last))

    async def aget_history(self, symbol: str, exchange: str, last: int = 100) -> list[OrderBookSnapshot]:
        return await self._aexecute(self._history_flow(symbol, exchange, last))

    def _history_flow(self, symbol: str, exchange: str, last: int) -> Flow[list[OrderBookSnapshot]]:
        if type(last) is not int or last < 1:
            raise ValueError(f"last must be a positive int, got {last!r}")
        return history_flow(self.layout, validate_exchange(exchange), validate_symbol(symbol), last)

    def get_last_snapshot(self, exchange: str) -> OrderBookSnapshot | None:
        """The most recently written book of `exchange`, if live."""
        return self._execute(self._last_flow(exchange))

    async def aget_last_snapshot(self, exchange: str) -> OrderBookSnapshot | None:
        return await self._aexecute(self._last_flow(exchange))

    # ----------------------------------------------------------------------------------------- writes
    def write_snapshot(self, snapshot: OrderBookSnapshot, exchange: str) -> bool:
        """Store a snapshot through the atomic write; False when an equal or newer book is already stored.

        The exchange ordering id is ``snapshot.xid`` or, for snapshots built by old adapters, the exchange
        timestamp in milliseconds. The book has no feeder heartbeat behind it, so readers judge it by
        ``max_age`` alone.
        """
        return self._execute(self._write_flow(snapshot, exchange), write=True)

    async def awrite_snapshot(self, snapshot: OrderBookSnapshot, exchange: str) -> bool:
        return await self._aexecute(self._write_flow(snapshot, exchange), write=True)

    # ----------------------------------------------------------------------------------------- legacy fields
    @property
    def latest_snapshots(self) -> LatestSnapshots:
        """Read-only mapping symbol -> live book, backed by Redis (the old provider's dict)."""
        return self._latest

    @property
    def snapshot_upbit(self) -> OrderBookSnapshot | None:
        """The most recently written Upbit book (any symbol), if live."""
        return self.get_last_snapshot("upbit")

    @property
    def snapshot_binance(self) -> OrderBookSnapshot | None:
        return self.get_last_snapshot("binance")

    def on_upbit_snapshot(self, snapshot: OrderBookSnapshot) -> None:
        """Legacy adapter callback: the book goes into the shared cache for every process to read."""
        self._legacy_write(snapshot, "upbit")

    def on_binance_snapshot(self, snapshot: OrderBookSnapshot) -> None:
        self._legacy_write(snapshot, "binance")

    def _legacy_write(self, snapshot: OrderBookSnapshot, exchange: str) -> None:
        if self._redis is not None:
            self.write_snapshot(snapshot, exchange)
            return
        # Only an asyncio client: the callback is sync, so the write runs as a task that astop() awaits.
        task = asyncio.get_running_loop().create_task(self.awrite_snapshot(snapshot, exchange))
        self._pending_writes.add(task)
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[bool]) -> None:
        self._pending_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("write of a legacy snapshot failed: %s", task.exception())

    # ----------------------------------------------------------------------------------------- events
    def wait_for_update(
        self, symbols: Iterable[str] | None = None, timeout: float | None = None, exchange: str | None = None
    ) -> list[OrderBookSnapshot]:
        """Block until at least one of `symbols` (all mirrored books when None) is updated; [] on timeout.

        Returns the newest book of every symbol updated since the previous call with the same symbols (each
        call site keeps its own latest-wins buffer, so nothing is lost between calls and memory stays bounded);
        ``snapshot.skipped`` counts the updates of that book it did not see. Works in both modes: in
        read-through mode the first call starts a subscriber for these symbols. `timeout` is honoured whatever
        Redis does (stopped, unreachable), but for the first call's resolution of bare symbols, which waits up
        to ``MD_REDIS_TIMEOUT`` (pass ``exchange=`` to need none).
        """
        deadline = None if timeout is None else monotonic() + timeout
        keys = self._memo_keys(symbols, exchange)
        queue = self._queue(keys)
        self._ensure_subscriber(keys, self._start_wait(deadline))
        return queue.wait(None if deadline is None else max(0.0, deadline - monotonic()))

    async def await_for_update(
        self, symbols: Iterable[str] | None = None, timeout: float | None = None, exchange: str | None = None
    ) -> list[OrderBookSnapshot]:
        """The asyncio twin of `wait_for_update`."""
        deadline = None if timeout is None else monotonic() + timeout
        keys = await self._amemo_keys(symbols, exchange)
        queue = self._queue(keys)
        await self._aensure_subscriber(keys, self._start_wait(deadline))
        return await queue.await_(None if deadline is None else max(0.0, deadline - monotonic()))

    async def updates(
        self, symbols: Iterable[str] | None = None, exchange: str | None = None
    ) -> AsyncIterator[OrderBookSnapshot]:
        """``async for snapshot in provider.updates(["KRW-BTC"])``: every update, newest per symbol first-come.

        A consumer slower than the feed sees the newest book per symbol (``snapshot.skipped`` says how many it
        missed); the buffer never holds more than one book per symbol.
        """
        keys = await self._aexecute_any(self._keys_flow(symbols, exchange))
        queue = UpdateQueue(keys)
        self._cache.add_consumer(queue)
        try:
            await self._aensure_subscriber(keys)
            while True:
                for snapshot in await queue.await_(None):
                    yield snapshot
        finally:
            self._cache.remove_consumer(queue)

    def on_update(
        self, callback: UpdateCallback, symbols: Iterable[str] | None = None, exchange: str | None = None
    ) -> Callable[[], None]:
        """Call `callback(snapshot)` for every update of `symbols` (all mirrored books when None).

        The callback runs on the subscriber (the mirror thread of a sync provider, the event loop of an asyncio
        one): keep it short. Returns a function that unregisters it. With an asyncio-only provider call
        `astart()` first (mirror mode) or use `updates()`.
        """
        keys = self._execute(self._keys_flow(symbols, exchange)) if self._redis is not None else None
        consumer = CallbackConsumer(keys, callback)
        self._cache.add_consumer(consumer)
        if self._redis is not None:
            self._ensure_subscriber(keys)
        elif self._subscriber is not None and keys:
            self._subscriber.add_keys(keys)
        elif self._subscriber is None:
            raise MarketDataError(
                "on_update with an asyncio-only provider needs a running mirror: await astart() first"
            )

        def unregister() -> None:
            self._cache.remove_consumer(consumer)

        return unregister

    def _start_wait(self, deadline: float | None) -> float:
        """How long starting a subscriber may wait for its first load: the redis timeout, within `deadline`."""
        wait = self.settings.redis_timeout
        return wait if deadline is None else max(0.0, min(wait, deadline - monotonic()))

    def _memo_keys(self, symbols: Iterable[str] | None, exchange: str | None) -> set[str] | None:
        """The keys of `symbols`, resolved once per list of symbols: a waiting loop asks Redis nothing more."""
        token = (tuple(symbols) if symbols is not None else None, exchange)
        keys = self._keys_memo.get(token, _UNSET)
        if keys is _UNSET:
            if len(self._keys_memo) >= 1024:
                self._keys_memo.clear()
            keys = self._keys_memo[token] = self._execute(self._keys_flow(token[0], exchange))
        return keys  # type: ignore[no-any-return]

    async def _amemo_keys(self, symbols: Iterable[str] | None, exchange: str | None) -> set[str] | None:
        token = (tuple(symbols) if symbols is not None else None, exchange)
        keys = self._keys_memo.get(token, _UNSET)
        if keys is _UNSET:
            if len(self._keys_memo) >= 1024:
                self._keys_memo.clear()
            keys = self._keys_memo[token] = await self._aexecute_any(self._keys_flow(token[0], exchange))
        return keys  # type: ignore[no-any-return]

    def _queue(self, keys: set[str] | None) -> UpdateQueue:
        token = frozenset(keys) if keys is not None else None
        with self._wait_queues_lock:
            queue = self._wait_queues.get(token)
            if queue is None:
                queue = self._wait_queues[token] = UpdateQueue(keys)
                self._cache.add_consumer(queue)
        return queue

    def _new_plan(self, keys: set[str] | None) -> MirrorPlan:
        return self._mirror or MirrorPlan(
            self.layout, keys=set(keys or ()), exchanges=None if keys else set()
        )

    def _ensure_subscriber(self, keys: set[str] | None, wait: float | None = None) -> None:
        if self._subscriber is None:
            subscriber = ThreadSubscriber(self._sync(), self._new_plan(keys), self._cache)
            self._subscriber = subscriber
            subscriber.start(self.settings.redis_timeout if wait is None else wait)
        elif keys is None:
            if self._subscriber.plan.exchanges is None:
                log.warning(
                    "updates of every book need mirror mode over every exchange; only mirrored keys are seen"
                )
        else:
            self._subscriber.add_keys(k for k in keys if not self._subscriber.plan.covers(k))

    async def _aensure_subscriber(self, keys: set[str] | None, wait: float | None = None) -> None:
        if self._subscriber is None and self._async_redis is None and not self._owns_async:
            await asyncio.to_thread(self._ensure_subscriber, keys, wait)
            return
        if self._subscriber is None:
            subscriber = TaskSubscriber(self._async(), self._new_plan(keys), self._cache)
            self._subscriber = subscriber
            await subscriber.start(self.settings.redis_timeout if wait is None else wait)
        elif keys is not None:
            self._subscriber.add_keys(k for k in keys if not self._subscriber.plan.covers(k))

    # ----------------------------------------------------------------------------------------- mirror
    def _mirror_hit(self, symbol: str) -> OrderBookSnapshot | None:
        """The hot path of a mirror read: a live book of a bare symbol, or None to take the full path."""
        cache = self._cache
        keys = cache.by_symbol.get(symbol)
        if (
            keys is None
            or len(keys) != 1
            or not cache.connected
            or monotonic() - cache.heard > HEALTH_TIMEOUT
        ):
            return None
        book = cache.book(keys[0])
        if (
            type(book) is StoredBook
            and book_state(book, cache.alive, self.max_age, None, cache.clock_offset) is LIVE
        ):
            return book.snapshot
        return None

    def _from_mirror(self, targets: Sequence[Target]) -> tuple[list[Judged | None], list[int]]:
        """The targets the mirror covers, judged from memory, and the indexes of the others."""
        plan = self._mirror
        results: list[Judged | None] = [None] * len(targets)
        if plan is None:
            return results, list(range(len(targets)))
        cache = self._cache
        rest: list[int] = []
        now = cache.redis_now()
        for i, (exchange, symbol) in enumerate(targets):
            if exchange is None:
                keys = cache.by_symbol.get(symbol)
                if keys is None:
                    validate_symbol(symbol)
                    if plan.exchanges is not None and not plan.exchanges:
                        results[i] = self._mirror_result(guess_exchange(symbol) or "", symbol, None, now)
                    else:
                        rest.append(i)
                    continue
                if len(keys) > 1:
                    raise ambiguous(symbol, sorted(self.layout.exchange_of(k) for k in keys))
                key = keys[0]
                exchange = self.layout.exchange_of(key)
            else:
                key = self.layout.book_key(exchange, symbol)
            if plan.covers(key):
                results[i] = self._mirror_result(exchange, symbol, cache.book(key), now)
            else:
                rest.append(i)
        return results, rest

    def _mirror_result(
        self, exchange: str, symbol: str, book: StoredBook | CorruptSnapshotError | None, now: float
    ) -> Judged:
        if not self._cache.available():
            detail = "mirror not synced with Redis (disconnected, not answering, or still loading)"
            return SnapshotStatus(exchange, symbol, BookState.UNAVAILABLE, detail=detail), None
        return self._judge(exchange, symbol, book, self._cache.alive, now)

    # ----------------------------------------------------------------------------------------- flows
    def _snapshot_flow(self, symbol: str, exchange: str | None) -> Flow[OrderBookSnapshot | None]:
        results = yield from self._lookup_flow([(exchange, symbol)])
        return self._serve(results[0])

    def _snapshots_flow(
        self, symbols: list[str], exchange: str | None
    ) -> Flow[dict[str, OrderBookSnapshot | None]]:
        targets: list[Target] = [(exchange, s) for s in symbols]
        results = yield from self._lookup_flow(targets)
        return {s: self._serve(r) for (_, s), r in zip(targets, results, strict=True)}

    def _lookup_flow(self, targets: Sequence[Target]) -> Flow[list[Judged]]:
        """Mirror hits from memory, everything else read through Redis in one batch; unreachable: unavailable."""
        results, rest = self._from_mirror(targets)
        if rest:
            sub = [targets[i] for i in rest]
            try:
                fetched = yield from self._read_flow(sub)
            except _REDIS_DOWN as exc:
                fetched = [self._unavailable(ex or "", s, exc) for ex, s in sub]
            for i, result in zip(rest, fetched, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _read_flow(self, targets: Sequence[Target]) -> Flow[list[Judged]]:
        """Statuses and books of the targets: HMGET of each book plus the state of their feeders."""
        exchanges = yield from self._resolver.resolve_flow(targets)
        keys = [
            self.layout.book_key(ex, s) if ex else None for ex, (_, s) in zip(exchanges, targets, strict=True)
        ]
        present = [k for k in keys if k is not None]
        guesses = sorted({h for k in present for h in self._feeder_guess.get(k, ())})
        raws, states, now = yield from read_books_flow(self.layout, present, guesses)
        decoded: dict[str, StoredBook | CorruptSnapshotError | None] = {}
        for key, raw in zip(present, raws, strict=True):
            if isinstance(raw, Exception):
                if refuses_all(raw):  # no permission, a replica that lost its master...: not this key's fault
                    raise command_error(read_book_command(key), raw) from raw
                decoded[key] = CorruptSnapshotError(
                    key, "*", f"unreadable ({raw})"
                )  # WRONGTYPE: another value
                continue
            identity = book_identity(raw)
            seen = self._decoded.get(key)
            if seen is not None and seen[0] == identity:
                decoded[key] = seen[1]  # unchanged since the last read: no need to decode it again
                continue
            try:
                fresh = decode_book_fields(self.layout, key, raw)
            except CorruptSnapshotError as exc:
                decoded[key] = exc
                continue
            decoded[key] = fresh
            if fresh is not None:
                if len(self._decoded) >= _DECODED_LIMIT:
                    self._decoded.clear()
                self._decoded[key] = (identity, fresh)
        unknown = sorted(
            {
                h
                for b in decoded.values()
                if isinstance(b, StoredBook) and b.heartbeat
                for h in b.holders
                if h not in states
            }
        )
        if unknown:
            states.update((yield from feeder_states_flow(self.layout, unknown))[0])
        alive = {feeder for feeder, state in states.items() if feeder_alive(state)}
        return [
            self._judge(ex or "", symbol, decoded.get(key) if key else None, alive, now)
            for ex, (_, symbol), key in zip(exchanges, targets, keys, strict=True)
        ]

    def _last_flow(self, exchange: str) -> Flow[OrderBookSnapshot | None]:
        try:
            symbol = yield from last_symbol_flow(self.layout, exchange)
        except _REDIS_DOWN as exc:
            return self._serve(self._unavailable(exchange, "", exc))
        if symbol is None:
            return None
        return (yield from self._snapshot_flow(symbol, exchange))

    def _write_flow(self, snapshot: OrderBookSnapshot, exchange: str) -> Flow[bool]:
        encoded = encode_book(
            self.layout, snapshot, exchange=exchange, writer=self.writer_id, heartbeat=False
        )
        (result,) = yield from write_flow(self.layout, [encoded])
        if isinstance(result, Exception):
            raise command_error(encoded.script_command(), result) from result
        if result == REFUSED_FUTURE:
            raise InvalidSnapshotError(
                f"{exchange}:{snapshot.symbol}: ordering id {encoded.xid} is more than {TIME_ID_LEAD_MS} ms "
                "ahead of Redis's clock (a timestamp in the future would outrank every later book)"
            )
        return result > 0

    def _keys_flow(self, symbols: Iterable[str] | None, exchange: str | None) -> Flow[set[str] | None]:
        """The book keys of `symbols` (None: every book); while Redis is away, names decide."""
        if symbols is None:
            return None
        targets: list[Target] = [(exchange, s) for s in symbols]
        try:
            exchanges = yield from self._resolver.resolve_flow(targets)
        except _REDIS_DOWN:  # the subscriber will wait for Redis
            exchanges = self._resolver.offline(targets)
        return self._resolver.keys(targets, exchanges)

    def _plan_flow(self) -> Flow[MirrorPlan]:
        """What mirror mode mirrors, from ``MD_MIRROR_SYMBOLS`` / ``MD_MIRROR_EXCHANGES``."""
        symbols = [x for x in self.settings.mirror_symbols.split(",") if x]
        exchanges = {x for x in self.settings.mirror_exchanges.split(",") if x}
        targets = [split_target(item) for item in symbols]
        whole: set[str] | None = exchanges if exchanges or not symbols else None
        resolved: list[str | None] = []
        if targets:
            try:
                resolved = yield from self._resolver.resolve_flow(targets)
            except _REDIS_DOWN:
                resolved = self._resolver.offline(targets)
        keys = set()
        for (_, symbol), exchange in zip(targets, resolved, strict=True):
            if exchange is None:
                log.warning(
                    "mirror: no exchange has a book of %s yet and its name says none; not mirrored", symbol
                )
            else:
                keys.add(self.layout.book_key(exchange, symbol))
        return MirrorPlan(self.layout, keys=keys, exchanges=whole)

    # ----------------------------------------------------------------------------------------- policy
    def _judge(
        self,
        exchange: str,
        symbol: str,
        book: StoredBook | CorruptSnapshotError | None,
        alive: set[str],
        now: float,
    ) -> Judged:
        if isinstance(book, CorruptSnapshotError):
            self._corrupt[(exchange, symbol)] = book
        elif book is not None:
            self._warned.discard((f"{exchange}:{symbol}", "corrupt"))
            if book.heartbeat:
                self._feeder_guess[book.key] = book.holders
        status = judge(exchange, symbol, book, alive, self.max_age, now)
        return status, book.snapshot if isinstance(book, StoredBook) else None

    def _serve(self, result: Judged) -> OrderBookSnapshot | None:
        status, snapshot = result
        if status.state is BookState.LIVE:
            return snapshot
        if status.state is BookState.MISSING:
            return None
        where = f"{status.exchange}:{status.symbol}"
        if status.state is BookState.CORRUPT:
            if self.strict:
                raise self._corrupt_error(status)
            if (where, "corrupt") not in self._warned:
                self._warned.add((where, "corrupt"))
                log.warning("ignoring %s", status.detail)
            return None
        if status.state is BookState.UNAVAILABLE:
            if self.strict:
                raise MarketDataUnavailableError(f"{where}: {status.detail}")
            return None
        if self.strict:
            raise StaleSnapshotError(
                status, f"book {where} is not live: {status.state.value} ({status.detail})"
            )
        return None

    def _corrupt_error(self, status: SnapshotStatus) -> CorruptSnapshotError:
        error = self._corrupt.get((status.exchange, status.symbol))
        return error or CorruptSnapshotError(f"{status.exchange}:{status.symbol}", "?", status.detail)

    def _unavailable(self, exchange: str, symbol: str, exc: BaseException) -> Judged:
        now = time.monotonic()
        if now - self._last_unavailable_log > 10.0:
            self._last_unavailable_log = now
            log.warning(
                "Redis at %s is unavailable (%s); serving no books until it is back",
                describe(self.settings, read=True),
                redis_failure(exc),
            )
        status = SnapshotStatus(
            exchange, symbol, BookState.UNAVAILABLE, detail=f"Redis unavailable: {redis_failure(exc)}"
        )
        return status, None
