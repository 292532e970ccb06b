"""Per-frame cost at every load, every book written: this feeder and a peer (cryptofeed) on the same sender.

The same simulator sends 200 Upbit books (SIMPLE format, 30 units) at 500, 2,000 and 10,000 frames/s, then at
an overload rate, first to one ``md-feeder`` process, then to cryptofeed's Upbit feed with its Redis stream
backend (`bench.peer_cryptofeed`), each with the machine to itself apart from the simulator (this process)
and redis-server. Each row reports, over the same window:

- frames/s sent and absorbed, books written/s (this feeder: its status counters; cryptofeed: the growth of
  its streams), and whether it kept up (nothing left in the simulator's outbox, nothing growing);
- the subject's CPU per frame (µs), and Redis's CPU per book written (µs);
- latency from the subject's receipt of a frame to a reader in this process seeing the book (this feeder: a
  pub/sub message, its ``recv_ts``; cryptofeed: ``XREAD BLOCK`` on its streams, ``receipt_timestamp``), so that
  both are measured from the same point on the same clock;
- the CPU of every other process on the machine during the window (the machine is shared).

The figure is the ratio, this feeder's CPU per frame over cryptofeed's at the same rate, not the absolute
time. At the end the simulator is frozen and the last book of every symbol is checked against what it sent
last, for both. The peer rows are skipped, with a line saying so, when the ``bench-peer`` extra is not
installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio

from bench.report import Context, Table, percentile
from bench.rig import (
    CpuMeter,
    FeederProbe,
    Feeders,
    cpu_seconds,
    poll,
    quiet_machine,
    sim_backlog,
    sim_frames,
    simulator,
    symbol_names,
    wait_for_truth,
)
from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.child import ChildProcess, clean_environment

ROOT = Path(__file__).resolve().parents[1]  # the peer runs as ``python -m bench.peer_cryptofeed`` from here
SYMBOLS = 200
FULL_RATES = [500, 2_000, 10_000, 30_000]  # the last one is more than either subject can take: overload
QUICK_RATES = [200]
DEPLOYED_HEARTBEAT = {"MD_HEARTBEAT_INTERVAL": "1", "MD_HEARTBEAT_TTL": "5"}  # the feeder's defaults
PEER_CATCH_UP = 180.0  # seconds cryptofeed gets to work off an overload before its books are compared
MODERATE = 2_000  # the rate the goals are stated at: <= 60 µs a frame and <= 0.2x the peer's


@dataclass
class Row:
    subject: str
    offered: int
    sent: float  # frames/s the simulator queued
    absorbed: float  # frames/s the subject read
    written: float  # books/s written to Redis
    cpu_us: float  # subject CPU µs per frame absorbed
    redis_us: float  # Redis CPU µs per book written
    other_cpu: float  # cores used by every other process
    p50_ms: float
    p99_ms: float
    kept_up: bool


@dataclass(frozen=True)
class Counts:
    """A subject's counters at one moment, with the simulator's frames sent by then."""

    at: float  # epoch seconds the counters are of
    absorbed: int | None  # frames read (None: the subject does not count them)
    written: int  # books written to Redis
    cpu: float  # the subject's CPU seconds so far
    sent: int  # frames the simulator had sent


class Subject:
    """One system under test: started, counted, stopped."""

    name = ""
    pid = 0

    async def start(self) -> None:
        """Running and delivering every book (the pid is known from here on)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def counts(self, sim: ExchangeSimulator) -> Counts:
        raise NotImplementedError

    async def reader(self, latencies: list[float], stop: asyncio.Event) -> None:
        raise NotImplementedError

    async def truth(self, sim: ExchangeSimulator, symbols: list[str]) -> list[str]:
        """Symbols whose last written book differs from the simulator's last."""
        raise NotImplementedError

    def first_error(self) -> str:
        return ""


