"""Faults: how fast a stall is seen, and whether a redundant pair of feeders leaves any gap when one fails.

**stall → not live.** One feeder; the simulator stalls its newest connection of an exchange (sends nothing,
reads nothing, answers no ping). A pub/sub watcher (a subprocess, `bench.reconnect`'s) times the book
channels' ``live:false`` messages; the time is measured from the last frame the simulator sent on that
connection (its last push, Binance's unchanged books included) to the moment every book of the connection has
been reported down. The feeder runs with its own stall rules (no ``MD_SILENCE_TIMEOUT``), Binance with its
100 ms cadence.

**redundant failover gap.** Two feeders on the same symbols; reader subprocesses (read-through and mirror)
read every book every 10 ms and record each book's not-live intervals. One feeder of the pair is SIGKILLed,
stopped cleanly, cut from its exchange, restarted under a new id, while the other keeps running: the longest
time any book held by the surviving feeder was not live. Its reference, measured in the same run: the sole
remaining feeder SIGKILLed, the time until its books read as not live (the heartbeat TTL, 1 s here) — proof
that the readers see a gap when there is one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis.asyncio

from bench.reconnect import Watcher
from bench.report import Context, Table, percentile
from bench.rig import FeederProbe, FeederProcess, Feeders, poll, simulator, stop_recorder, symbol_names
from client import MarketDataError, RedisMarketDataProvider
from client.layout import RedisLayout

STALL_GOAL_MS = 1000.0
FAILOVER_ENV = {"MD_HEARTBEAT_INTERVAL": "0.2", "MD_HEARTBEAT_TTL": "1"}
OWN_STALL_RULES = {"MD_SILENCE_TIMEOUT": "0"}  # the exchanges' own rules, not the benchmarks' "off"


# ------------------------------------------------------------------------------------------ the reader
def read_main(argv: list[str]) -> int:
    """Reader subprocess: every 10 ms, every book; prints "ready" once all are live, records until stdin.

    Writes ``{"polls": N, "changes": {key: [[t, live], ...]}}``: each book's transitions between live and
    not live (``time.time()``), starting with its state at the first poll after "ready".
    """
    url, mode, out, *symbols = argv
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    changes: dict[str, list[tuple[float, bool]]] = {s: [] for s in symbols}
    polls = 0
    with RedisMarketDataProvider.from_url(url, mode=mode) as provider:
        ready = False
        while not stop.is_set():
            try:
                books = provider.get_latest_snapshots(symbols)  # bare symbols: the mirror's fast path
            except MarketDataError:
                books = dict.fromkeys(symbols)
            now = time.time()
            if not ready:
                if all(b is not None for b in books.values()):
                    ready = True
                    print("ready", flush=True)
                else:
                    time.sleep(0.01)
                    continue
            polls += 1
            for symbol, book in books.items():
                live = book is not None
                seen = changes[symbol]
                if not seen or seen[-1][1] != live:
                    seen.append((now, live))
            time.sleep(0.01)
    Path(out).write_text(json.dumps({"polls": polls, "changes": changes}))
    return 0


@dataclass
class Reading:
    polls: int
    changes: dict[str, list[tuple[float, bool]]]

    def longest_gap(self, start: float, end: float) -> tuple[float, str]:
        """The longest not-live time of any book within [start, end), and that book."""
        worst, which = 0.0, ""
        for symbol, seen in self.changes.items():
            for i, (at, live) in enumerate(seen):
                if live:
                    continue
                until = seen[i + 1][0] if i + 1 < len(seen) else end
                gap = min(until, end) - max(at, start)
                if gap > worst:
                    worst, which = gap, symbol
        return worst, which

    def went_down(self, after: float) -> dict[str, float]:
        """Seconds from `after` to each book's first not-live reading after it."""
        return {
            symbol: next(at - after for at, live in seen if not live and at >= after)
            for symbol, seen in self.changes.items()
            if any(not live and at >= after for at, live in seen)
        }


class Reader:
    def __init__(self, url: str, mode: str, out: Path, symbols: list[str]) -> None:
        self.args = [url, mode, str(out), *symbols]
        self.out = out
        self.mode = mode
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.faults", "read", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the {self.mode} reader did not start: {line!r}")

    async def finish(self, timeout: float = 15.0) -> Reading | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if await stop_recorder(process, timeout) != 0:
            raise RuntimeError(f"the {self.mode} reader exited with {process.returncode}")
        raw = json.loads(self.out.read_text())
        changes = {k: [(float(t), bool(v)) for t, v in seen] for k, seen in raw["changes"].items()}
        return Reading(int(raw["polls"]), changes)


