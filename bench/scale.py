"""Scale: 2000 symbols on each exchange — connections, feeder memory, Redis memory, and sharding.

One ``md-feeder`` carries 2000 Upbit codes (100 per connection) and 2000 Binance symbols (1024 streams per
connection at most); reported: the connections it uses, its resident memory (``/proc/<pid>/status``) with
every book flowing and after an overload, and Redis memory per book (``INFO memory`` ``used_memory`` after
every book is written, minus before, divided by the books). Then the same offered load — more than one process
can read — is carried once by that single feeder and once by two feeders with ``MD_SHARD=1/2`` and ``2/2``,
and their frames-in rates are compared. All of it runs on one machine: the simulator (this process), Redis
and the feeders share its cores, which is what caps the two-process gain here.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import redis.asyncio

from bench.report import Context, Table
from bench.rig import (
    CpuMeter,
    FeederProbe,
    FeederProcess,
    Feeders,
    peak_rss_mb,
    poll,
    quiet_machine,
    rss_mb,
    sim_frames,
    simulator,
    symbol_names,
    wait_for_truth,
)
from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from feeder.sharding import shard_of, split_for_connections, take_shard

TARGET_RSS_MB = 150.0
TARGET_RATIO = 1.6


@dataclass(frozen=True)
class Size:
    upbit: int
    binance: int
    upbit_per_connection: int
    binance_per_connection: int
    steady_rate: float  # updates/s per symbol while memory is measured
    offered: int  # frames/s over all symbols for the throughput comparison
    seconds: float  # measuring window
    connect_timeout: float

    @property
    def books(self) -> int:
        return self.upbit + self.binance

    def connections(self, shard: tuple[int, int] = (1, 1)) -> int:
        up = take_shard(symbol_names("upbit", self.upbit), *shard)
        bi = take_shard(symbol_names("binance", self.binance), *shard)
        return len(split_for_connections(up, self.upbit_per_connection)) + len(
            split_for_connections(bi, self.binance_per_connection)
        )

    def env(self, shard: tuple[int, int] = (1, 1)) -> dict[str, str]:
        return {
            "MD_SHARD": f"{shard[0]}/{shard[1]}",
            "MD_UPBIT_SYMBOLS_PER_CONNECTION": str(self.upbit_per_connection),
            "MD_BINANCE_SYMBOLS_PER_CONNECTION": str(self.binance_per_connection),
        }


FULL = Size(2000, 2000, 100, 1024, 0.5, 40_000, 4.0, 60)
QUICK = Size(6, 4, 2, 2, 5.0, 200, 1.0, 20)


@dataclass
class Throughput:
    sent: float
    received: float
    written: float  # books/s written to Redis, summed over the feeders
    cpu: dict[str, float]  # fraction of one core per process, "other" = the rest of the machine
    busy_before: float  # cores other processes used just before the window


async def throughput(
    sim: ExchangeSimulator,
    probe: FeederProbe,
    feeders: list[FeederProcess],
    meter: CpuMeter,
    size: Size,
) -> Throughput:
    """Frames/s the simulator sent and the feeders read (summed) at the offered load, over one window."""
    busy = await quiet_machine(timeout=0 if size.offered < 1000 else 90, exclude=meter.pids.values())
    sim.set_rate(size.offered / size.books)
    await asyncio.sleep(1.0 if size.offered >= 1000 else 0.3)
    before = [await probe.sample(f, sim) for f in feeders]
    sent_before = sim_frames(sim)
    meter.start()
    await asyncio.sleep(size.seconds)
    after = [await probe.sample(f, sim) for f in feeders]
    wall, cpu = meter.read()
    sent = sim_frames(sim) - sent_before
    # Each feeder's rate between two of its own heartbeats (its counters are as of its heartbeat).
    received = sum(
        (a.counters["msgs_in"] - b.counters["msgs_in"]) / (a.heartbeat - b.heartbeat)
        for a, b in zip(after, before, strict=True)
    )
    written = sum(
        (a.counters["written"] - b.counters["written"]) / (a.heartbeat - b.heartbeat)
        for a, b in zip(after, before, strict=True)
    )
    sim.set_rate(0.0)
    return Throughput(sent / wall, received, written, {k: v / wall for k, v in cpu.items()}, busy)


async def used_memory(client: redis.asyncio.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def all_books_written(client: redis.asyncio.Redis, count: int, timeout: float) -> None:
    async def done() -> bool:
        total = sum([await client.scard(f"md:symbols:{ex}") for ex in ("upbit", "binance")])
        return total >= count

    await poll(done, timeout, f"not every one of the {count} books reached Redis", interval=0.1)


async def memory_usage(client: redis.asyncio.Redis, books: list[tuple[str, str]]) -> float:
    """Mean ``MEMORY USAGE`` of the book hashes (every one of up to 200, evenly sampled)."""
    step = max(1, len(books) // 200)
    sample = books[::step]
    sizes = [await client.memory_usage(f"md:{ex}:{sym}", samples=0) for ex, sym in sample]
    return sum(s or 0 for s in sizes) / len(sample)


async def writers_of(client: redis.asyncio.Redis, books: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    async with client.pipeline(transaction=False) as pipe:
        for exchange, symbol in books:
            pipe.hget(f"md:{exchange}:{symbol}", "feeder")
        replies = await pipe.execute()
    return {
        book: (r.decode() if isinstance(r, bytes) else str(r)) for book, r in zip(books, replies, strict=True)
    }


async def _run(ctx: Context, table: Table, shard_table: Table) -> None:
    size = QUICK if ctx.quick else FULL
    server = ctx.redis()
    assert server.process is not None
    upbit, binance = symbol_names("upbit", size.upbit), symbol_names("binance", size.binance)
    books = [("upbit", s) for s in upbit] + [("binance", s) for s in binance]
    client = redis.asyncio.Redis.from_url(server.url)
    async with simulator(rate=size.steady_rate) as sim:
        runner = Feeders(server.url, sim, ctx.workdir / "scale")
        probe = FeederProbe(server.url)
        provider = RedisMarketDataProvider.from_url(server.url)
        try:
            # ---- one feeder: connections, memory, throughput
            memory_before = await used_memory(client)
            single = runner.start("bench-scale", upbit=upbit, binance=binance, env=size.env())
            await probe.wait_connected(single, size.connections(), size.connect_timeout)
            await all_books_written(client, size.books, size.connect_timeout)
            await asyncio.sleep(0.3 if ctx.quick else 1.0)  # steady flow at the low rate
            memory_after = await used_memory(client)
            hash_bytes = await memory_usage(client, books)
            status = await probe.status(single.feeder_id)
            rss_steady = rss_mb(single.pid)
            meter = CpuMeter({"feeder": single.pid, "sim": os.getpid(), "redis": server.process.pid})
            one = await throughput(sim, probe, [single], meter, size)
            rss_peak = peak_rss_mb(single.pid)
            per_book = (memory_after - memory_before) / size.books
            connections = int(status.get("connections_total", 0))
            table.check(
                connections == size.connections(),
                f"{connections} connections, expected {size.connections()}",
            )
            table.add(
                f"{size.upbit} upbit + {size.binance} binance",
                connections,
                sum(len(s.sessions) for s in sim.servers.values()),
                rss_steady,
                rss_peak,
                hash_bytes,
                per_book,
                (memory_after - memory_before) / 2**20,
            )
            await runner.astop_all()

            # ---- two shards at the same offered load
            shards = [
                runner.start(f"bench-shard-{k}", upbit=upbit, binance=binance, env=size.env((k, 2)))
                for k in (1, 2)
            ]
            for k, feeder in enumerate(shards, 1):
                await probe.wait_connected(feeder, size.connections((k, 2)), size.connect_timeout)
            meter = CpuMeter(
                {"feeder 1/2": shards[0].pid, "feeder 2/2": shards[1].pid, "sim": os.getpid(),
                 "redis": server.process.pid}
            )  # fmt: skip
            two = await throughput(sim, probe, shards, meter, size)
            rss_shards = [rss_mb(f.pid) for f in shards]
            bad = await wait_for_truth(provider, sim, books, 60)
            table.check(not bad, f"{len(bad)} books differ from what the simulator sent last, e.g. {bad[:3]}")
            writers = await writers_of(client, books)
            wrong = [
                f"{ex}:{sym}"
                for (ex, sym), who in writers.items()
                if who != f"bench-shard-{shard_of(sym, 2)}"
            ]
            table.check(not wrong, f"{len(wrong)} books written by the other shard, e.g. {wrong[:3]}")
        finally:
            await provider.astop()
            await probe.aclose()
            await runner.astop_all()
            await client.aclose()
    cores = os.cpu_count() or 1
    one_core = one.cpu["feeder"]
    two_cores = two.cpu["feeder 1/2"] + two.cpu["feeder 2/2"]
    one_eff = one.received / one_core if one_core else float("nan")
    two_eff = two.received / two_cores if two_cores else float("nan")
    one_books = one.written / one_core if one_core else float("nan")
    two_books = two.written / two_cores if two_cores else float("nan")
    shard_table.add(
        "1 process", size.offered, one.sent, one.received, round(100 * one_core), one_eff, one_books,
        round(100 * one.cpu["sim"]), round(100 * one.cpu["redis"]), round(100 * one.cpu["other"]), 1.0,
    )  # fmt: skip
    shard_table.add(
        "2 processes (--shard 1/2, 2/2)", size.offered, two.sent, two.received,
        f"{100 * two.cpu['feeder 1/2']:.0f} + {100 * two.cpu['feeder 2/2']:.0f}", two_eff, two_books,
        round(100 * two.cpu["sim"]), round(100 * two.cpu["redis"]), round(100 * two.cpu["other"]),
        two.received / one.received if one.received else float("nan"),
    )  # fmt: skip
    table.note(
        f"RSS steady: every book flowing at {size.steady_rate:g} updates/s per symbol; peak: VmHWM after the "
        f"one-process overload below; shard RSS at the end: {', '.join(f'{r:.0f}' for r in rss_shards)} MB. "
        "MEMORY USAGE/book: mean of the book hashes themselves; used_memory/book = (used_memory after every "
        f"book is written - before) / {size.books} books, with indexes, scripts and client buffers. "
        f"Target RSS <= {TARGET_RSS_MB:g} MB"
    )
    for label, result in (("one process", one), ("two processes", two)):
        if result.busy_before > 0.3:
            shard_table.note(
                f"{label}: other processes used {result.busy_before:.1f} cores before the window"
            )
    shard_table.note(
        f"the same offered load for both runs, over {size.books} books; 'feeder in/s' = sum of the feeders' "
        f"msgs_in; CPU% of one core, {cores} cores in all, shared by the simulator, Redis and the feeders, so "
        f"two feeders cannot get two full cores here; target ratio >= {TARGET_RATIO:g}x where cores allow. "
        f"Frames per feeder CPU-second: {one_eff:,.0f} (one process) vs {two_eff:,.0f} (two): with a free core "
        f"per feeder, two shards would read about {2 * two_eff / one_eff if one_eff else float('nan'):.2f}x "
        "what one reads at 100% of a core (a projection, not a measurement)"
    )


def run(ctx: Context) -> list[Table]:
    table = Table(
        "scale",
        "Scale: one feeder for many symbols on both exchanges: connections and memory",
        ["books", "connections", "sim connections", "feeder RSS MB", "RSS peak MB", "MEMORY USAGE/book",
         "used_memory/book", "used_memory MB"],
    )  # fmt: skip
    shard_table = Table(
        "scale:shards",
        "Scale: throughput of one feeder vs two shards at the same offered load",
        ["feeders", "offered/s", "sent/s", "feeder in/s", "feeder CPU%", "frames per feeder CPU-s",
         "books written per feeder CPU-s", "sim CPU%",
         "redis CPU%", "other CPU%", "ratio"],
    )  # fmt: skip
    asyncio.run(_run(ctx, table, shard_table))
    return [table, shard_table]
