"""The product on real Redis topologies: a replica for engines' reads, Sentinel fail-over, TLS.

Feeders run as subprocesses against the simulator; engines read through the provider in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import redis
from support.acl_users import CLUSTER_ACL, USERS
from support.feeder_process import FeederProcess
from support.feeder_rig import poll
from support.tcp_proxy import TcpProxy

from client import (
    BookState,
    ClientSettings,
    MarketDataUnavailableError,
    OrderBookSnapshot,
    RedisCommandError,
    RedisMarketDataProvider,
    load_settings,
)
from exchange_sim import ExchangeSimulator, same_book
from launch.child import clean_environment
from launch.redis_topologies import process_state

UPBIT = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
BINANCE = ["BTCUSDT", "ETHUSDT"]


def feeder_env(sim: ExchangeSimulator, **env: str) -> dict[str, str]:
    return {
        "MD_UPBIT_URL": sim.upbit_url,
        "MD_BINANCE_URL": sim.binance_url,
        "MD_UPBIT_SYMBOLS": ",".join(UPBIT),
        "MD_BINANCE_SYMBOLS": ",".join(BINANCE),
        "MD_SIMULATED": "true",
        **env,
    }


async def books_of(provider: RedisMarketDataProvider) -> dict[tuple[str, str], OrderBookSnapshot | None]:
    found: dict[tuple[str, str], OrderBookSnapshot | None] = {}
    for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
        books = await provider.aget_latest_snapshots(symbols, exchange=exchange)
        found.update({(exchange, s): b for s, b in books.items()})
    return found


async def equal_to_truth(provider: RedisMarketDataProvider, sim: ExchangeSimulator) -> bool:
    truth = sim.last_sent
    return all(same_book(book, truth.get(key)) for key, book in (await books_of(provider)).items())


async def providers(**settings: Any) -> list[RedisMarketDataProvider]:
    started = []
    for mode in ("read-through", "mirror"):
        provider = RedisMarketDataProvider(settings=load_settings(ClientSettings, mode=mode, **settings))
        await provider.astart()
        started.append(provider)
    return started


class FrozenWatch:
    """Watches engines while a fault happens: fails when one serves as live a book older than `bound` (the
    simulator had sent a newer one that long before) — "old but live", the one thing that must never happen."""

    def __init__(
        self, sim: ExchangeSimulator, engines: list[RedisMarketDataProvider], bound: float = 2.0
    ) -> None:
        self.sim, self.engines, self.bound = sim, engines, bound
        self.sent: dict[tuple[str, str], list[tuple[float, int]]] = {}  # key -> (first seen, xid), in order
        self.reads = 0
        self.violations: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> FrozenWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def stop(self) -> None:
        """Stop watching; an error of the watch itself is raised here (it must not hide as "no violation")."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _note_truth(self, now: float) -> None:
        for key, book in self.sim.last_sent.items():
            seen = self.sent.setdefault(key, [])
            if book.xid is not None and (not seen or seen[-1][1] != book.xid):
                seen.append((now, book.xid))

    async def _watch(self) -> None:
        while True:
            self._note_truth(time.monotonic())
            for engine in self.engines:
                books = await books_of(engine)
                now = time.monotonic()
                self.reads += 1
                for key, book in books.items():
                    if book is None or book.xid is None:
                        continue
                    newer = [t for t, xid in self.sent.get(key, []) if xid > book.xid]
                    if newer and now - newer[0] > self.bound:
                        self.violations.append(
                            f"{engine.mode}: {key} xid {book.xid} live {now - newer[0]:.2f}s late"
                        )
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------- replica
async def test_engines_read_from_a_replica_and_their_legacy_writes_go_to_the_primary(
    replicated_redis: Any,
) -> None:
    primary, replica = replicated_redis.primary, replicated_redis.replica
    async with ExchangeSimulator(rate=10.0) as sim:
        feeder = FeederProcess(feeder_env(sim, MD_REDIS_URL=primary.url, MD_FEEDER_ID="replica-test"))
        engines = await providers(redis_url=primary.url, redis_read_url=replica.url)
        try:

            async def live() -> bool:
                return all(await asyncio.gather(*(_all_live(e) for e in engines)))

            await poll(live, 20, f"books not live on the replica\n{feeder.log()[-2000:]}")
            sim.set_rate(0.0)
            for engine in engines:
                await poll(lambda e=engine: equal_to_truth(e, sim), 10, "replica books differ from the truth")
            # the legacy write lands on the primary (a replica would refuse it), and the reads use the replica
            book = OrderBookSnapshot("KRW-LEGACY", time.time(), [(1.0, 1.0)], [(2.0, 1.0)])
            assert await engines[0].awrite_snapshot(book, "upbit") is True
            assert redis.Redis.from_url(primary.url).exists("md:upbit:KRW-LEGACY")
            read_clients = redis.Redis.from_url(replica.url).info("clients")["connected_clients"]
            assert read_clients >= 3, "the engines do not read from the replica"
        finally:
            for engine in engines:
                await engine.astop()
            feeder.cleanup()