# ------------------------------------------------------------------------------------------ stall
async def _stall(ctx: Context, table: Table, repeats: int) -> None:
    server = ctx.redis()
    books = {"upbit": symbol_names("upbit", 5), "binance": symbol_names("binance", 5)}
    found: dict[str, list[float]] = {"binance": [], "upbit": []}
    stalls: list[tuple[str, float, float]] = []  # (exchange, time of the stall, time of the last frame)
    async with simulator(rate=10.0, binance_cadence=True) as sim:
        feeders = Feeders(server.url, sim, ctx.workdir / "stall")
        probe = FeederProbe(server.url)
        watcher = Watcher(server.url, ctx.workdir / "stall-watch.json")
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            await watcher.start()
            feeder = feeders.start("bench-stall", env=OWN_STALL_RULES, **books)
            await probe.wait_connected(feeder, 2, 30)
            layout = RedisLayout()

            async def all_live(exchange: str) -> bool:
                keys = [layout.book_key(exchange, s) for s in books[exchange]]
                values = [await client.hget(k, "live") for k in keys]
                up = int((await probe.status(feeder.feeder_id)).get("connections_up", 0))
                return all(v == b"1" for v in values) and up == 2

            async def replaced(reconnects: int) -> bool:  # the feeder saw the stall and reconnected
                return (await probe.counters(feeder.feeder_id))["reconnects"] > reconnects

            for _ in range(repeats):
                for exchange in ("binance", "upbit"):
                    await poll(partial(all_live, exchange), 20, f"{exchange} books not live again")
                    await asyncio.sleep(1.5)  # a full arrival history (the Upbit rule learns the rate)
                    srv = sim.server(exchange)
                    reconnects = (await probe.counters(feeder.feeder_id))["reconnects"]
                    newest = max(srv.sessions)
                    loop_now, wall_now = asyncio.get_running_loop().time(), time.time()
                    if await sim.stall(exchange, seconds=30, connection=newest) != 1:
                        table.check(False, f"{exchange}: the stall hit no connection")
                        continue
                    last_push = max(sub.last_push for sub in srv.sessions[newest].subs.values())
                    stalls.append((exchange, wall_now, wall_now - (loop_now - last_push)))
                    await poll(partial(replaced, reconnects), 20, f"{exchange}: the stall was not seen")
                    await poll(partial(all_live, exchange), 20, f"{exchange}: no recovery after the stall")
            messages = await watcher.finish()
        finally:
            await watcher.finish(5)
            await client.aclose()
            await probe.aclose()
            await feeders.astop_all()
    for exchange, stalled_at, last_frame in stalls:
        downs: dict[str, float] = {}
        for at, ex, symbol, live, _ in messages:
            if ex == exchange and not live and at >= stalled_at and symbol not in downs:
                downs[symbol] = at
        if set(downs) != set(books[exchange]):
            table.check(False, f"{exchange}: {len(downs)} of {len(books[exchange])} books reported down")
            continue
        found[exchange].append(max(downs.values()) - last_frame)
    for exchange, rule in (
        ("binance", "100 ms pushes; rule: 3 missed, at least 0.5 s"),
        ("upbit", "5 codes x 10/s; rule: 20 mean gaps, at least 1 s"),
    ):
        ms = [v * 1000 for v in found[exchange]]
        table.check(len(ms) == repeats, f"{exchange}: {len(ms)} of {repeats} stalls seen")
        goal = f"<= {STALL_GOAL_MS:g} ms" if exchange == "binance" else "~1 s (its floor)"
        met = "" if not ms else ("yes" if max(ms) <= STALL_GOAL_MS else "no")
        if exchange == "upbit":
            met = "" if not ms else ("yes" if max(ms) <= 1500 else "no")
        table.add(f"stall → not live: {exchange} ({rule})", len(ms), percentile(ms, 50),
                  max(ms, default=float("nan")), goal, met)  # fmt: skip


