"""`Feeder`: one feeder process — its connections, its writer, its heartbeat — and their orderly shutdown.

Every task the feeder starts is created in `run` and cancelled and awaited there before it returns, so
nothing outlives the feeder. Shutdown order: stop reading (connections closed), flush the pending books,
mark the feeder offline (its books stop being served as live), stop the writer and heartbeat, close Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio
import redis.exceptions

from client.errors import InvalidSymbolError, redis_failure
from client.layout import RedisLayout, validate_symbol, wanted_flow
from client.topology import async_client, describe, follow_primary
from client.transport import arun_flow
from feeder.connection import ConnectionSettings, ExchangeConnection, StallPolicy
from feeder.exchanges import ExchangeProtocol, units_json
from feeder.exchanges.base import StallRule
from feeder.exchanges.registry import EXCHANGES
from feeder.latency import StageLatency
from feeder.metrics import FeederMetrics, MetricsServer
from feeder.pacing import OpenRateLimiter, SharedOpenLimiter
from feeder.settings import FeederSettings
from feeder.sharding import split_for_connections, take_shard
from feeder.status import REDIS_ERRORS, FeederIdInUseError, FeederStatus, StatusFields
from feeder.writer import SnapshotWriter

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 3.0


def stall_policy(rule: StallRule, settings: FeederSettings) -> StallPolicy:
    """The exchange's stall rule for these settings; ``MD_SILENCE_TIMEOUT`` > 0 replaces it."""
    if settings.silence_timeout > 0:
        return StallPolicy(fixed=settings.silence_timeout, floor=0.0)
    cadence = rule.cadence(settings)
    if cadence is not None:
        return StallPolicy(fixed=cadence * rule.beats, floor=rule.floor)
    return StallPolicy(floor=rule.floor, adaptive=rule.adaptive, gaps=rule.gaps)


WANTED_INTERVAL = 0.5  # seconds between two reads of the wanted sets: a change applies within a second