async def _all_live(provider: RedisMarketDataProvider) -> bool:
    return all(b is not None for b in (await books_of(provider)).values())


def test_a_feeder_pointed_at_a_replica_stops_at_start_with_a_clear_error(replicated_redis: Any) -> None:
    # exchange URLs that lead nowhere: it must stop before connecting anyway (tests talk only to 127.0.0.1)
    nowhere = {"MD_UPBIT_URL": "ws://127.0.0.1:1/websocket/v1", "MD_BINANCE_URL": "ws://127.0.0.1:1"}
    feeder = FeederProcess(
        {"MD_REDIS_URL": replicated_redis.replica.url, "MD_FEEDER_ID": "on-replica", **nowhere}
    )
    try:
        assert feeder.wait(30) == 2
        log = feeder.log()
        assert "is a read-only replica" in log and "MD_REDIS_URL" in log, log
    finally:
        feeder.cleanup()


# ------------------------------------------------------------------------------------------------- Sentinel
async def test_a_sentinel_fail_over_leaves_no_frozen_live_book_and_converges_within_2s(
    sentinel_redis: Any,
) -> None:
    topo = sentinel_redis
    sentinels = ",".join(f"{h}:{p}" for h, p in topo.sentinels)
    settings = {
        "redis_url": "redis://primary/0",
        "redis_sentinels": sentinels,
        "redis_sentinel_service": topo.service,
    }
    async with ExchangeSimulator(rate=2.0) as sim:  # quiet books: a lost write would not soon be replaced
        feeder = FeederProcess(
            feeder_env(
                sim,
                MD_REDIS_URL="redis://primary/0",
                MD_REDIS_SENTINELS=sentinels,
                MD_REDIS_SENTINEL_SERVICE=topo.service,
                MD_FEEDER_ID="sentinel-test",
                MD_HEARTBEAT_INTERVAL="0.2",
            )
        )
        engines = await providers(**settings)
        try:
            await poll(lambda: _every_live(engines), 20, f"books not live\n{feeder.log()[-2000:]}")
            watch = FrozenWatch(sim, engines).start()
            old_port = topo.master_port()
            promoted = threading.Event()
            failing_over = asyncio.create_task(asyncio.to_thread(topo.failover, 30, promoted.set))
            await poll(lambda: _true(promoted.is_set()), 30, "Sentinel promoted no replica")
            # from here the old primary still takes writes for seconds, until Sentinel demotes it: lost writes
            failed_over = time.monotonic()
            sim.set_rate(0.0)  # the last books sent are the truth the new primary must hold
            new_port = topo.master_port()
            assert new_port is not None and new_port != old_port, "the fault was not injected: no fail-over"
            new_primary = redis.Redis(port=new_port)
            fed = {("upbit", s) for s in UPBIT} | {("binance", s) for s in BINANCE}

            async def converged() -> bool:
                for key, want in sim.last_sent.items():
                    if key in fed:
                        stored = new_primary.hget(f"md:{key[0]}:{key[1]}", "xid")
                        if stored is None or int(stored) != want.xid:
                            return False
                return True

            log = feeder.log
            await poll(converged, 15, "the new primary does not hold the latest books")
            took = time.monotonic() - failed_over
            assert (
                took < 2.0
            ), f"books on the new primary equal the feeder's latest after {took:.2f}s\n{log()}"
            assert await failing_over == new_port  # and the old primary is demoted now
            new_primary.close()
            # no engine serves as live a book older than what the new primary holds
            for engine in engines:
                await poll(
                    lambda e=engine: equal_to_truth(e, sim), 5, f"{engine.mode}: frozen after fail-over"
                )
            assert "fail-over" in feeder.log()
            await watch.stop()
            assert watch.reads >= 3 and watch.violations == []  # it did watch, watch.violations[:5]
        finally:
            for engine in engines:
                await engine.astop()
            feeder.cleanup()