# ------------------------------------------------------------------------------------------ failover
async def _failover(ctx: Context, table: Table, pause: float) -> None:
    server = ctx.redis()
    books = {"upbit": symbol_names("upbit", 5), "binance": symbol_names("binance", 5)}
    symbols = books["upbit"] + books["binance"]
    events: list[tuple[str, float]] = []  # (what, when); each lasts until the next
    async with simulator(rate=2.0) as sim:  # quiet books: a dead writer's book is not soon rewritten
        feeders = Feeders(server.url, sim, ctx.workdir / "failover")
        probe = FeederProbe(server.url)
        readers = [
            Reader(server.url, mode, ctx.workdir / f"failover-{mode}.json", symbols)
            for mode in ("read-through", "mirror")
        ]
        env = {**FAILOVER_ENV, **OWN_STALL_RULES}
        try:

            async def start(feeder_id: str) -> tuple[FeederProcess, dict[str, list[int]]]:
                before = {x: set(sim.connection_ids(x)) for x in books}
                feeder = feeders.start(feeder_id, env=env, **books)
                await probe.wait_connected(feeder, 2, 30)
                return feeder, {x: sorted(set(sim.connection_ids(x)) - before[x]) for x in books}

            async def gone(feeder_id: str, state: str | None) -> None:
                async def done() -> bool:
                    status = await probe.status(feeder_id)
                    return status.get("state") == state if state else not status

                await poll(done, 10, f"feeder {feeder_id} still alive in Redis")

            a, _ = await start("bench-a")
            b, _ = await start("bench-b")
            for reader in readers:
                await reader.start()
            await asyncio.sleep(pause)

            events.append(("SIGKILL", time.time()))
            a.signal(signal.SIGKILL)
            await gone("bench-a", None)  # its heartbeat expired: only the twin vouches for the books
            await asyncio.sleep(pause)
            events.append(("restart under a new id", time.time()))
            a, _ = await start("bench-a2")
            await asyncio.sleep(pause)
            events.append(("clean stop", time.time()))
            await asyncio.to_thread(a.stop)
            await gone("bench-a2", "offline")
            await asyncio.sleep(pause)
            a, sessions = await start("bench-a3")
            await asyncio.sleep(pause)
            events.append(("lost upstream", time.time()))
            for exchange, ids in sessions.items():
                for connection in ids:
                    await sim.drop(exchange, connection=connection)
            await poll(
                lambda: _reconnected(probe, "bench-a3", 2), 20, "bench-a3 did not reconnect after the drop"
            )
            await asyncio.sleep(pause)
            events.append(("SIGKILL of the other", time.time()))
            b.signal(signal.SIGKILL)
            await gone("bench-b", None)
            await asyncio.sleep(pause)
            events.append(("reference", time.time()))
            a.signal(signal.SIGKILL)
            await gone("bench-a3", None)
            await asyncio.sleep(pause)
            end = time.time()
            readings = [await reader.finish() for reader in readers]
        finally:
            for reader in readers:
                await reader.finish(5)
            await probe.aclose()
            await feeders.astop_all()
    bounds = [t for _, t in events[1:]] + [end]
    for (what, start_at), until in zip(events, bounds, strict=True):
        if what == "reference":
            downs = [r.went_down(start_at) for r in readings if r is not None]
            ms = [v * 1000 for d in downs for v in d.values()]
            seen = all(set(d) == set(symbols) for d in downs)
            table.check(seen, "reference: the readers did not see the books go down: they cannot see a gap")
            table.add("reference: sole feeder SIGKILLed → not live (heartbeat TTL 1 s)", len(ms),
                      percentile(ms, 50), max(ms, default=float("nan")), "~1000 ms", "")  # fmt: skip
            continue
        gaps = [r.longest_gap(start_at, until) for r in readings if r is not None]
        worst = max(g for g, _ in gaps) * 1000
        # not a speed goal: a book a live, connected feeder holds must never read as not live
        table.check(worst == 0, f"failover ({what}): {max(gaps)[1]} not live for {worst:.0f} ms")
        table.add(f"redundant failover gap: {what}", len(readings), worst, worst, "0",
                  "yes" if worst == 0 else "no")  # fmt: skip
    polls = sum(r.polls for r in readings if r is not None)
    table.note(f"failover: {polls:,} reads by the readers, every 10 ms, of {len(symbols)} books")


async def _reconnected(probe: FeederProbe, feeder_id: str, connections: int) -> bool:
    counters = await probe.counters(feeder_id)
    return counters["reconnects"] >= connections and counters["connections_up"] == connections


def run(ctx: Context) -> list[Table]:
    table = Table(
        "faults",
        "Faults: stall → not live (ms from the last frame); redundant failover gap (ms a book held by a "
        "surviving feeder was not live)",
        ["case", "n", "p50 ms", "max ms", "goal", "met"],
    )
    asyncio.run(_stall(ctx, table, 2 if ctx.quick else 5))
    asyncio.run(_failover(ctx, table, 0.5 if ctx.quick else 1.5))
    table.note(
        "stall: the simulator stalls the feeder's newest connection of the exchange (sends nothing, answers no "
        "ping); measured from its last frame to the last live:false message of the connection's books. "
        "failover: the readers' longest not-live time of any book while one feeder of the pair fails and the "
        "other runs (read-through and mirror, the worse of the two); 'met' means not a single 10 ms read "
        "saw the book not live. n: stalls; readers (failover); books (reference)"
    )
    return [table]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "read":
        sys.exit(read_main(sys.argv[2:]))
    print("usage: python -m bench.faults read REDIS_URL MODE OUT.json SYMBOL...", file=sys.stderr)
    sys.exit(2)