class ThisFeeder(Subject):
    name = "md-feeder"

    def __init__(self, feeders: Feeders, url: str, symbols: list[str]) -> None:
        self.feeders = feeders
        # the default heartbeat (the benchmarks' 0.1 s would add ~7 µs a frame at 2,000 frames/s)
        self.feeder = feeders.start("bench-load", upbit=symbols, env=DEPLOYED_HEARTBEAT)
        self.probe = FeederProbe(url)
        self.url = url

    async def start(self) -> None:
        await self.probe.wait_connected(self.feeder, 1, 30)
        self.pid = self.feeder.pid

    async def counts(self, sim: ExchangeSimulator) -> Counts:
        """At the feeder's next heartbeat (its counters are as of it): the feeder runs with its default
        1 s heartbeat, as deployed, so its counters are read when they are fresh."""
        sample = await self.probe.sample(self.feeder, sim, timeout=5)
        counters = sample.counters
        return Counts(
            sample.heartbeat, counters["msgs_in"], counters["written"], sample.cpu, sample.sim_frames
        )

    async def reader(self, latencies: list[float], stop: asyncio.Event) -> None:
        client = redis.asyncio.Redis.from_url(self.url)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe("md:upbit:*")
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None and message["type"] == "pmessage":
                    seen = time.time()
                    recv = orjson.loads(message["data"]).get("recv_ts")
                    if recv is not None:
                        latencies.append(seen - recv)
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def truth(self, sim: ExchangeSimulator, symbols: list[str]) -> list[str]:
        async with RedisMarketDataProvider.from_url(self.url) as provider:
            return await wait_for_truth(provider, sim, [("upbit", s) for s in symbols], 30)

    async def aclose(self) -> None:
        await self.probe.aclose()
        await self.feeders.astop_all()


def peer_installed() -> bool:
    return importlib.util.find_spec("cryptofeed") is not None


def stream_key(symbol: str) -> str:
    quote, base = symbol.split("-")
    return f"book-UPBIT-{base}-{quote}"


class Cryptofeed(Subject):
    name = "cryptofeed"

    def __init__(self, ctx: Context, port: int, url: str, sim: ExchangeSimulator, symbols: list[str]) -> None:
        self.client = redis.asyncio.Redis(port=port)
        self.symbols = symbols
        self.keys = [stream_key(s) for s in symbols]
        log = ctx.workdir / "cryptofeed.log"
        command = [sys.executable, "-m", "bench.peer_cryptofeed", "--url", sim.upbit_url,
                   "--redis-port", str(port), *symbols]  # fmt: skip
        self.process = ChildProcess(command, log, env=clean_environment({}), cwd=ROOT)

    async def start(self) -> None:
        self.pid = self.process.pid

        async def streaming() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"cryptofeed exited\n{self.process.log_tail()}")
            return bool(await self.client.exists(*self.keys) == len(self.keys))

        await poll(streaming, 60, "cryptofeed did not write every book")

    async def written(self) -> int:
        """Entries in cryptofeed's streams: one per book it wrote."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xlen(key)
            return sum(await pipe.execute())

    async def counts(self, sim: ExchangeSimulator) -> Counts:
        """Now: cryptofeed counts no frames (one that falls behind shows as a growing backlog)."""
        written = await self.written()
        return Counts(time.time(), None, written, cpu_seconds(self.pid), sim_frames(sim))

    async def reader(self, latencies: list[float], stop: asyncio.Event) -> None:
        client = redis.asyncio.Redis(
            connection_pool=redis.asyncio.ConnectionPool(**self.client.connection_pool.connection_kwargs)
        )
        ids: dict[Any, Any] = dict.fromkeys(self.keys, "$")
        try:
            while not stop.is_set():
                replies: Any = await client.xread(ids, block=50)
                seen = time.time()
                for key, entries in replies:
                    for entry_id, fields in entries:
                        ids[key.decode()] = entry_id
                        latencies.append(seen - float(fields[b"receipt_timestamp"]))
        finally:
            await client.aclose()

    async def truth(self, sim: ExchangeSimulator, symbols: list[str]) -> list[str]:
        """cryptofeed keeps the prices as the exchange's text and the sizes as numbers: compared as floats."""
        sim.set_rate(0.0)

        async def differing() -> list[str]:
            bad = []
            for symbol, key in zip(symbols, self.keys, strict=True):
                last: Any = await self.client.xrevrange(key, count=1)
                want = sim.last_sent.get(("upbit", symbol))
                if not last or want is None:
                    bad.append(symbol)
                    continue
                book = orjson.loads(last[0][1][b"book"])
                bids = sorted(((float(p), float(q)) for p, q in book["bid"].items()), reverse=True)
                asks = sorted((float(p), float(q)) for p, q in book["ask"].items())
                if bids != list(want.bids) or asks != list(want.asks):
                    stamp = float(last[0][1][b"timestamp"])
                    bad.append(
                        f"{symbol} (stored: exchange time {stamp:.3f}, {len(bids)}/{len(asks)} levels; "
                        f"sent last: {want.timestamp:.3f}, {len(want.bids)}/{len(want.asks)})"
                    )
            return bad

        # After an overload cryptofeed has a long backlog in its socket and its queue: wait until its
        # streams stop growing (2 s without a new entry), then compare; at most PEER_CATCH_UP seconds.
        deadline = time.monotonic() + PEER_CATCH_UP
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = await self.written()
            if count != last:
                last, still_since = count, time.monotonic()
            elif time.monotonic() - still_since >= 2.0:
                break
            await asyncio.sleep(0.2)
        return await differing()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.process.stop)
        await self.client.aclose()

    def first_error(self) -> str:
        lines = self.process.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line and not line.startswith(" ")]
        return errors[-1][:160] if errors else ""