# ------------------------------------------------------------------------------------------- virtual IP
async def test_a_replica_promoted_behind_the_same_address_gets_every_book_rewritten(
    replicated_redis: Any,
) -> None:
    """No Sentinel: the feeder's address is a virtual IP that moves to the replica once it is promoted. The
    replica holds the replicated feeder record (nothing looks lost) but not what the old primary took after the
    promotion; only its run id tells the feeder that it is another server, and every book is rewritten."""
    topo = replicated_redis
    primary = redis.Redis(port=topo.primary.port)
    replica = redis.Redis(port=topo.replica.port)
    fed = [("upbit", s) for s in UPBIT] + [("binance", s) for s in BINANCE]

    def xids(server: redis.Redis) -> dict[tuple[str, str], int | None]:
        stored = {key: server.hget(f"md:{key[0]}:{key[1]}", "xid") for key in fed}
        return {key: None if xid is None else int(xid) for key, xid in stored.items()}

    with TcpProxy(topo.primary.port) as vip:
        url = f"redis://127.0.0.1:{vip.port}/0"
        async with ExchangeSimulator(rate=5.0) as sim:  # quiet books: only a rewrite repairs a lost write
            feeder = FeederProcess(feeder_env(sim, MD_REDIS_URL=url, MD_FEEDER_ID="vip-test"))
            engines = await providers(redis_url=url)
            try:
                await poll(lambda: _every_live(engines), 20, f"books not live\n{feeder.log()[-2000:]}")
                topo.wait_synced()
                replica.execute_command("REPLICAOF", "NO", "ONE")  # promoted; the old primary takes writes on
                before = xids(replica)
                await poll(lambda: _true(xids(primary) != before), 10, "the primary took no write after it")
                sim.set_rate(0.0)  # the last books sent are the truth

                async def primary_holds_truth() -> bool:
                    return xids(primary) == {key: sim.last_sent[key].xid for key in fed}

                await poll(primary_holds_truth, 5, "the primary does not hold the latest books")
                assert xids(replica) != xids(
                    primary
                ), "the fault was not injected: the replica holds the latest"
                assert primary.info("server")["run_id"] != replica.info("server")["run_id"]
                accepted = vip.accepted
                vip.switch(topo.replica.port)
                moved = time.monotonic()

                async def replica_holds_truth() -> bool:
                    return xids(replica) == xids(primary)

                await poll(
                    replica_holds_truth, 10, f"the promoted replica lacks books\n{feeder.log()[-3000:]}"
                )
                took = time.monotonic() - moved
                assert (
                    took < 2.0
                ), f"books on the promoted replica equal the feeder's latest after {took:.2f}s"
                assert vip.accepted > accepted  # the feeder did reconnect through the moved address
                assert "different server" in feeder.log()
                for engine in engines:  # both modes reload from the server now behind the address
                    await poll(
                        lambda e=engine: equal_to_truth(e, sim), 5, f"{engine.mode}: frozen after move"
                    )
            finally:
                for engine in engines:
                    await engine.astop()
                feeder.cleanup()
                primary.close()
                replica.close()


