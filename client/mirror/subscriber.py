"""The mirror's subscriber: one core that decides everything, driven by a thread or by an asyncio task.

`SubscriberCore.session` is the whole subscriber as a generator of operations (subscribe, run a flow,
receive a message, report "synced"), with no I/O of its own; `ThreadSubscriber` (sync providers) and
`TaskSubscriber` (asyncio providers) carry the operations out with a sync or an asyncio pub/sub connection.
They keep the same public methods in the same order: ``start``, ``add_keys``, ``stop``.

A session subscribes, loads every mirrored book, marks the cache connected, then applies messages. After any
disconnect the driver reconnects with backoff and starts a new session, which re-reads everything before the
cache is marked connected again, so nothing published during the gap stays wrong; meanwhile the cache reports
its books as unavailable. Feeder liveness is refreshed every `FEEDER_REFRESH` seconds (and at once when a
message names a feeder the cache has not seen), so a dead feeder's books stop being served within its
heartbeat expiry plus that period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from client.layout import Flow
from client.mirror.cache import HEALTH_TIMEOUT, BookCache, MirrorPlan
from client.transport import (
    AsyncPubSubSource,
    PubSubSource,
    areceive_replies,
    arun_flow,
    raise_if_cancelled,
    receive_replies,
    run_flow,
)

log = logging.getLogger("client.mirror")

FEEDER_REFRESH = 0.5  # seconds between feeder-state refreshes
POLL = 0.1  # how long one receive waits; bounds the stop latency of the thread
DISCOVER_INTERVAL = 1.0  # sharded (Cluster): seconds between reads of the indexes for new books to subscribe
HEALTH_INTERVAL = 0.25  # seconds between pings on the pub/sub connection
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
_BOOK_MESSAGES = frozenset((b"message", b"pmessage", b"smessage", "message", "pmessage", "smessage"))
_PONGS = frozenset((b"pong", "pong"))


# --------------------------------------------------------------------------------------------- operations
@dataclass(frozen=True, slots=True)
class Subscribe:
    channels: list[str]
    patterns: list[str]
    sharded: bool = False  # SSUBSCRIBE the channels (Redis Cluster: books are announced with SPUBLISH)


@dataclass(frozen=True, slots=True)
class RunFlow:
    flow: Flow[Any]


@dataclass(frozen=True, slots=True)
class Receive:
    """The pub/sub replies that arrived (reply lists: `client.transport.receive_replies`), waiting up to `timeout` seconds for
    the first; an empty list when none came."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Synced:
    """Every mirrored book is loaded: a `start` waiting for it may return."""


@dataclass(frozen=True, slots=True)
class Ping:
    """A PING on the pub/sub connection: its pong (a message) shows that Redis still answers. Sharded, one
    ``PING <node>`` on each node's shard connection, its pong carrying the node's name back; the driver
    replies with the names it pinged."""


Operation = Subscribe | RunFlow | Receive | Synced | Ping
Session = Generator[Operation, Any, None]