async def measure(
    subject: Subject, sim: ExchangeSimulator, redis_pid: int, offered: int, seconds: float, symbols: int
) -> Row:
    sim.set_rate(offered / symbols)
    await asyncio.sleep(min(1.0, seconds / 3))
    latencies: list[float] = []
    stop = asyncio.Event()
    reading = asyncio.create_task(subject.reader(latencies, stop))
    meter = CpuMeter({"redis": redis_pid, "sim": os.getpid()})
    try:
        await asyncio.sleep(0.2)  # the reader is subscribed
        backlog0 = sim_backlog(sim)
        first = await subject.counts(sim)
        meter.start()
        await asyncio.sleep(seconds)
        last = await subject.counts(sim)
        wall, cpu = meter.read()
        backlog1 = sim_backlog(sim)
    finally:
        stop.set()
        await reading
    span = last.at - first.at
    sent, written = last.sent - first.sent, last.written - first.written
    if first.absorbed is not None and last.absorbed is not None:
        absorbed = last.absorbed - first.absorbed
    else:
        absorbed = sent - (backlog1 - backlog0)  # what it did not read stayed in the outbox
    kept_up = backlog1 <= max(200, 0.02 * sent) and absorbed >= 0.97 * sent
    return Row(
        subject.name, offered, sent / span, absorbed / span, written / span,
        (last.cpu - first.cpu) / max(1, absorbed) * 1e6,
        cpu["redis"] / wall / (written / span) * 1e6 if written > 0 else float("nan"),
        cpu["other"] / wall,
        percentile(latencies, 50) * 1000 if latencies else float("nan"),
        percentile(latencies, 99) * 1000 if latencies else float("nan"), kept_up,
    )  # fmt: skip


async def drain(sim: ExchangeSimulator, timeout: float) -> bool:
    """Stop sending; whether the subject took everything from the simulator's outbox within `timeout`."""
    sim.set_rate(0.0)

    async def empty() -> bool:
        return sim_backlog(sim) == 0

    try:
        await poll(empty, timeout, "the subject never read what the simulator sent", interval=0.05)
    except TimeoutError:
        return False
    return True


@dataclass
class Outcome:
    rows: list[Row]
    wrong: list[str]  # books whose last written version is not the simulator's last
    behind: str = ""  # the rate after which the subject never caught up, if it did not
    first_error: str = ""  # the first error line of the subject's log (the peer's), for the notes