async def _true(value: bool) -> bool:
    return value


async def _every_live(engines: list[RedisMarketDataProvider]) -> bool:
    return all([await _all_live(e) for e in engines])


# ------------------------------------------------------------------------------------------------- TLS
async def _feed_read_and_status(
    env: dict[str, str], feeder_id: str, where: str, *, to_truth: bool = False
) -> str:
    """A feeder and an engine of each mode with `env`: every book live (and, with `to_truth`, equal to the
    simulator's), then `md status` naming the feeder. Returns the feeder's log."""
    settings = {k[3:].lower(): v for k, v in env.items()}
    async with ExchangeSimulator(rate=10.0) as sim:
        feeder = FeederProcess(feeder_env(sim, MD_FEEDER_ID=feeder_id, **env))
        engines = await providers(**settings)
        try:
            await poll(lambda: _every_live(engines), 20, f"books not live {where}\n{feeder.log()[-2000:]}")
            for engine in engines if to_truth else []:
                await poll(lambda e=engine: equal_to_truth(e, sim), 5, f"{engine.mode}: not the truth")
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "md_cli", "status"],
                env=clean_environment(env), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0 and feeder_id in done.stdout, done.stdout + done.stderr
            return feeder.log()
        finally:
            for engine in engines:
                await engine.astop()
            feeder.cleanup()


def _unavailable_in_strict_mode(settings: dict[str, Any], match: str | None = None) -> None:
    provider = RedisMarketDataProvider(
        settings=load_settings(ClientSettings, **settings, redis_timeout=2, strict=True)
    )
    with pytest.raises(MarketDataUnavailableError, match=match):
        provider.get_latest_snapshot("KRW-BTC", "upbit")
    provider.stop()


async def test_feeder_engines_and_md_over_tls_with_client_certificates(tls_redis: Any) -> None:
    tls = tls_redis.material
    env = {
        "MD_REDIS_URL": tls_redis.url,
        "MD_REDIS_TLS_CA_FILE": str(tls.ca_cert),
        "MD_REDIS_TLS_CERT_FILE": str(tls.client_cert),
        "MD_REDIS_TLS_KEY_FILE": str(tls.client_key),
    }
    await _feed_read_and_status(env, "tls-test", "over TLS")
    # the server requires client certificates: without one, nothing is served, and strict mode says why
    without_cert = {"redis_url": tls_redis.url, "redis_tls_ca_file": str(tls.ca_cert)}
    _unavailable_in_strict_mode(without_cert, "(?i)certificate|ssl|EOF")  # TLS 1.3: either


async def test_feeder_engines_and_md_through_sentinels_over_tls(tls_sentinel_redis: Any) -> None:
    """Sentinels that speak only TLS (client certificates required), naming a TLS-only server: with
    MD_REDIS_SENTINEL_TLS the feeder, both modes and md reach both; without it the Sentinels refuse us."""
    topo = tls_sentinel_redis
    tls = topo.material
    env = {
        "MD_REDIS_URL": "rediss://primary/0",
        "MD_REDIS_SENTINELS": f"127.0.0.1:{topo.sentinel.port}",
        "MD_REDIS_SENTINEL_SERVICE": topo.service,
        "MD_REDIS_SENTINEL_TLS": "true",
        "MD_REDIS_TLS_CA_FILE": str(tls.ca_cert),
        "MD_REDIS_TLS_CERT_FILE": str(tls.client_cert),
        "MD_REDIS_TLS_KEY_FILE": str(tls.client_key),
    }
    log = await _feed_read_and_status(env, "sentinel-tls", "via TLS Sentinels", to_truth=True)
    assert "Sentinels over TLS" in log
    # the fault is real: over plain TCP the Sentinels give nothing, and strict mode says so
    settings = {k[3:].lower(): v for k, v in env.items()}
    _unavailable_in_strict_mode({**settings, "redis_sentinel_tls": False})


