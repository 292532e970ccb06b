"""Topology: one Redis vs a 3-master Cluster — books/s written, Redis CPU per book, and the cost of a
whole-feed subscriber.

Two feeders (``MD_SHARD=1/2`` and ``2/2``) write every book of 400 symbols at the offered rate, first to one
redis-server, then to a 3-master Cluster (``MD_REDIS_CLUSTER=true``). Measured over a window: books written per
second (the feeders' ``written`` counters), and the CPU the redis-server processes used (``/proc``) per book
written, with no subscriber and then with `SUBSCRIBERS` subscriber processes reading the whole feed (what a
mirror-mode engine costs Redis): ``PSUBSCRIBE md:*:*`` on one Redis, ``SSUBSCRIBE`` to every book's shard
channel on the Cluster, where the scripts ``SPUBLISH``. The Cluster's per-book CPU is summed over its nodes.

All of it shares the machine's cores with the simulator and the feeders: on 2 cores the Cluster cannot show
its write scaling; what it shows is the per-book and per-subscriber cost, which is what sizing needs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from bench.report import Context, Table
from bench.rig import FeederProbe, Feeders, cpu_seconds, poll, simulator, symbol_names
from launch.redis_server import LocalRedisServer
from launch.redis_topologies import RedisCluster3

SUBSCRIBERS = 4


@dataclass(frozen=True)
class Size:
    symbols: int  # per exchange
    rate: float  # updates/s per symbol
    seconds: float


FULL = Size(200, 20.0, 5.0)  # 8,000 frames/s offered
QUICK = Size(4, 5.0, 1.0)


@dataclass
class Window:
    books_per_s: float
    redis_us_per_book: float


async def _window(probe: FeederProbe, feeders: list[str], pids: list[int], seconds: float) -> Window:
    async def written() -> int:
        return sum([(await probe.counters(f))["written"] for f in feeders])

    before, cpu0, t0 = await written(), sum(cpu_seconds(p) for p in pids), time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window itself (not synchronisation)
    after, cpu1, t1 = await written(), sum(cpu_seconds(p) for p in pids), time.monotonic()
    books = max(1, after - before)
    return Window((after - before) / (t1 - t0), (cpu1 - cpu0) / books * 1e6)


def subscribe_main(argv: list[str]) -> int:
    """A whole-feed subscriber process: PSUBSCRIBE md:*:* on one Redis; on a Cluster, SSUBSCRIBE each book's
    shard channel (SPUBLISH reaches no pattern). Reads until killed; prints "ready" once subscribed."""
    url, cluster, *keys = argv
    pubsub: Any
    if cluster == "1":
        pubsub = redis.cluster.RedisCluster.from_url(url).pubsub()
        pubsub.ssubscribe(*keys)
        receive = pubsub.get_sharded_message
    else:
        pubsub = redis.Redis.from_url(url).pubsub()
        pubsub.psubscribe("md:*:*")
        receive = pubsub.get_message
    print("ready", flush=True)
    while True:
        receive(timeout=1.0)


def _subscribers(url: str, cluster: bool, keys: list[str], count: int) -> list[subprocess.Popen[bytes]]:
    """`count` whole-feed subscriber processes (`subscribe_main`), each subscribed when this returns."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.topology", "subscribe", url, "1" if cluster else "0", *keys],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(count)
    ]
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            _stop(processes)
            raise RuntimeError("a subscriber did not start")
    return processes


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def _measure(
    ctx: Context, table: Table, label: str, url: str, pids: list[int], ports: list[int], env: dict[str, str],
    probe_client: Any, size: Size,
) -> None:  # fmt: skip
    upbit, binance = symbol_names("upbit", size.symbols), symbol_names("binance", size.symbols)
    async with simulator(rate=size.rate) as sim:
        feeders = Feeders(url, sim, ctx.workdir / f"topology-{label.split()[0]}")
        probe = FeederProbe(url, client=probe_client)
        subscribers: list[subprocess.Popen[bytes]] = []
        try:
            names = [f"bench-topo-{k}" for k in (1, 2)]
            started = [
                feeders.start(name, upbit=upbit, binance=binance, env={**env, "MD_SHARD": f"{k}/2"})
                for k, name in enumerate(names, 1)
            ]
            for feeder in started:
                await probe.wait_connected(feeder, 1, 60)

            async def flowing() -> bool:
                counts = [(await probe.counters(f))["written"] for f in names]
                return all(count >= size.symbols for count in counts)

            await poll(flowing, 60, f"{label}: books not flowing")
            bare = await _window(probe, names, pids, size.seconds)
            keys = [f"md:upbit:{x}" for x in upbit] + [f"md:binance:{x}" for x in binance]
            subscribers = await asyncio.to_thread(_subscribers, url, bool(env), keys, SUBSCRIBERS)
            loaded = await _window(probe, names, pids, size.seconds)
        finally:
            _stop(subscribers)
            await probe.aclose()
            await feeders.astop_all()
    per_subscriber = (loaded.redis_us_per_book - bare.redis_us_per_book) / SUBSCRIBERS
    table.check(bare.books_per_s > 0, f"{label}: no book written")
    table.add(label, size.symbols * 2 * size.rate, bare.books_per_s, bare.redis_us_per_book,
              loaded.books_per_s, loaded.redis_us_per_book, per_subscriber)  # fmt: skip


async def _run(ctx: Context, table: Table) -> None:
    size = QUICK if ctx.quick else FULL
    single = LocalRedisServer()
    single.start()
    try:
        assert single.process is not None
        client: Any = redis.asyncio.Redis.from_url(single.url, decode_responses=True)
        await _measure(
            ctx, table, "one Redis", single.url, [single.process.pid], [single.port], {}, client, size
        )
    finally:
        single.cleanup()
    cluster = RedisCluster3().start()
    try:
        pids = [node.process.pid for node in cluster.nodes if node.process is not None]
        ports = [node.port for node in cluster.nodes]
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        env = {"MD_REDIS_CLUSTER": "true"}
        await _measure(ctx, table, "3-master Cluster", cluster.url, pids, ports, env, client, size)
    finally:
        cluster.cleanup()


def run(ctx: Context) -> list[Table]:
    table = Table(
        "topology",
        "Topology: one Redis vs a 3-master Cluster (two feeder shards writing every book)",
        ["redis", "offered/s", "books/s", "redis µs/book", f"books/s, {SUBSCRIBERS} subs",
         f"redis µs/book, {SUBSCRIBERS} subs", "µs/book per subscriber"],
    )  # fmt: skip
    asyncio.run(_run(ctx, table))
    table.note(
        "redis µs/book: CPU of every redis-server process (summed over the Cluster's nodes) per book written; "
        f"subs: {SUBSCRIBERS} processes reading the whole feed as mirror engines do (PSUBSCRIBE md:*:* on one "
        "Redis; SSUBSCRIBE to every book on the Cluster, where books are SPUBLISHed on their own shard); per "
        "subscriber = the difference / subscribers. One machine, 2 shared cores: Redis, the simulator and the "
        "feeders compete"
    )
    return [table]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "subscribe":
        sys.exit(subscribe_main(sys.argv[2:]))
    print("usage: python -m bench.topology subscribe REDIS_URL 0|1 KEY...", file=sys.stderr)
    sys.exit(2)