# --------------------------------------------------------------------------------------------- the core
class SubscriberCore:
    """What the subscriber does, as operations for a driver; `add_keys` may be called from any thread."""

    def __init__(self, plan: MirrorPlan, cache: BookCache) -> None:
        self.plan = plan
        self.cache = cache
        self._added: set[str] = set()
        self._added_lock = threading.Lock()

    def add_keys(self, keys: Iterable[str]) -> None:
        """Subscribe more book channels (event consumers in read-through mode)."""
        new = set(keys) - self.plan.keys
        if new:
            with self._added_lock:
                self._added |= new

    def session(self) -> Session:
        """One connection's life: subscribe, load, then apply messages until the connection fails."""
        plan, cache = self.plan, self.cache
        sharded = plan.layout.sharded
        self._take_added()
        channels, patterns = plan.channels(), plan.patterns()
        subscribed = set(channels)
        if sharded:
            # no pattern subscriptions for shard channels: each book's own, learnt from the indexes
            if channels:
                yield Subscribe(channels, [], sharded=True)
        elif channels or patterns:
            yield Subscribe(channels, patterns)
        yield RunFlow(plan.load_flow(cache))
        if sharded:
            found = set(cache.books) - subscribed
            if found:  # subscribed after the load: re-read them, so that no write in between is missed
                yield Subscribe(sorted(found), [], sharded=True)
                yield RunFlow(cache.reload_flow(found))
                subscribed |= found
        discovered = time.monotonic()
        node_heard: dict[str, float] = {}  # sharded: the last pong of each node's shard connection
        cache.connected = True
        cache.heard = time.monotonic()
        yield Synced()
        log.debug("mirror: synced %d books", len(cache.books))
        refreshed = pinged = time.monotonic()
        while True:
            added = self._take_added()
            if sharded and plan.exchanges is not None and time.monotonic() - discovered > DISCOVER_INTERVAL:
                wanted: set[str] = yield RunFlow(plan.wanted_flow())
                added |= wanted - subscribed
                discovered = time.monotonic()
            if added:
                yield Subscribe(sorted(added), [], sharded=sharded)
                yield RunFlow(cache.reload_flow(added))
                subscribed |= added
            replies: list[Any] = yield Receive(POLL)
            gaps: set[str] = set()
            if replies and not sharded:
                cache.heard = time.monotonic()  # a message, or the pong of a ping: Redis answers
            for reply in replies:
                kind = reply[0] if type(reply) is list else b"pong"  # a bare PONG: pinged while unsubscribed
                if kind in _BOOK_MESSAGES:
                    gap = cache.apply(reply[-2], reply[-1])  # channel, data
                    if gap:
                        gaps.add(gap)
                elif sharded and kind in _PONGS:
                    node = _text(reply[-1])
                    if node in node_heard:
                        node_heard[node] = time.monotonic()
            gaps |= cache.take_reloads()  # books a read found corrupt (decoded lazily: client.mirror.cache)
            if gaps:
                yield RunFlow(cache.reload_flow(gaps))
            now = time.monotonic()
            if cache.unknown_feeders or now - refreshed > FEEDER_REFRESH:
                yield RunFlow(cache.feeder_refresh_flow())
                refreshed = time.monotonic()
                cache.heard = refreshed
            if now - pinged >= HEALTH_INTERVAL:
                pinged = now
                names = yield Ping()
                if sharded:
                    _track(node_heard, names or (), now)
            if node_heard:
                # a message does not say which node sent it, and a round trip of the feeder refresh proves only
                # the nodes of the feeder records: the mirror has heard from Redis as recently as from the
                # node it heard from least recently (a silent node would otherwise leave its books frozen)
                cache.heard = min(node_heard.values())
            if now - cache.heard > HEALTH_TIMEOUT:
                silent = sorted(n for n, t in node_heard.items() if now - t > HEALTH_TIMEOUT)
                where = f"the shard connection of {', '.join(silent)}" if silent else "the pub/sub connection"
                raise redis.exceptions.ConnectionError(
                    f"Redis answered nothing for {HEALTH_TIMEOUT:g}s on {where}"
                )

    def lost(self, exc: BaseException, failures: int) -> float:
        """The connection failed (the `failures`-th time in a row): books are unavailable; seconds to wait."""
        self.cache.connected = False
        if failures == 1:
            log.warning("mirror: pub/sub connection lost (%s); books read as unavailable until resynced", exc)
        if failures <= 1:
            return 0.0
        return float(min(2.0, 0.05 * 2.0 ** (failures - 2)) * random.uniform(0.5, 1.0))

    def failed(self, exc: BaseException, failures: int) -> float:
        """An unexpected error ended the session: logged with its traceback and counted; as `lost`, the books
        are unavailable until a new session has reloaded them; seconds to wait (at least 0.5: a bug that fails
        every time must not spin)."""
        self.cache.errors += 1
        log.error("mirror: unexpected error; books read as unavailable, retrying", exc_info=exc)
        return max(0.5, self.lost(exc, failures + 1))

    def _take_added(self) -> set[str]:
        with self._added_lock:
            added, self._added = self._added, set()
        self.plan.keys |= added
        return added