# ------------------------------------------------------------------------------------------------- Cluster
async def test_feeder_and_engines_on_a_3_master_cluster_and_a_node_restart(redis_cluster: Any) -> None:
    """Books spread over three masters: written by a feeder, read in both modes equal to the truth; a master
    restarted empty under load: its books are rewritten and every engine converges within 2 s."""
    cluster = redis_cluster
    upbit = [f"KRW-C{i:02d}" for i in range(12)]  # enough names to land on every master
    for node in cluster.nodes:  # the least-privilege users, on every node (ACLs are per node)
        cluster_acl_users(node.port)

    def as_user(user: str) -> str:
        return str(cluster.url).replace("redis://", f"redis://{user}:pw-{user}@")

    env = {"MD_REDIS_URL": as_user("md-feeder"), "MD_REDIS_CLUSTER": "true", "MD_HISTORY_MAXLEN": "50"}
    async with ExchangeSimulator(rate=5.0) as sim:
        feeder = FeederProcess(
            {**feeder_env(sim, MD_FEEDER_ID="cluster-test", **env), "MD_UPBIT_SYMBOLS": ",".join(upbit)}
        )
        engines = await providers(redis_url=as_user("md-engine"), redis_cluster=True)
        fed = [("upbit", s) for s in upbit] + [("binance", s) for s in BINANCE]

        async def equal(engine: RedisMarketDataProvider) -> bool:
            truth = sim.last_sent
            for exchange, symbols in (("upbit", upbit), ("binance", BINANCE)):
                books = await engine.aget_latest_snapshots(symbols, exchange=exchange)
                for symbol, book in books.items():
                    want = truth.get((exchange, symbol))
                    if book is None or want is None or (book.xid, book.bids) != (want.xid, want.bids):
                        return False
            return True

        try:
            await poll(
                lambda: _all(engines, equal), 30, f"books not live on the cluster\n{feeder.log()[-3000:]}"
            )
            owners = {cluster.node_of(f"md:{x}:{s}") for x, s in fed}
            assert len(owners) == 3, f"the books did not spread over the three masters: {owners}"
            # history: the write script appends to a stream in the book's own slot, on every master
            for exchange, symbol in fed:
                key = f"md:hist:{{md:{exchange}:{symbol}}}"
                node = cluster.node_of(key)
                assert node == cluster.node_of(f"md:{exchange}:{symbol}")
                with redis.Redis(port=cluster.nodes[node].port) as on_node:
                    assert 1 <= on_node.xlen(key) <= 50
            watch = FrozenWatch(sim, engines).start()
            victim = cluster.node_of(f"md:upbit:{upbit[0]}")
            await asyncio.to_thread(cluster.restart_node, victim)
            cluster_acl_users(cluster.nodes[victim].port)  # an operator's aclfile would bring them back
            restarted = time.monotonic()
            sim.set_rate(0.0)
            await poll(
                lambda: _all(engines, equal), 15, f"no convergence after the restart\n{feeder.log()[-3000:]}"
            )
            took = time.monotonic() - restarted
            # the design's worst case: the writer's retry backoff (capped at 1 s) plus the heartbeat (1 s) that finds
            # the node's data gone and rewrites it; measured 0.15-1.3 s here, 2.2 s once in CI on a busy machine
            assert took < 3.0, f"converged {took:.2f}s after the node came back"
            # reads stall while the node is away (socket timeouts): let the watch read a few more times

            async def watched() -> bool:
                return watch.reads >= 3 * len(engines)

            await poll(watched, 15, "the watch did not get to read")
            await watch.stop()
            assert watch.reads >= 3 and watch.violations == []  # it did watch, watch.violations[:5]
            # books are announced on their own shard (SPUBLISH): nothing is broadcast over the cluster bus
            published = 0
            for node in cluster.nodes:
                info = redis.Redis(port=node.port).execute_command("CLUSTER", "INFO").decode()
                stats = dict(line.split(":", 1) for line in info.split() if ":" in line)
                published += int(stats.get("cluster_stats_messages_publish_sent", 0))
            assert published == 0, f"{published} PUBLISH messages crossed the cluster bus"
            # the users' lines were enough: no refusal on any node (but failed logins on the restarted node
            # before its users were back)
            for i, node in enumerate(cluster.nodes):
                for entry in redis.Redis(port=node.port).acl_log():
                    assert i == victim and entry["reason"] == "auth", (node.port, entry)
            assert "Traceback" not in feeder.log(), feeder.log()[-3000:]
            operator = {"MD_REDIS_URL": as_user("md-operator"), "MD_REDIS_CLUSTER": "true"}
            for command in (["status"], ["symbols"], ["get", upbit[0]]):  # md on the Cluster (SCAN per node)
                done = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "md_cli", *command], env=clean_environment(operator),
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert done.returncode == 0, (command, done.stdout, done.stderr)
                assert ("cluster-test" if command == ["status"] else upbit[0]) in done.stdout, done.stdout
        finally:
            for engine in engines:
                await engine.astop()
            feeder.cleanup()