class Feeder:
    def __init__(self, settings: FeederSettings, client: redis.asyncio.Redis | None = None) -> None:
        self.settings = settings
        self.id = settings.feeder_id
        self.layout = RedisLayout(settings.prefix, sharded=settings.redis_cluster)
        self._owns_client = client is None
        self.redis = client or async_client(settings)
        time_ordered = {ex for ex in settings.exchange_list if EXCHANGES[ex].time_ordered_ids}
        self.writer = SnapshotWriter(
            self.redis,
            self.layout,
            self.id,
            batch=settings.write_batch,
            time_ordered=time_ordered,
            simulated=settings.simulated,
            history=settings.history_maxlen,
        )
        self.status = FeederStatus(
            self.redis,
            self.layout,
            self.id,
            self._status_fields,
            ttl=settings.heartbeat_ttl,
            writing=lambda: self.writer.redis_ok,
            on_loss=self.writer.rewrite_all,
            identify=not settings.redis_cluster,
        )
        # per exchange: what its connections are built from, to add one at run time (`_apply_wanted`)
        self._parts: dict[str, tuple[ExchangeProtocol, ConnectionSettings, SharedOpenLimiter]] = {}
        self.connections = self._build_connections()
        self._readers: dict[ExchangeConnection, asyncio.Task[None]] = {}
        self._running = False  # the readers run: a connection added at run time starts at once
        self._wanted_ok = True
        # per exchange, the (added, removed) run-time changes its connections follow now
        self._wanted_applied: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self.latency = StageLatency()
        self.writer.observers.append(self.latency)
        self.metrics: FeederMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if settings.metrics_port is not None:
            self.metrics = FeederMetrics(self.writer, lambda: self.connections, grace=settings.health_grace)
            self.metrics_server = MetricsServer(self.metrics, settings.metrics_host, settings.metrics_port)
        self.exit_code = 0  # 2 when the feeder stopped because another process uses its id
        self._claimed = False
        self._primary: tuple[str, int] | None = None  # with Sentinel: the primary last named
        self._sentinels_ok = True

    def _build_connections(self) -> list[ExchangeConnection]:
        s = self.settings
        k, n = s.shard_pair
        connections: list[ExchangeConnection] = []
        for exchange in s.exchange_list:
            descriptor = EXCHANGES[exchange]
            idle = descriptor.keepalive.idle_timeout
            if idle is not None and s.ping_interval is not None and s.ping_interval >= idle:
                log.warning(
                    "%s closes connections idle for %.0fs: MD_PING_INTERVAL=%s is too long to keep them open",
                    exchange,
                    idle,
                    s.ping_interval,
                )
            protocol = descriptor.build(s)
            symbols = take_shard(descriptor.symbols(s), k, n)
            limiter = SharedOpenLimiter(
                self.redis,
                self.layout,
                exchange,
                s.pacing_host,
                OpenRateLimiter(descriptor.pacing.open_rate, descriptor.pacing.open_burst),
            )
            conn_settings = ConnectionSettings(
                connect_timeout=s.connect_timeout,
                ping_interval=s.ping_interval or descriptor.keepalive.ping_interval,
                ping_timeout=s.ping_timeout or descriptor.keepalive.ping_timeout,
                stall=stall_policy(descriptor.stall, s),
                reconnect_max_delay=s.reconnect_max_delay,
                max_lifetime=descriptor.max_lifetime(s),
                subscribe_interval=descriptor.pacing.subscribe_interval,
                resyncs_per_minute=s.resyncs_per_minute or descriptor.pacing.resyncs_per_minute,
                missing_after=s.missing_after,
            )
            self._parts[exchange] = (protocol, conn_settings, limiter)
            chunks = split_for_connections(symbols, protocol.max_symbols_per_connection)
            for i, chunk in enumerate(chunks, 1):
                connections.append(
                    ExchangeConnection(
                        protocol, chunk, self.writer, conn_settings, limiter, name=f"{exchange}-{i}"
                    )
                )
        return connections

    # ------------------------------------------------------------------------------------------ counters
    def _status_fields(self) -> StatusFields:
        w = self.writer.stats
        conns = self.connections
        fields: dict[str, str | int | float] = {
            "exchanges": self.settings.exchanges,
            "shard": self.settings.shard,
            "symbols": sum(len(c.symbols) for c in conns),
            "connections_up": sum(1 for c in conns if c.up),
            "connections_total": len(conns),
            "msgs_in": sum(c.stats.frames for c in conns),
            "books_in": sum(c.stats.books for c in conns),
            "written": w.written,
            "coalesced": w.coalesced,
            "rejected": w.rejected,
            "joined": w.joined,
            "unchanged": w.unchanged,
            "future": w.future,
            "failed": w.failed,
            "rewrites": w.rewrites,
            "bad": sum(c.stats.bad_frames for c in conns),
            "unexpected": sum(c.stats.unexpected for c in conns),
            "repeats": sum(c.stats.repeats for c in conns),
            "exchange_errors": sum(c.stats.exchange_errors for c in conns),
            "reconnects": sum(c.stats.reconnects for c in conns),
            "rotations": sum(c.stats.rotations for c in conns),
            "resyncs": sum(c.stats.resyncs for c in conns),
            "restarts": sum(c.stats.restarts for c in conns),
            "missing": _missing_field([s for c in conns for s in c.missing]),
            "pending": self.writer.pending,
            "redis_errors": w.redis_errors,
            "last_error": self._last_error(),
        }
        for c in conns:
            fields[f"conn:{c.name}"] = f"{'up' if c.up else 'down'} {len(c.symbols)} symbols"
        fields.update(self.latency.fields())
        return fields

    def _last_error(self) -> str:
        errors = [c.stats.last_error for c in self.connections if c.stats.last_error]
        if self.writer.last_error and not self.writer.redis_ok:
            errors.insert(0, self.writer.last_error)
        return errors[0][:300] if errors else ""

    # ------------------------------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        """Feed until `stop` is set, then shut down in order."""
        s = self.settings
        log.info(
            "feeder %s: %d connections, %s; Redis %s, prefix %r",
            self.id,
            len(self.connections),
            ", ".join(
                f"{ex} {len(take_shard(s.symbols_of(ex), *s.shard_pair))} symbols" for ex in s.exchange_list
            ),
            describe(s),
            s.prefix,
        )
        if not units_json.AVAILABLE:
            log.warning(
                "the C decoder feeder/exchanges/_units.c is not built (no compiler at install?): "
                "Upbit, Bithumb and Binance books are decoded in Python, at about 1.4 times the CPU per frame"
            )
        try:
            # before the first book, so that readers never see books of an unknown feeder
            await self._claim()
        except (FeederIdInUseError, FeederOnReplicaError) as exc:
            log.error("%s", exc)
            self.exit_code = 2
            if self._owns_client:
                await self.redis.aclose()
            return
        if self.metrics_server is not None:
            await self.metrics_server.start()
        background = [
            asyncio.create_task(self.writer.run(), name="writer"),
            asyncio.create_task(self._heartbeat_loop(stop), name="heartbeat"),
            asyncio.create_task(self._summary_loop(), name="summary"),
        ]
        with contextlib.suppress(*REDIS_ERRORS):
            await self._apply_wanted()  # start from the wanted set, before any connection opens
        background.append(asyncio.create_task(self._wanted_loop(), name="wanted"))
        for c in self.connections:
            self._readers[c] = asyncio.create_task(c.run(), name=c.name)
        self._running = True
        try:
            await self._until_stopped(stop, background)
        finally:
            log.info("feeder %s: stopping", self.id)
            await _cancel_all(list(self._readers.values()))
            flushed = await self.writer.flush(FLUSH_TIMEOUT)
            if not flushed:
                log.warning("could not flush %d pending books before shutdown", self.writer.pending)
            await self.status.go_offline()
            await _cancel_all(background)
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self._owns_client:
                await self.redis.aclose()
            log.info("feeder %s: stopped (%s)", self.id, self.summary())

    async def _until_stopped(self, stop: asyncio.Event, background: list[asyncio.Task[None]]) -> None:
        """Wait for `stop`; a task that ends before it (they run until cancelled) is a bug or an error nothing
        handled: it is logged with its traceback and the feeder stops with exit status 1, so that its books go
        not live and a supervisor restarts it, instead of running on with a dead writer or connection. The
        readers are looked at anew every second: connections come and go with the wanted sets (a retired one
        leaves `_readers` before it is cancelled)."""
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            while True:
                tasks = {stopping, *background, *self._readers.values()}
                done, _ = await asyncio.wait(tasks, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return
                ended = [t for t in done if t in background or t in self._readers.values()]
                if not ended:
                    continue
                for task in ended:
                    if stop.is_set():
                        continue  # it set stop itself (the heartbeat, on a taken-over id)
                    error = None if task.cancelled() else task.exception()
                    log.error(
                        "feeder %s: task %s ended unexpectedly%s; stopping (exit status 1)",
                        self.id, task.get_name(), "" if error is None else f": {error!r}", exc_info=error,
                    )  # fmt: skip
                    self.exit_code = self.exit_code or 1
                return
        finally:
            stopping.cancel()

    async def _wanted_loop(self) -> None:
        """Follow the wanted sets (``md subscribe`` / ``md unsubscribe``) every `WANTED_INTERVAL` seconds."""
        while True:
            await asyncio.sleep(WANTED_INTERVAL)
            try:
                await self._apply_wanted()
            except REDIS_ERRORS as exc:
                if self._wanted_ok:
                    log.warning(
                        "feeder %s: cannot read the wanted symbols (%s); keeping the current ones",
                        self.id,
                        exc,
                    )
                self._wanted_ok = False
                continue
            self._wanted_ok = True

    async def _apply_wanted(self) -> None:
        """Make this feeder's share of each exchange's symbols (configured, plus those added at run time,
        minus those removed: ``md subscribe`` / ``md unsubscribe``) what its connections subscribe: symbols
        added go to a connection with room (a new request on it, no reconnect) or a new connection; removed
        ones are unsubscribed and marked down; untouched connections are left alone."""
        s = self.settings
        k, n = s.shard_pair
        exchanges = s.exchange_list
        changes = await arun_flow(self.redis, wanted_flow(self.layout, exchanges))
        for exchange in exchanges:
            added, removed = changes.get(exchange) or ([], [])
            seen = (frozenset(added), frozenset(removed))  # sets: SMEMBERS has no order
            if self._wanted_applied.get(exchange) == seen:
                continue  # what the connections already follow: nothing to work out again (twice a second)
            valid = []
            for symbol in added:
                try:
                    valid.append(validate_symbol(symbol))
                except InvalidSymbolError:
                    log.warning(
                        "feeder %s: %s wants an invalid symbol %r: skipped", self.id, exchange, symbol[:60]
                    )
            dropped = set(removed)
            listed = [x for x in dict.fromkeys([*EXCHANGES[exchange].symbols(s), *valid]) if x not in dropped]
            await self._reconcile(exchange, take_shard(listed, k, n))
            self._wanted_applied[exchange] = seen  # only once applied: a failure is tried again next time

    async def _reconcile(self, exchange: str, desired: list[str]) -> None:
        conns = [c for c in self.connections if c.exchange == exchange]
        want = set(desired)
        current = {sym for c in conns for sym in c.symbols}
        for c in conns:
            gone = [sym for sym in c.symbols if sym not in want]
            if gone:
                await c.change([], gone)
        added = [sym for sym in desired if sym not in current]
        protocol, conn_settings, limiter = self._parts[exchange]
        room = protocol.max_symbols_per_connection
        for c in conns:
            if not added:
                break
            free = room - len(c.symbols)
            if free > 0 and c.symbols:
                take, added = added[:free], added[free:]
                await c.change(take, [])
        for chunk in split_for_connections(added, room) if added else []:
            used = {c.name for c in self.connections}
            index = next(i for i in range(1, len(used) + 2) if f"{exchange}-{i}" not in used)
            conn = ExchangeConnection(
                protocol, chunk, self.writer, conn_settings, limiter, name=f"{exchange}-{index}"
            )
            self.connections.append(conn)
            log.info("feeder %s: %s: a new connection for %d wanted symbols", self.id, conn.name, len(chunk))
            if self._running:
                self._readers[conn] = asyncio.create_task(conn.run(), name=conn.name)
        for c in [c for c in conns if not c.symbols]:  # every symbol removed: the connection goes
            self.connections.remove(c)
            task = self._readers.pop(c, None)
            if task is not None:
                await _cancel_all([task])
            log.info("feeder %s: %s closed: none of its symbols is wanted any more", self.id, c.name)

    async def _claim(self) -> None:
        try:
            await self.status.claim(self.settings.heartbeat_interval)
        except REDIS_ERRORS as exc:
            if isinstance(getattr(exc, "error", exc), redis.exceptions.MovedError):
                raise FeederOnReplicaError(
                    f"feeder {self.id}: {describe(self.settings)} is a Redis Cluster node: set MD_REDIS_CLUSTER=true"
                ) from None
            if _read_only(exc):
                raise FeederOnReplicaError(
                    f"feeder {self.id}: {describe(self.settings)} is a read-only replica: a feeder writes, so "
                    "point MD_REDIS_URL at the primary (or name the Sentinels in MD_REDIS_SENTINELS)"
                ) from None
            log.warning(
                "feeder %s: Redis does not take the feeder's record yet (%s); its id is claimed once it does",
                self.id,
                redis_failure(exc),
            )
            return
        self._claimed = True

    async def _follow_primary(self) -> None:
        """With Sentinel: move to a new primary as soon as the Sentinels name it, and rewrite every book there.

        Writes the old primary took after the fail-over and before its demotion are lost, and the new one holds
        only what it had replicated: the latest book of every key is written again so that no quiet book stays
        behind.
        """
        try:
            address = await follow_primary(self.redis)
        except REDIS_ERRORS as exc:
            if self._sentinels_ok:
                log.warning("feeder %s: the Sentinels do not answer (%s); will keep asking", self.id, exc)
            self._sentinels_ok = False
            return
        self._sentinels_ok = True
        if address is None:
            return
        if self._primary is not None and address != self._primary:
            log.warning(
                "feeder %s: Redis fail-over: the primary is now %s:%d (was %s:%d); rewriting every book",
                self.id, *address, *self._primary,
            )  # fmt: skip
            self.writer.rewrite_all("the primary changed (fail-over)")
        self._primary = address

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._follow_primary()
            try:
                if not self._claimed:
                    await self._claim()
                else:
                    await self.status.beat()
            except FeederIdInUseError as exc:
                log.error("%s: stopping", exc)
                self.exit_code = 2
                stop.set()
                return

    async def _summary_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.summary_interval)
            log.info("summary: %s", self.summary())

    def summary(self) -> str:
        f = self._status_fields()
        return (
            f"{f['connections_up']}/{f['connections_total']} connections up, {f['symbols']} symbols, "
            f"frames {f['msgs_in']}, books written {f['written']}, coalesced {f['coalesced']}, "
            f"rejected {f['rejected']}, bad {f['bad']}, reconnects {f['reconnects']}, "
            f"redis {'ok' if self.writer.redis_ok else 'DOWN'}, pending {f['pending']}"
        )


def _missing_field(symbols: list[str], most: int = 50) -> str:
    """The missing symbols for the status record: comma-separated, at most `most` of them and a count."""
    shown = ",".join(symbols[:most])
    return shown if len(symbols) <= most else f"{shown},+{len(symbols) - most} more"


class FeederOnReplicaError(RuntimeError):
    """The feeder's Redis is a read-only replica, or a Cluster node addressed as a single server: nothing it
    writes would land."""


def _read_only(exc: BaseException) -> bool:
    inner = getattr(exc, "error", exc)
    return isinstance(inner, redis.exceptions.ReadOnlyError) or "read only replica" in str(exc)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and await `tasks`; one that had already failed was logged by `_until_stopped`, one that fails
    while being cancelled is logged here."""
    running = {task for task in tasks if not task.done()}
    for task in tasks:
        task.cancel()
    for task, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
        if task in running and isinstance(result, Exception):
            log.warning("task %s failed while stopping", task.get_name(), exc_info=result)