def _track(node_heard: dict[str, float], names: Iterable[str], now: float) -> None:
    """The nodes just pinged are the ones to hear from: a new one is given until `HEALTH_TIMEOUT` from now."""
    pinged = set(names)
    for gone in node_heard.keys() - pinged:
        del node_heard[gone]
    for new in pinged - node_heard.keys():
        node_heard[new] = now


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------------------------- drivers
class ThreadSubscriber:
    """Runs the core on a background thread with a sync client. `start` waits for the first full load."""

    def __init__(self, client: redis.Redis, plan: MirrorPlan, cache: BookCache) -> None:
        self.core = SubscriberCore(plan, cache)
        self.plan = plan
        self._redis = client
        self._pubsubs = PubSubSource(client)
        self._sharded = plan.layout.sharded
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name="md-mirror", daemon=True)

    def start(self, timeout: float) -> bool:
        self._thread.start()
        return self._loaded.wait(timeout)

    def add_keys(self, keys: Iterable[str]) -> None:
        self.core.add_keys(keys)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pubsubs.close()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = self._pubsubs.pubsub()
            try:
                self._drive(pubsub)
                failures = 0
            except REDIS_ERRORS as exc:
                failures += 1
                self._stop.wait(self.core.lost(exc, failures))
            except (
                Exception
            ) as exc:  # a bug, or an error redis-py does not class as its own: never die silently
                failures += 1
                self._stop.wait(self.core.failed(exc, failures))
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    pubsub.close()
        self.core.cache.connected = False

    def _drive(self, pubsub: Any) -> None:
        session = self.core.session()
        result: Any = None
        while not self._stop.is_set():
            operation = session.send(result)
            result = None
            if type(operation) is Receive:
                result = receive_replies(pubsub, operation.timeout, sharded=self._sharded)
            elif type(operation) is RunFlow:
                result = run_flow(self._redis, operation.flow)
            elif type(operation) is Ping:
                if self._sharded:
                    result = list(pubsub.node_pubsub_mapping)
                    for node, node_pubsub in list(pubsub.node_pubsub_mapping.items()):
                        node_pubsub.ping(node)
                else:
                    pubsub.ping()
            elif type(operation) is Subscribe:
                if operation.channels and operation.sharded:
                    pubsub.ssubscribe(*operation.channels)
                elif operation.channels:
                    pubsub.subscribe(*operation.channels)
                if operation.patterns:
                    pubsub.psubscribe(*operation.patterns)
            elif type(operation) is Synced:
                self._loaded.set()
        session.close()


class TaskSubscriber:
    """Runs the core as an asyncio task with an asyncio client. `start` waits for the first full load."""

    def __init__(self, client: redis.asyncio.Redis, plan: MirrorPlan, cache: BookCache) -> None:
        self.core = SubscriberCore(plan, cache)
        self.plan = plan
        self._redis = client
        self._pubsubs = AsyncPubSubSource(client)
        self._sharded = plan.layout.sharded
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> bool:
        self._task = asyncio.create_task(self._run(), name="md-mirror")
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def add_keys(self, keys: Iterable[str]) -> None:
        self.core.add_keys(keys)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pubsubs.aclose()
        self.core.cache.connected = False

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self._pubsubs.pubsub()
            try:
                await self._drive(pubsub)
            except REDIS_ERRORS as exc:
                failures += 1
                await asyncio.sleep(self.core.lost(exc, failures))
            except Exception as exc:  # as in ThreadSubscriber: logged, counted, retried; books unavailable
                failures += 1
                await asyncio.sleep(self.core.failed(exc, failures))
            else:
                failures = 0
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()

    async def _drive(self, pubsub: Any) -> None:
        session = self.core.session()
        result: Any = None
        while True:
            raise_if_cancelled()  # the client may have swallowed our stop (see client.transport)
            operation = session.send(result)
            result = None
            if type(operation) is Receive:
                result = await areceive_replies(pubsub, operation.timeout, sharded=self._sharded)
            elif type(operation) is RunFlow:
                result = await arun_flow(self._redis, operation.flow)
            elif type(operation) is Ping:
                if self._sharded:  # as in ThreadSubscriber
                    result = list(pubsub.node_pubsub_mapping)
                    for node, node_pubsub in list(pubsub.node_pubsub_mapping.items()):
                        await node_pubsub.ping(node)
                else:
                    await pubsub.ping()
            elif type(operation) is Subscribe:
                if operation.channels and operation.sharded:
                    await pubsub.ssubscribe(*operation.channels)
                elif operation.channels:
                    await pubsub.subscribe(*operation.channels)
                if operation.patterns:
                    await pubsub.psubscribe(*operation.patterns)
            elif type(operation) is Synced:
                self._loaded.set()