async def test_a_silent_cluster_node_makes_mirrors_unavailable_within_a_second(redis_cluster: Any) -> None:
    """A master that stops answering but keeps its connections open (a partition; here SIGSTOP) sends its
    books' updates no more. The feeder records live on another node, so they still read as alive: only the
    pings on each shard connection show the silence. Both mirror drivers (thread and task) stop serving
    within about a second, and serve the truth again once the node is back."""
    cluster = redis_cluster
    upbit = [f"KRW-C{i:02d}" for i in range(12)]
    async with ExchangeSimulator(rate=5.0) as sim:
        feeder = FeederProcess(
            {
                **feeder_env(
                    sim, MD_REDIS_URL=cluster.url, MD_REDIS_CLUSTER="true", MD_FEEDER_ID="quiet-node"
                ),
                "MD_UPBIT_SYMBOLS": ",".join(upbit),
                "MD_BINANCE_SYMBOLS": "",
            }
        )
        settings = load_settings(ClientSettings, mode="mirror", redis_url=cluster.url, redis_cluster=True)
        task_mirror = RedisMarketDataProvider(settings=settings)
        thread_mirror = RedisMarketDataProvider(settings=settings)
        try:
            await task_mirror.astart()
            await asyncio.to_thread(thread_mirror.start)
            record_node = cluster.node_of("md:feeder:quiet-node")
            victims = [s for s in upbit if cluster.node_of(f"md:upbit:{s}") != record_node]
            assert victims, "every book is on the node of the feeder record"
            victim = cluster.node_of(f"md:upbit:{victims[0]}")
            silent = [s for s in upbit if cluster.node_of(f"md:upbit:{s}") == victim]

            async def states() -> list[BookState]:
                found = [(await task_mirror.asnapshot_status(s, "upbit")).state for s in silent]
                return found + [thread_mirror.snapshot_status(s, "upbit").state for s in silent]

            async def serving() -> bool:
                return all(state is BookState.LIVE for state in await states())

            async def not_serving() -> bool:
                return all(state is not BookState.LIVE for state in await states())

            await poll(serving, 30, f"books not live on the cluster\n{feeder.log()[-3000:]}")
            process = cluster.nodes[victim].process
            with cluster.paused_node(victim):  # under the node timeout (2 s): the Cluster does not fail it
                stopped = time.monotonic()
                assert process_state(process.pid) == "T", "the fault was not injected: the node runs"
                await poll(not_serving, 1.7, "a silent node's books are still served")
                took = time.monotonic() - stopped
                assert set(await states()) == {BookState.UNAVAILABLE}  # Redis is away, not a dead feeder
            await poll(serving, 15, f"books not live again after the node resumed\n{feeder.log()[-3000:]}")
            sim.set_rate(0.0)

            async def equal() -> bool:
                truth = sim.last_sent
                for mirror in (task_mirror, thread_mirror):
                    books = mirror.get_latest_snapshots(upbit, exchange="upbit")
                    for symbol, book in books.items():
                        want = truth.get(("upbit", symbol))
                        if book is None or want is None or book.xid != want.xid:
                            return False
                return True

            await poll(equal, 10, "the mirrors do not hold the latest books after the node resumed")
            assert took < 1.7
        finally:
            await task_mirror.astop()
            await asyncio.to_thread(thread_mirror.stop)
            feeder.cleanup()


