"""End to end: simulator → one ``md-feeder`` subprocess → Redis, frames per second sustained.

For 1, 200 and 2000 symbols the offered rate (frames/s over all symbols, spread evenly) is raised step by step
until the feeder no longer keeps up: its frames-in rate falls behind the frames the simulator sent, or the
backlog between them keeps growing. Each step reports the simulator's sent rate, the feeder's frames in
(status ``msgs_in``), books written and coalesced, the feeder's CPU (``/proc/<pid>/stat``) per 1000 frames, and
the CPU of the simulator (this process) and of redis-server, since all three share the machine's cores.
At the end the simulator is frozen (rate 0) and every book in Redis must equal what it sent last.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from bench.report import Context, Table
from bench.rig import (
    CpuMeter,
    FeederProbe,
    FeederProcess,
    Feeders,
    FeederSample,
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

TARGET = 20_000  # frames/s from one feeder process


@dataclass(frozen=True)
class Case:
    label: str
    upbit: int
    binance: int
    connections: int

    @property
    def symbols(self) -> int:
        return self.upbit + self.binance


FULL_CASES = [
    Case("1 symbol (binance)", 0, 1, 1),
    Case("200 (100 upbit + 100 binance)", 100, 100, 2),
    Case("2000 (binance, 2 connections)", 0, 2000, 2),
]
QUICK_CASES = [Case("5 (2 upbit + 3 binance)", 2, 3, 2)]
FULL_RATES = [5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 35_000, 40_000, 50_000]
QUICK_RATES = [500]


@dataclass
class Step:
    offered: int
    seconds: float
    sent: float  # frames/s the simulator queued
    received: float  # frames/s the feeder read (msgs_in)
    written: float
    coalesced: float
    feeder_cpu: float  # fraction of one core
    cpu_per_1000: float  # feeder CPU seconds per 1000 frames received
    sim_cpu: float
    redis_cpu: float
    other_cpu: float  # every other process on the machine (other users of the shared cores)
    lag_growth: int  # frames sent but not yet read: growth over the window
    backlog: int  # frames still in the simulator's outboxes at the end of the window

    @property
    def sim_bound(self) -> bool:
        return self.sent < 0.9 * self.offered

    @property
    def kept_up(self) -> bool:
        window = self.sent * self.seconds
        return self.received >= 0.97 * self.sent and self.lag_growth <= max(200, 0.02 * window)


async def measure(
    probe: FeederProbe,
    feeder: FeederProcess,
    sim: ExchangeSimulator,
    meter: CpuMeter,
    offered: int,
    seconds: float,
) -> Step:
    before: FeederSample = await probe.sample(feeder, sim)
    meter.start()
    await asyncio.sleep(seconds)
    after = await probe.sample(feeder, sim)
    wall, cpu = meter.read()
    dt = after.heartbeat - before.heartbeat
    d = {k: after.counters[k] - before.counters[k] for k in after.counters}
    frames = after.sim_frames - before.sim_frames
    lag_before = before.sim_frames - before.counters["msgs_in"]
    lag_after = after.sim_frames - after.counters["msgs_in"]
    return Step(
        offered=offered,
        seconds=dt,
        sent=frames / dt,
        received=d["msgs_in"] / dt,
        written=d["written"] / dt,
        coalesced=d["coalesced"] / dt,
        feeder_cpu=cpu["feeder"] / wall,
        cpu_per_1000=(after.cpu - before.cpu) / max(1, d["msgs_in"]) * 1000,
        sim_cpu=cpu["sim"] / wall,
        redis_cpu=cpu["redis"] / wall,
        other_cpu=cpu["other"] / wall,
        lag_growth=lag_after - lag_before,
        backlog=sim_backlog(sim),
    )


async def drain(probe: FeederProbe, feeder: FeederProcess, sim: ExchangeSimulator, timeout: float) -> bool:
    """Stop generating, wait until the feeder has read every frame sent; the rate is left at 0."""
    sim.set_rate(0.0)

    async def caught_up() -> bool:
        sample = await probe.sample(feeder, sim)
        return sample.counters["msgs_in"] >= sample.sim_frames and sim_backlog(sim) == 0

    try:
        await poll(caught_up, timeout, "feeder did not catch up", interval=0.05)
    except TimeoutError:
        return False
    return True


async def run_case(ctx: Context, case: Case, table: Table, summary: Table) -> None:
    server = ctx.redis()
    assert server.process is not None
    rates = QUICK_RATES if ctx.quick else FULL_RATES
    seconds = 1.0 if ctx.quick else 3.0
    settle = 0.3 if ctx.quick else 1.0
    upbit = symbol_names("upbit", case.upbit)
    binance = symbol_names("binance", case.binance)
    books = [("upbit", s) for s in upbit] + [("binance", s) for s in binance]
    async with simulator(rate=0.0) as sim:
        feeders = Feeders(server.url, sim, ctx.workdir / "e2e")
        probe = FeederProbe(server.url)
        provider = RedisMarketDataProvider.from_url(server.url)
        try:
            busy = await quiet_machine(timeout=0 if ctx.quick else 90)
            if busy > 0.3:
                table.note(f"{case.label}: the machine was busy ({busy:.1f} cores) when the case started")
            feeder = feeders.start("bench-e2e", upbit=upbit, binance=binance)
            await probe.wait_connected(feeder, case.connections, 30)
            meter = CpuMeter({"feeder": feeder.pid, "sim": os.getpid(), "redis": server.process.pid})
            steps: list[Step] = []

            async def attempt(offered: int, note: str = "") -> Step:
                sim.set_rate(offered / case.symbols)  # the same rate for every symbol of both exchanges
                await asyncio.sleep(settle)
                step = await measure(probe, feeder, sim, meter, offered, seconds)
                steps.append(step)
                ctx.keep("e2e", case=case.label, offered=offered, written=step.written, sent=step.sent)
                verdict = "sim-bound" if step.sim_bound else ("yes" if step.kept_up else "NO")
                table.add(
                    case.label + note, offered, step.sent, step.received, step.written, step.coalesced,
                    round(100 * step.feeder_cpu), step.cpu_per_1000, round(100 * step.sim_cpu),
                    round(100 * step.redis_cpu), round(100 * step.other_cpu), step.lag_growth, verdict,
                )  # fmt: skip
                if not step.kept_up and not await drain(probe, feeder, sim, 60):
                    raise TimeoutError(f"the feeder did not catch up after {offered:,} frames/s")
                return step

            best: Step | None = None
            failed: list[Step] = []  # every attempt that did not keep up or could not be sent
            try:
                for offered in rates:
                    step = await attempt(offered)
                    if not step.kept_up and not step.sim_bound and not ctx.quick:
                        failed.append(step)
                        step = await attempt(offered, " (again)")  # one retry: the cores are shared
                    if step.sim_bound or not step.kept_up:
                        failed.append(step)
                        break
                    best = step
                if failed and best is not None and not failed[-1].sim_bound and not ctx.quick:
                    step = await attempt((best.offered + failed[-1].offered) // 2, " (between)")
                    if step.kept_up and not step.sim_bound:
                        best = step
                    else:
                        failed.append(step)
            except TimeoutError as exc:
                table.check(False, f"{case.label}: {exc}")
            drained = await drain(probe, feeder, sim, 60)
            table.check(drained, f"{case.label}: the feeder never read every frame the simulator sent")
            bad = await wait_for_truth(provider, sim, books, 15 if ctx.quick else 30)
            table.check(
                not bad, f"{case.label}: {len(bad)} books in Redis differ from the last sent, e.g. {bad[:3]}"
            )
            final = await probe.counters(feeder.feeder_id)
            table.check(final["bad"] == 0, f"{case.label}: feeder counted {final['bad']} bad frames")
            table.check(final["reconnects"] == 0, f"{case.label}: feeder reconnected {final['reconnects']}x")
            feeder_bound = [f for f in failed if not f.sim_bound]
            sim_bound = [f for f in failed if f.sim_bound]
            reasons = []
            if feeder_bound:
                worst = max(feeder_bound, key=lambda f: f.feeder_cpu)
                reasons.append(f"feeder, CPU {100 * worst.feeder_cpu:.0f}% at {worst.offered:,}/s")
            if sim_bound:
                reasons.append(f"simulator at {sim_bound[0].offered:,}/s")
            limit = "; ".join(reasons) if reasons else "not reached"
            kept = [step for step in steps if step.kept_up]
            peak = max(kept, key=lambda step: step.written, default=None)
            summary.add(
                case.label,
                case.connections,
                best.received if best else 0.0,
                f"{peak.written:,.0f} (at {peak.offered:,}/s)" if peak else "",
                best.cpu_per_1000 if best else float("nan"),
                limit,
                sim_frames(sim),
                final["msgs_in"],
                final["written"],
                final["coalesced"],
                "yes" if not bad else "NO",
            )
        finally:
            await provider.astop()
            await probe.aclose()
            await feeders.astop_all()


def run(ctx: Context) -> list[Table]:
    table = Table(
        "e2e",
        "End to end: simulator -> one md-feeder -> Redis, offered rate raised until the feeder falls behind",
        ["symbols", "offered/s", "sent/s", "feeder in/s", "written/s", "coalesced/s", "feeder CPU%",
         "CPU s/1000 frames", "sim CPU%", "redis CPU%", "other CPU%", "lag growth", "kept up"],
    )  # fmt: skip
    summary = Table(
        "e2e:summary",
        f"End to end: highest rate one feeder kept up with (target >= {TARGET:,} frames/s)",
        ["symbols", "connections", "max frames/s", "peak books written/s", "CPU s/1000 frames", "limited by",
         "frames sent", "frames in", "books written", "coalesced", "Redis == last sent"],
    )  # fmt: skip
    cases = QUICK_CASES if ctx.quick else FULL_CASES
    for case in cases:
        asyncio.run(run_case(ctx, case, table, summary))
    cores = os.cpu_count() or 1
    table.note(
        f"{cores} cores shared by the simulator (this process), the feeder and redis-server; CPU% = of one "
        "core; 'other' = every other process on the machine during the window. 'lag growth' = frames sent "
        "but not yet read, end minus start of the window; 'kept up' = feeder in/s >= 97% of sent/s and the "
        "lag did not grow; 'sim-bound' = the simulator could not send 90% of the offered rate. A failed step "
        "is measured once more (the cores are shared), then the rate half-way back"
    )
    summary.note(
        "max frames/s: the feeder's frames-in rate at the highest step it kept up with; frames sent (by the "
        "simulator) / in / written / coalesced: totals over the whole case, from the simulator's and the "
        "feeder's counters"
    )
    summary.note(
        "peak books written/s: the most books per second written to Redis at a step the feeder kept up with. "
        "Beyond it the feeder still reads every frame (so no book falls behind the socket), but reading takes "
        "the CPU that writing needs: fewer, always newest, books are written and each key is refreshed less "
        "often (keys / written/s). Frames of one key that arrive within one write are always coalesced"
    )
    return [table, summary]