async def run_subject(
    ctx: Context, make: Callable[[ExchangeSimulator, Any], Awaitable[Subject]], rates: list[int], table: Table
) -> Outcome:
    server = ctx.redis()
    assert server.process is not None
    rows: list[Row] = []
    symbols = symbol_names("upbit", SYMBOLS if not ctx.quick else 5)
    async with simulator(rate=1.0) as sim:
        subject = await make(sim, server)
        try:
            await subject.start()
            busy = await quiet_machine(timeout=0 if ctx.quick else 60, exclude=[subject.pid])
            if busy > 0.3:
                table.note(f"{subject.name}: the machine was busy ({busy:.1f} cores) when it started")
            for offered in rates:
                row = await measure(
                    subject, sim, server.process.pid, offered, 1.0 if ctx.quick else 5.0, len(symbols)
                )
                rows.append(row)
                if not await drain(sim, PEER_CATCH_UP):
                    behind = f"{offered:,}/s"
                    break
            else:
                behind = ""
            bad = await subject.truth(sim, symbols)
        finally:
            await subject.aclose()
        with contextlib.suppress(Exception):
            await redis.asyncio.Redis.from_url(server.url).flushall()
    return Outcome(rows, bad, behind, subject.first_error())


def run(ctx: Context) -> list[Table]:
    table = Table(
        "load",
        f"Every book written, {SYMBOLS} Upbit books: CPU per frame at each rate, this feeder and cryptofeed",
        ["subject", "offered/s", "sent/s", "absorbed/s", "written/s", "CPU µs/frame", "ratio to peer",
         "Redis µs/book", "p50 ms", "p99 ms", "other CPU%", "kept up"],
    )  # fmt: skip
    rates = QUICK_RATES if ctx.quick else FULL_RATES
    symbols = symbol_names("upbit", SYMBOLS if not ctx.quick else 5)

    async def ours(sim: ExchangeSimulator, server: Any) -> Subject:
        return ThisFeeder(Feeders(server.url, sim, ctx.workdir / "load"), server.url, symbols)

    async def peer(sim: ExchangeSimulator, server: Any) -> Subject:
        return Cryptofeed(ctx, server.port, server.url, sim, symbols)

    ours_out = asyncio.run(run_subject(ctx, ours, rates, table))
    peer_out = asyncio.run(run_subject(ctx, peer, rates, table)) if peer_installed() else None
    mine, theirs = ours_out.rows, peer_out.rows if peer_out else []
    if peer_out is None:
        table.note(
            "cryptofeed rows skipped: the bench-peer extra is not installed (pip install -e '.[bench-peer]')"
        )
    by_rate = {r.offered: r for r in theirs}
    for row in [*mine, *theirs]:
        other = by_rate.get(row.offered)
        ratio = row.cpu_us / other.cpu_us if row.subject == "md-feeder" and other else float("nan")
        table.add(
            row.subject, row.offered, row.sent, row.absorbed, row.written, row.cpu_us, ratio, row.redis_us,
            row.p50_ms, row.p99_ms, round(100 * row.other_cpu), "yes" if row.kept_up else "NO",
        )  # fmt: skip
    for row in mine:
        if row.offered <= 10_000:
            table.check(row.kept_up, f"md-feeder fell behind at {row.offered:,} frames/s")
    table.check(not ours_out.behind, f"md-feeder never caught up after {ours_out.behind}")
    table.check(
        not ours_out.wrong,
        f"md-feeder: {len(ours_out.wrong)} books differ from the last sent, e.g. {ours_out.wrong[:2]}",
    )
    table.note(f"final books right: md-feeder {'yes' if not ours_out.wrong else 'NO'}")
    if peer_out is not None:
        verdict = "yes" if not peer_out.wrong else f"NO, {len(peer_out.wrong)} of {len(symbols)} differ"
        why = f" (e.g. {peer_out.wrong[0]})" if peer_out.wrong else ""
        behind = f"; never caught up after {peer_out.behind}" if peer_out.behind else ""
        error = f"; its log: {peer_out.first_error}" if peer_out.first_error else ""
        table.note(f"final books right: cryptofeed {verdict}{why}{behind}{error}")
    table.note(
        f"goals at {MODERATE:,} frames/s: md-feeder <= 60 µs of CPU a frame and <= 0.2x cryptofeed's in the same "
        "run, p99 <= 5 ms. Latency: the subject's receipt of a frame -> a reader in the bench process sees the "
        "book (pub/sub for md-feeder, XREAD BLOCK for cryptofeed's streams). 'other CPU%': every process but "
        "the subject, Redis and the simulator, during the window"
    )
    return [table]