def cluster_acl_users(port: int) -> None:
    """The least-privilege users of docs/operations.md on one Cluster node, with the Cluster's additions."""
    node = redis.Redis(port=port)
    for user, rules in USERS.items():
        node.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">pw-{user}", *rules.split(), *CLUSTER_ACL.split()
        )
    node.close()


async def _all(engines: list[RedisMarketDataProvider], check: Any) -> bool:
    return all([await check(e) for e in engines])


async def test_a_cluster_node_addressed_as_one_redis_gives_clear_errors_and_no_silent_death(
    redis_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: MOVED replies treated as values (AmbiguousSymbolError, TypeError), the mirror thread dead for good,
    the feeder retrying forever. Now every call names the fix; the mirror keeps retrying, its books unavailable."""
    cluster = redis_cluster
    good = RedisMarketDataProvider(
        settings=load_settings(ClientSettings, redis_url=cluster.url, redis_cluster=True)
    )
    symbols = [f"KRW-M{i}" for i in range(6)]
    for symbol in symbols:
        assert good.write_snapshot(
            OrderBookSnapshot(symbol, time.time(), [(1.0, 1.0)], [(2.0, 1.0)]), "upbit"
        )
    good.stop()
    plain = RedisMarketDataProvider(settings=load_settings(ClientSettings, redis_url=cluster.url))
    with pytest.raises(RedisCommandError, match="set MD_REDIS_CLUSTER=true"):  # some keys live elsewhere
        plain.get_latest_snapshots(symbols, exchange="upbit")
    plain.stop()
    mirror = RedisMarketDataProvider(
        settings=load_settings(ClientSettings, redis_url=cluster.url, mode="mirror")
    )
    await asyncio.to_thread(mirror.start)
    try:
        assert mirror.snapshot_status(symbols[0], "upbit").state is BookState.UNAVAILABLE
        subscriber = mirror._subscriber
        assert subscriber is not None and subscriber._thread.is_alive(), "the mirror thread died"
    finally:
        mirror.stop()
    assert "MD_REDIS_CLUSTER=true" in caplog.text
    async with ExchangeSimulator(rate=10.0) as sim:
        await asyncio.to_thread(_feeder_names_the_cluster_setting, sim, cluster.url)


def _feeder_names_the_cluster_setting(sim: ExchangeSimulator, url: str) -> None:
    feeder = FeederProcess(feeder_env(sim, MD_REDIS_URL=url, MD_FEEDER_ID="plain-on-cluster"))
    try:
        # it stops at start (exit 2) when its record's key lives elsewhere; else its first writes fail with the
        # same hint in the log (and no heartbeat: its books are never live)
        deadline = time.monotonic() + 30
        while feeder.alive() and "MD_REDIS_CLUSTER=true" not in feeder.log():
            assert time.monotonic() < deadline, feeder.log()[-2000:]
            time.sleep(0.05)
        assert "MD_REDIS_CLUSTER=true" in feeder.log(), feeder.log()[-2000:]
    finally:
        feeder.cleanup()
