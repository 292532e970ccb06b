"""`RedisMarketDataProvider`: the engines' `MarketDataProvider` interface, served from the shared Redis cache.

Every read is one pipelined round trip in the steady state: the book hashes plus the heartbeat state of the
feeders that wrote them last time (a book's feeder rarely changes, so it is guessed from the previous read and
only checked again when the guess was wrong). Bare symbols are resolved to their exchange once, from the
``<prefix>:symbols:<exchange>`` indexes, and the answer is cached for `RESOLVE_TTL` seconds.

Every Redis interaction is written once as a flow (see `client.layout`) and run by the sync or the asyncio
client, so the sync and async methods cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio
import redis.exceptions

from client.errors import (
    AmbiguousSymbolError,
    CorruptSnapshotError,
    MarketDataError,
    MarketDataUnavailableError,
    StaleSnapshotError,
)
from client.layout import (
    Command,
    RedisLayout,
    StoredBook,
    arun_flow,
    book_identity,
    decode_book_fields,
    encode_book,
    feeder_alive,
    read_book_command,
    run_flow,
    validate_exchange,
    validate_symbol,
    write_flow,
)
from client.mirror import AsyncSubscriber, BookCache, MirrorPlan, SyncSubscriber, UpdateCallback, UpdateQueue
from client.models import BookState, OrderBookSnapshot, SnapshotStatus
from client.settings import ClientSettings, load_settings

log = logging.getLogger(__name__)

RESOLVE_TTL = 30.0  # seconds a bare symbol's exchange is cached
_DECODED_LIMIT = 100_000  # decoded books remembered for unchanged re-reads
_UNSET: Any = object()
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_Result = tuple[SnapshotStatus, OrderBookSnapshot | None]
_Flow = Any  # Generator[list[Command], list[Any], T]; spelled loosely to keep signatures readable


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


def guess_exchange(symbol: str) -> str | None:
    """The engines' old convention, used only when Redis has no book of the symbol on any exchange."""
    if "-" in symbol:
        return "upbit"
    if symbol.endswith("USDT"):
        return "binance"
    return None


def _default_writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "host"
    return f"client:{host}:{os.getpid()}"


class RedisMarketDataProvider(MarketDataProvider):
    """Order books from the shared Redis cache, with the legacy fields of the in-process provider.

    Pass existing clients (``redis=`` sync, ``async_redis=`` asyncio; this is how tests use fakeredis), or
    nothing to build them from settings (``MD_REDIS_URL`` …). Reads return ``None`` for a missing or stale book;
    ``strict=True`` raises `StaleSnapshotError` / `CorruptSnapshotError` / `MarketDataUnavailableError` instead.
    """

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
        self.layout = RedisLayout(settings.prefix)
        self.max_age = settings.max_age
        self.strict = settings.strict
        self.writer_id = writer_id or _default_writer_id()
        self._redis = redis
        self._async_redis = async_redis
        self._owns_sync = False
        self._owns_async = False
        if redis is None and async_redis is None:
            self._redis = self._build_sync_client()
            self._owns_sync = True
            self._owns_async = True  # built lazily, inside the event loop that first needs it
        self._feeder_guess: dict[str, str] = {}
        self._resolved: dict[str, tuple[str, float]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._corrupt: dict[tuple[str, str], CorruptSnapshotError] = {}
        self._decoded: dict[str, tuple[tuple[Any, ...], StoredBook]] = {}
        self._last_unavailable_log = 0.0
        self._pending_writes: set[asyncio.Task[bool]] = set()
        self._latest = LatestSnapshots(self)
        self.mode = settings.mode
        self._cache = BookCache(self.layout)
        self._mirror: MirrorPlan | None = None  # set by start/astart in mirror mode
        self._subscriber: SyncSubscriber | AsyncSubscriber | None = None
        self._wait_queues: dict[frozenset[str] | None, UpdateQueue] = {}

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisMarketDataProvider:
        """A provider that owns clients built for `url` (closed by stop/astop)."""
        settings = load_settings(ClientSettings, redis_url=url)
        return cls(settings=settings, **kwargs)

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None, **kwargs: Any) -> RedisMarketDataProvider:
        return cls(settings=settings or load_settings(ClientSettings), **kwargs)

    def _client_options(self) -> dict[str, Any]:
        timeout = self.settings.redis_timeout
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": 30}

    def _build_sync_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, **self._client_options())

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
            self._async_redis = redis.asyncio.Redis.from_url(
                self.settings.redis_url, **self._client_options()
            )
        return self._async_redis

    def __repr__(self) -> str:
        return f"<RedisMarketDataProvider prefix={self.layout.prefix!r} strict={self.strict} max_age={self.max_age}>"

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Check that Redis answers (a warning only: an engine may start before Redis does).

        In mirror mode, also start the subscriber thread and wait (up to ``MD_REDIS_TIMEOUT``) until every
        mirrored book is loaded, so the first read already returns the current books.
        """
        try:
            self._sync().ping()
        except _REDIS_DOWN as exc:
            log.warning(
                "Redis at %s does not answer yet (%s); reads return None until it does", self._where(), exc
            )
        if self.mode == "mirror" and self._subscriber is None:
            self._mirror = self._run_plan(self._sync_run)
            subscriber = SyncSubscriber(self._sync(), self._mirror, self._cache)
            self._subscriber = subscriber
            if not subscriber.start(self.settings.redis_timeout):
                log.warning("mirror: initial load not finished; books read as unavailable until it is")

    def stop(self) -> None:
        if isinstance(self._subscriber, SyncSubscriber):
            self._subscriber.stop()
            self._subscriber = None
        if self._owns_sync and self._redis is not None:
            self._redis.close()

    async def astart(self) -> None:
        try:
            await self._async().ping()
        except _REDIS_DOWN as exc:
            log.warning(
                "Redis at %s does not answer yet (%s); reads return None until it does", self._where(), exc
            )
        if self.mode == "mirror" and self._subscriber is None:
            self._mirror = await self._arun_plan()
            subscriber = AsyncSubscriber(self._async(), self._mirror, self._cache)
            self._subscriber = subscriber
            if not await subscriber.start(self.settings.redis_timeout):
                log.warning("mirror: initial load not finished; books read as unavailable until it is")

    async def astop(self) -> None:
        if self._pending_writes:
            await asyncio.gather(*self._pending_writes, return_exceptions=True)
        if isinstance(self._subscriber, AsyncSubscriber):
            await self._subscriber.stop()
            self._subscriber = None
        if self._owns_async and self._async_redis is not None:
            await self._async_redis.aclose()
            self._async_redis = None
        self.stop()

    def _plan_targets(self) -> tuple[list[tuple[str | None, str]], set[str] | None]:
        symbols = [x for x in self.settings.mirror_symbols.split(",") if x]
        exchanges = {x for x in self.settings.mirror_exchanges.split(",") if x}
        targets: list[tuple[str | None, str]] = []
        for item in symbols:
            exchange, _, symbol = item.rpartition(":")
            targets.append((exchange or None, symbol))
        whole: set[str] | None = exchanges if exchanges or not symbols else None
        if not symbols and not exchanges:
            whole = set()  # everything
        return targets, whole

    def _make_plan(
        self, targets: list[tuple[str | None, str]], exchanges: list[str | None], whole: set[str] | None
    ) -> MirrorPlan:
        keys = set()
        for (_, symbol), exchange in zip(targets, exchanges, strict=True):
            if exchange is None:
                log.warning(
                    "mirror: no exchange has a book of %s yet and its name says none; not mirrored", symbol
                )
            else:
                keys.add(self.layout.book_key(exchange, symbol))
        return MirrorPlan(self.layout, keys=keys, exchanges=whole)

    def _run_plan(self, run: Callable[[_Flow], Any]) -> MirrorPlan:
        targets, whole = self._plan_targets()
        exchanges: list[str | None] = []
        if targets:
            try:
                exchanges = run(self._resolve_flow(targets))
            except _REDIS_DOWN:
                exchanges = [ex or guess_exchange(s) for ex, s in targets]
        return self._make_plan(targets, exchanges, whole)

    async def _arun_plan(self) -> MirrorPlan:
        targets, whole = self._plan_targets()
        exchanges: list[str | None] = []
        if targets:
            try:
                exchanges = await arun_flow(self._async(), self._resolve_flow(targets))
            except _REDIS_DOWN:
                exchanges = [ex or guess_exchange(s) for ex, s in targets]
        return self._make_plan(targets, exchanges, whole)

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

    def _where(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.settings.redis_url)  # never log a password

    # ----------------------------------------------------------------------------------------- reads
    def get_latest_snapshot(self, symbol: str, exchange: str | None = None) -> OrderBookSnapshot | None:
        """The live book of `symbol`, or None (missing or stale; strict mode raises for stale)."""
        if self._mirror is not None and exchange is None:
            book = self._mirror_hit(symbol)
            if book is not None:
                return book
        return self._serve(self._lookup([(exchange, symbol)])[0])

    def _mirror_hit(self, symbol: str) -> OrderBookSnapshot | None:
        """The hot path of a mirror read: a live book of a bare symbol, or None to take the full path.

        Same rules as `_judge` (live flag, feeder alive, max_age), without building a status on success.
        """
        cache = self._cache
        keys = cache.by_symbol.get(symbol)
        if keys is None or len(keys) != 1 or not cache.connected:
            return None
        book = cache.books[keys[0]]
        if not book.live or (book.heartbeat and book.feeder not in cache.alive):
            return None
        if self.max_age is not None and time.time() - book.recv_ts > self.max_age:
            return None
        return book.snapshot

    async def aget_latest_snapshot(
        self, symbol: str, exchange: str | None = None
    ) -> OrderBookSnapshot | None:
        if self._mirror is not None and exchange is None:
            book = self._mirror_hit(symbol)
            if book is not None:
                return book
        targets = [(exchange, symbol)]
        return self._serve((await self._alookup(targets))[0])

    def get_latest_snapshots(
        self, symbols: Iterable[str], exchange: str | None = None
    ) -> dict[str, OrderBookSnapshot | None]:
        """Many books in one round trip (plus one to resolve bare symbols the first time)."""
        symbols = list(symbols)
        if self._mirror is not None and exchange is None:
            hits = {s: self._mirror_hit(s) for s in symbols}
            if all(book is not None for book in hits.values()):
                return hits
        targets = [(exchange, s) for s in symbols]
        results = self._lookup(targets)
        return {s: self._serve(r) for (_, s), r in zip(targets, results, strict=True)}

    async def aget_latest_snapshots(
        self, symbols: Iterable[str], exchange: str | None = None
    ) -> dict[str, OrderBookSnapshot | None]:
        targets = [(exchange, s) for s in symbols]
        results = await self._alookup(targets)
        return {s: self._serve(r) for (_, s), r in zip(targets, results, strict=True)}

    def snapshot_status(self, symbol: str, exchange: str | None = None) -> SnapshotStatus:
        """Why a book is or is not served: live, missing, connection down, feeder dead, too old, corrupt."""
        return self._lookup([(exchange, symbol)])[0][0]

    async def asnapshot_status(self, symbol: str, exchange: str | None = None) -> SnapshotStatus:
        targets = [(exchange, symbol)]
        return (await self._alookup(targets))[0][0]

    def inspect_books(self, targets: Iterable[tuple[str | None, str]]) -> list[_Result]:
        """Status and stored book of each ``(exchange or None, symbol)``, in order, in one batch read.

        For tools that show what Redis holds (the ``md`` CLI), not for trading: unlike `get_latest_snapshots`
        a stale book comes back with its status saying why it must not be used, and nothing raises for stale,
        corrupt or unreachable data, not even in strict mode (the status is ``corrupt`` / ``unavailable`` and
        the book ``None``). Invalid names raise InvalidSymbolError, an ambiguous bare symbol
        AmbiguousSymbolError, as everywhere else.
        """
        targets = list(targets)
        return self._lookup(targets) if targets else []

    async def ainspect_books(self, targets: Iterable[tuple[str | None, str]]) -> list[_Result]:
        targets = list(targets)
        return (await self._alookup(targets)) if targets else []

    # ----------------------------------------------------------------------------------------- writes
    def write_snapshot(self, snapshot: OrderBookSnapshot, exchange: str) -> bool:
        """Store a snapshot through the atomic write; False when an equal or newer book is already stored.

        The exchange ordering id is ``snapshot.xid`` or, for snapshots built by old adapters, the exchange
        timestamp in milliseconds. The book has no feeder heartbeat behind it, so readers judge it by
        ``max_age`` alone.
        """
        encoded = encode_book(
            self.layout, snapshot, exchange=exchange, writer=self.writer_id, heartbeat=False
        )
        seqs: list[int] = run_flow(self._sync(), write_flow(self.layout, [encoded]))
        return seqs[0] > 0

    async def awrite_snapshot(self, snapshot: OrderBookSnapshot, exchange: str) -> bool:
        encoded = encode_book(
            self.layout, snapshot, exchange=exchange, writer=self.writer_id, heartbeat=False
        )
        seqs: list[int] = await arun_flow(self._async(), write_flow(self.layout, [encoded]))
        return seqs[0] > 0

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

    def get_last_snapshot(self, exchange: str) -> OrderBookSnapshot | None:
        """The most recently written book of `exchange`, if live."""
        try:
            symbol = self._sync().get(self.layout.last_key(exchange))
        except _REDIS_DOWN as exc:
            return self._serve(self._unavailable(exchange, "", exc))
        return None if symbol is None else self.get_latest_snapshot(_text(symbol), exchange)

    async def aget_last_snapshot(self, exchange: str) -> OrderBookSnapshot | None:
        try:
            symbol = await self._async().get(self.layout.last_key(exchange))
        except _REDIS_DOWN as exc:
            return self._serve(self._unavailable(exchange, "", exc))
        return None if symbol is None else await self.aget_latest_snapshot(_text(symbol), exchange)

    def all_books(self) -> list[tuple[str, str]]:
        """Every (exchange, symbol) that has a book, from the indexes."""
        result: list[tuple[str, str]] = self._sync_run(self._all_books_flow())
        return result

    async def aall_books(self) -> list[tuple[str, str]]:
        result: list[tuple[str, str]] = await arun_flow(self._async(), self._all_books_flow())
        return result

    # ----------------------------------------------------------------------------------------- events
    def wait_for_update(
        self, symbols: Iterable[str] | None = None, timeout: float | None = None, exchange: str | None = None
    ) -> list[OrderBookSnapshot]:
        """Block until at least one of `symbols` (all mirrored books when None) is updated; [] on timeout.

        Returns the newest book of every symbol updated since the previous call with the same symbols (each
        call site keeps its own latest-wins buffer, so nothing is lost between calls and memory stays bounded);
        ``snapshot.skipped`` counts the updates of that book it did not see. Works in both modes: in
        read-through mode the first call starts a subscriber for these symbols.
        """
        keys = self._keys_for(symbols, exchange, self._sync_run)
        queue = self._queue(keys)
        self._ensure_subscriber_sync(keys)
        return queue.wait(timeout)

    async def await_for_update(
        self, symbols: Iterable[str] | None = None, timeout: float | None = None, exchange: str | None = None
    ) -> list[OrderBookSnapshot]:
        """The asyncio twin of `wait_for_update`."""
        keys = await self._akeys_for(symbols, exchange)
        queue = self._queue(keys)
        await self._aensure_subscriber(keys)
        return await queue.await_(timeout)

    async def updates(
        self, symbols: Iterable[str] | None = None, exchange: str | None = None
    ) -> AsyncIterator[OrderBookSnapshot]:
        """``async for snapshot in provider.updates(["KRW-BTC"])``: every update, newest per symbol first-come.

        A consumer slower than the feed sees the newest book per symbol (``snapshot.skipped`` says how many it
        missed); the buffer never holds more than one book per symbol.
        """
        keys = await self._akeys_for(symbols, exchange)
        queue = UpdateQueue(keys)
        self._cache.queues.append(queue)
        try:
            await self._aensure_subscriber(keys)
            while True:
                for snapshot in await queue.await_(None):
                    yield snapshot
        finally:
            self._cache.queues.remove(queue)

    def on_update(
        self, callback: UpdateCallback, symbols: Iterable[str] | None = None, exchange: str | None = None
    ) -> Callable[[], None]:
        """Call `callback(snapshot)` for every update of `symbols` (all mirrored books when None).

        The callback runs on the subscriber (the mirror thread of a sync provider, the event loop of an asyncio
        one): keep it short. Returns a function that unregisters it. With an asyncio-only provider call
        `astart()` first (mirror mode) or use `updates()`.
        """
        keys = self._keys_for(symbols, exchange, self._sync_run) if self._redis is not None else None
        entry = (keys, callback)
        self._cache.callbacks.append(entry)
        if self._redis is not None:
            self._ensure_subscriber_sync(keys)
        elif self._subscriber is not None and keys:
            self._subscriber.add_keys(keys)
        elif self._subscriber is None:
            raise MarketDataError(
                "on_update with an asyncio-only provider needs a running mirror: await astart() first"
            )

        def unregister() -> None:
            with contextlib.suppress(ValueError):
                self._cache.callbacks.remove(entry)

        return unregister

    def _queue(self, keys: set[str] | None) -> UpdateQueue:
        token = frozenset(keys) if keys is not None else None
        queue = self._wait_queues.get(token)
        if queue is None:
            queue = self._wait_queues[token] = UpdateQueue(keys)
            self._cache.queues.append(queue)
        return queue

    def _keys_for(
        self, symbols: Iterable[str] | None, exchange: str | None, run: Callable[[_Flow], Any]
    ) -> set[str] | None:
        if symbols is None:
            return None
        targets = [(exchange, s) for s in symbols]
        try:
            exchanges = run(self._resolve_flow(targets))
        except _REDIS_DOWN:  # Redis away: the subscriber will wait for it; names decide meanwhile
            exchanges = [ex or guess_exchange(s) for ex, s in targets]
        return self._resolved_keys(targets, exchanges)

    async def _akeys_for(self, symbols: Iterable[str] | None, exchange: str | None) -> set[str] | None:
        if symbols is None:
            return None
        targets = [(exchange, s) for s in symbols]
        client = self._async() if (self._async_redis is not None or self._owns_async) else None
        try:
            if client is None:
                exchanges = self._sync_run(self._resolve_flow(targets))
            else:
                exchanges = await arun_flow(client, self._resolve_flow(targets))
        except _REDIS_DOWN:
            exchanges = [ex or guess_exchange(s) for ex, s in targets]
        return self._resolved_keys(targets, exchanges)

    def _resolved_keys(self, targets: list[tuple[str | None, str]], exchanges: list[str | None]) -> set[str]:
        keys = set()
        for (_, symbol), ex in zip(targets, exchanges, strict=True):
            if ex is None:
                raise MarketDataError(f"cannot tell the exchange of {symbol!r}: pass exchange=")
            keys.add(self.layout.book_key(ex, symbol))
        return keys

    def _ensure_subscriber_sync(self, keys: set[str] | None) -> None:
        if self._subscriber is None:
            plan = self._mirror or MirrorPlan(
                self.layout, keys=set(keys or ()), exchanges=None if keys else set()
            )
            subscriber = SyncSubscriber(self._sync(), plan, self._cache)
            self._subscriber = subscriber
            subscriber.start(self.settings.redis_timeout)
        elif keys is None:
            if self._subscriber.plan.exchanges is None:
                log.warning(
                    "updates of every book need mirror mode over every exchange; only mirrored keys are seen"
                )
        else:
            self._subscriber.add_keys(k for k in keys if not self._subscriber.plan.covers(k))

    async def _aensure_subscriber(self, keys: set[str] | None) -> None:
        if self._subscriber is None and self._async_redis is None and not self._owns_async:
            await asyncio.to_thread(self._ensure_subscriber_sync, keys)
            return
        if self._subscriber is None:
            plan = self._mirror or MirrorPlan(
                self.layout, keys=set(keys or ()), exchanges=None if keys else set()
            )
            subscriber = AsyncSubscriber(self._async(), plan, self._cache)
            self._subscriber = subscriber
            await subscriber.start(self.settings.redis_timeout)
        elif keys is not None:
            self._subscriber.add_keys(k for k in keys if not self._subscriber.plan.covers(k))

    # ----------------------------------------------------------------------------------------- lookups
    def _lookup(self, targets: Sequence[tuple[str | None, str]]) -> list[_Result]:
        """Mirror hits from memory, everything else read through Redis in one batch."""
        results, rest = self._from_mirror(targets)
        if rest:
            fetched = self._run(self._read_flow([targets[i] for i in rest]), [targets[i] for i in rest])
            for i, result in zip(rest, fetched, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    async def _alookup(self, targets: Sequence[tuple[str | None, str]]) -> list[_Result]:
        results, rest = self._from_mirror(targets)
        if rest:
            sub = [targets[i] for i in rest]
            fetched = await self._arun(self._read_flow(sub), sub)
            for i, result in zip(rest, fetched, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _from_mirror(
        self, targets: Sequence[tuple[str | None, str]]
    ) -> tuple[list[_Result | None], list[int]]:
        plan = self._mirror
        results: list[_Result | None] = [None] * len(targets)
        if plan is None:
            return results, list(range(len(targets)))
        cache = self._cache
        rest: list[int] = []
        now = time.time()
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
                    found = ", ".join(sorted(k.split(":", 2)[1] for k in keys))
                    raise AmbiguousSymbolError(
                        f"symbol {symbol!r} has books on several exchanges ({found}): pass exchange= to choose"
                    )
                key = keys[0]
                exchange = key.split(":", 2)[1]
            else:
                key = self.layout.book_key(exchange, symbol)
            if plan.covers(key):
                results[i] = self._mirror_result(exchange, symbol, cache.books.get(key), now)
            else:
                rest.append(i)
        return results, rest

    def _mirror_result(self, exchange: str, symbol: str, book: StoredBook | None, now: float) -> _Result:
        if not self._cache.connected:
            detail = "mirror not synced with Redis (disconnected or still loading)"
            return SnapshotStatus(exchange, symbol, BookState.UNAVAILABLE, detail=detail), None
        return self._judge(exchange, symbol, book, self._cache.feeder_states, now)

    # ----------------------------------------------------------------------------------------- flows
    def _all_books_flow(self) -> _Flow:
        replies = yield [("SMEMBERS", self.layout.exchanges_key())]
        exchanges = sorted(_text(x) for x in replies[0])
        if not exchanges:
            return []
        replies = yield [("SMEMBERS", self.layout.symbols_key(ex)) for ex in exchanges]
        return [
            (ex, _text(s)) for ex, members in zip(exchanges, replies, strict=True) for s in sorted(members)
        ]

    def _resolve_flow(self, targets: Sequence[tuple[str | None, str]]) -> _Flow:
        """Exchange of each target: given, cached, found in the indexes, or guessed by the old convention."""
        now = time.monotonic()
        resolved: list[str | None] = []
        unknown: list[str] = []
        for exchange, symbol in targets:
            validate_symbol(symbol)
            if exchange is not None:
                resolved.append(validate_exchange(exchange))
                continue
            cached = self._resolved.get(symbol)
            if cached is not None and cached[1] > now:
                resolved.append(cached[0])
            else:
                resolved.append(None)
                unknown.append(symbol)
        if not unknown:
            return resolved
        replies = yield [("SMEMBERS", self.layout.exchanges_key())]
        exchanges = sorted(_text(x) for x in replies[0])
        carriers: dict[str, list[str]] = {s: [] for s in unknown}
        if exchanges:
            pairs = [(s, ex) for s in carriers for ex in exchanges]
            replies = yield [("SISMEMBER", self.layout.symbols_key(ex), s) for s, ex in pairs]
            for (s, ex), member in zip(pairs, replies, strict=True):
                if member:
                    carriers[s].append(ex)
        for s, found in carriers.items():
            if len(found) > 1:
                raise AmbiguousSymbolError(
                    f"symbol {s!r} has books on several exchanges ({', '.join(found)}): pass exchange= to choose"
                )
            if found:
                self._resolved[s] = (found[0], now + RESOLVE_TTL)
        return [
            ex if ex is not None else (carriers[s][0] if carriers[s] else guess_exchange(s))
            for ex, (_, s) in zip(resolved, targets, strict=True)
        ]

    def _read_flow(self, targets: Sequence[tuple[str | None, str]]) -> _Flow:
        """Statuses and books of the targets: HMGET of each book plus the state of their feeders."""
        exchanges: list[str | None] = yield from self._resolve_flow(targets)
        keys = [
            self.layout.book_key(ex, s) if ex else None for ex, (_, s) in zip(exchanges, targets, strict=True)
        ]
        present = [k for k in keys if k is not None]
        guesses = sorted({self._feeder_guess[k] for k in present if k in self._feeder_guess})
        commands: list[Command] = [read_book_command(k) for k in present]
        commands += [("HGET", self.layout.feeder_key(f), "state") for f in guesses]
        replies = yield commands
        states: dict[str, Any] = dict(zip(guesses, replies[len(present) :], strict=True))
        decoded: dict[str, StoredBook | CorruptSnapshotError | None] = {}
        for key, raw in zip(present, replies[: len(present)], strict=True):
            if isinstance(raw, Exception):
                raise raw
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
                b.feeder
                for b in decoded.values()
                if isinstance(b, StoredBook) and b.heartbeat and b.feeder not in states
            }
        )
        if unknown:
            replies = yield [("HGET", self.layout.feeder_key(f), "state") for f in unknown]
            states.update(zip(unknown, replies, strict=True))
        now = time.time()
        results: list[tuple[SnapshotStatus, OrderBookSnapshot | None]] = []
        for ex, (_, symbol), book_key in zip(exchanges, targets, keys, strict=True):
            results.append(
                self._judge(ex or "", symbol, decoded.get(book_key) if book_key else None, states, now)
            )
        return results

    def _judge(
        self,
        exchange: str,
        symbol: str,
        book: StoredBook | CorruptSnapshotError | None,
        feeder_states: Mapping[str, Any],
        now: float,
    ) -> tuple[SnapshotStatus, OrderBookSnapshot | None]:
        if book is None:
            return SnapshotStatus(exchange, symbol, BookState.MISSING, detail="no book in Redis"), None
        if isinstance(book, CorruptSnapshotError):
            self._corrupt[(exchange, symbol)] = book
            return SnapshotStatus(exchange, symbol, BookState.CORRUPT, detail=str(book)), None
        self._warned.discard((f"{exchange}:{symbol}", "corrupt"))
        if book.heartbeat:
            self._feeder_guess[book.key] = book.feeder
        age = now - book.recv_ts
        state, detail = BookState.LIVE, ""
        if not book.live:
            state, detail = BookState.CONNECTION_DOWN, f"feeder {book.feeder} reported its connection down"
        elif book.heartbeat and not feeder_alive(feeder_states.get(book.feeder)):
            state, detail = BookState.FEEDER_DEAD, f"feeder {book.feeder} has no heartbeat or is offline"
        elif self.max_age is not None and age > self.max_age:
            state, detail = BookState.TOO_OLD, f"received {age:.3f}s ago, max_age is {self.max_age}s"
        status = SnapshotStatus(
            exchange, symbol, state, age=age, seq=book.seq, feeder=book.feeder, detail=detail
        )
        return status, book.snapshot

    # ----------------------------------------------------------------------------------------- policy
    def _serve(self, result: tuple[SnapshotStatus, OrderBookSnapshot | None]) -> OrderBookSnapshot | None:
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

    # ----------------------------------------------------------------------------------------- drivers
    def _sync_run(self, flow: _Flow) -> Any:
        return run_flow(self._sync(), flow)

    def _run(self, flow: _Flow, targets: Sequence[tuple[str | None, str]]) -> list[_Result]:
        try:
            results: list[_Result] = run_flow(self._sync(), flow)
        except _REDIS_DOWN as exc:
            return [self._unavailable(ex or "", s, exc) for ex, s in targets]
        return results

    async def _arun(self, flow: _Flow, targets: Sequence[tuple[str | None, str]]) -> list[_Result]:
        try:
            results: list[_Result] = await arun_flow(self._async(), flow)
        except _REDIS_DOWN as exc:
            return [self._unavailable(ex or "", s, exc) for ex, s in targets]
        return results

    def _unavailable(
        self, exchange: str, symbol: str, exc: BaseException
    ) -> tuple[SnapshotStatus, OrderBookSnapshot | None]:
        now = time.monotonic()
        if now - self._last_unavailable_log > 10.0:
            self._last_unavailable_log = now
            log.warning(
                "Redis at %s is unavailable (%s); serving no books until it is back", self._where(), exc
            )
        return SnapshotStatus(
            exchange, symbol, BookState.UNAVAILABLE, detail=f"Redis unavailable: {exc}"
        ), None


class LatestSnapshots(Mapping[str, OrderBookSnapshot]):
    """The legacy ``latest_snapshots`` dict as a read-only view of the live books in Redis.

    ``in``, ``[]`` and ``get`` read one book; iteration, ``len`` and ``dict(...)`` read every indexed book in
    one batch. A symbol with books on two exchanges cannot be one dict key: it is left out of iteration and
    ``[]`` raises AmbiguousSymbolError.
    """

    def __init__(self, provider: RedisMarketDataProvider) -> None:
        self._provider = provider

    def __getitem__(self, symbol: str) -> OrderBookSnapshot:
        status, snapshot = self._provider._run(self._provider._read_flow([(None, symbol)]), [(None, symbol)])[
            0
        ]
        if status.state is not BookState.LIVE or snapshot is None:
            raise KeyError(symbol)
        return snapshot

    def __contains__(self, symbol: object) -> bool:
        if not isinstance(symbol, str):
            return False
        try:
            self[symbol]
        except (KeyError, AmbiguousSymbolError):
            return False
        return True

    def _live(self) -> dict[str, OrderBookSnapshot]:
        provider = self._provider
        books = provider.all_books()
        counts: dict[str, int] = {}
        for _, symbol in books:
            counts[symbol] = counts.get(symbol, 0) + 1
        targets = [(ex, s) for ex, s in books if counts[s] == 1]
        results = provider._lookup(targets)
        return {
            s: snap
            for (_, s), (status, snap) in zip(targets, results, strict=True)
            if status.state is BookState.LIVE and snap is not None
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return f"LatestSnapshots({self._live()!r})"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
