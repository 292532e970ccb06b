"""``make chaos`` (``python -m launch.chaos``): faults of every kind while engines read, and the promise checked.

A private redis-server, the exchange simulator (in this process), a redundant pair of feeders on the same
symbols, and engine processes reading in read-through and mirror mode. For the run's duration the simulator
drops, stalls, garbles and errors connections and announces shutdowns, while Redis is killed and restarted
empty or paused (SIGSTOP), and a feeder of the pair is SIGKILLed and restarted. Then the faults stop.

What is checked, from what every engine reports of each live book it was served and what the simulator sent:

- no engine was served as live a book older than `--bound` seconds (the simulator had sent a newer one that
  long before);
- per engine and key, the ordering id never went backwards within one Redis epoch;
- within 2 s after the faults stop, every book in Redis equals the simulator's last one;
- every feeder's memory stayed flat; no process printed a traceback.

A summary goes to stdout (faults by kind, recovery after each, violations); the exit status is 1 when any
invariant was violated. The run stops every process it started, by PID, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions

from client import ClientSettings, MarketDataError, RedisMarketDataProvider, load_settings
from client.layout import RedisLayout, feeder_record_flow
from client.transport import arun_flow
from exchange_sim import ExchangeSimulator, same_book
from launch.child import ChildProcess, clean_environment, feeder_command
from launch.redis_server import LocalRedisServer

UPBIT = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-USDT"]
BINANCE = ["BTCUSDT", "ETHUSDT", "XRPUSDT", "SOLUSDT", "BNBUSDT"]
FEEDER_ENV = {
    "MD_HEARTBEAT_INTERVAL": "0.2",
    "MD_HEARTBEAT_TTL": "1.0",
    "MD_RECONNECT_MAX_DELAY": "0.5",
    "MD_PING_INTERVAL": "2",
    "MD_PING_TIMEOUT": "2",
    "MD_SUMMARY_INTERVAL": "3600",
    "MD_REDIS_TIMEOUT": "1",
}
ENGINE_MODES = ("read-through", "mirror", "read-through", "mirror")
LAYOUT = RedisLayout()


# --------------------------------------------------------------------------------------------- engines
def engine(url: str, mode: str) -> int:
    """An engine process: reads every book ~20 times a second, prints ``t key xid`` for each live one."""
    provider = RedisMarketDataProvider.from_url(url, mode=mode)  # MD_REDIS_TIMEOUT=1 from the environment
    out = sys.stdout
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with provider:
        print("ready", flush=True)
        while not stop:
            for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
                try:
                    books = provider.get_latest_snapshots(symbols, exchange=exchange)
                except MarketDataError as exc:  # expected while Redis is down: the promise's "None"
                    print(f"error {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    continue
                except Exception as exc:  # not ours: the checker counts it as a violation
                    print(f"unexpected error {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    continue
                now = time.time()
                for symbol, book in books.items():
                    if book is not None:
                        out.write(f"{now:.3f} {exchange}:{symbol} {book.xid}\n")
            out.flush()
            time.sleep(0.05)
    return 0


# --------------------------------------------------------------------------------------------- the run
@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0
    recovered: float | None = None  # seconds from the end of the fault until every book was live again
    seen: bool = False  # its effect was observed (the fault really happened)


@dataclass
class Run:
    seconds: float
    bound: float
    seed: int
    workdir: Path
    faults: list[Fault] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)  # times Redis came back empty
    history: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    rss: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    violations: list[str] = field(default_factory=list)
    settle: float | None = None


class Chaos:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.rng = random.Random(run.seed)
        self.redis = LocalRedisServer()
        self.sim = ExchangeSimulator(rate=10.0, ping_interval=1.0, seed=run.seed)
        self.feeders: dict[str, ChildProcess] = {}
        self.engines: list[subprocess.Popen[str]] = []
        self.retired: list[ChildProcess] = []

    # ------------------------------------------------------------------------------------------ processes
    def start_feeder(self, feeder_id: str) -> None:
        env = clean_environment(
            {
                **FEEDER_ENV,
                "MD_REDIS_URL": self.redis.url,
                "MD_FEEDER_ID": feeder_id,
                "MD_UPBIT_URL": self.sim.upbit_url,
                "MD_BINANCE_URL": self.sim.binance_url,
                "MD_UPBIT_SYMBOLS": ",".join(UPBIT),
                "MD_BINANCE_SYMBOLS": ",".join(BINANCE),
                "MD_SIMULATED": "true",
            }
        )
        log = self.run.workdir / f"{feeder_id}-{len(self.retired)}.log"
        self.feeders[feeder_id] = ChildProcess(feeder_command(), log, env=env, cwd=self.run.workdir)

    def start_engines(self) -> None:
        for i, mode in enumerate(ENGINE_MODES):
            err = (self.run.workdir / f"engine-{i}.err").open("w")
            self.engines.append(
                subprocess.Popen(
                    [sys.executable, "-m", "launch.chaos", "--engine", mode, "--redis-url", self.redis.url],
                    stdout=(self.run.workdir / f"engine-{i}.out").open("w"),
                    stderr=err,
                    env=clean_environment({"MD_REDIS_TIMEOUT": "1"}),
                    cwd=self.run.workdir,
                    text=True,
                )
            )

    def stop_all(self) -> None:
        for process in self.engines:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.engines:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for feeder in [*self.feeders.values(), *self.retired]:
            feeder.stop(grace=5.0)
        self.redis.cleanup()

    # ------------------------------------------------------------------------------------------ observing
    async def record_truth(self) -> None:
        """What the simulator sent, as (time first seen, xid) per book, every 20 ms."""
        last: dict[str, int] = {}
        while True:
            now = time.time()
            for (exchange, symbol), book in self.sim.last_sent.items():
                key = f"{exchange}:{symbol}"
                if book.xid is not None and last.get(key) != book.xid:
                    last[key] = book.xid
                    self.run.history[key].append((now, book.xid))
            await asyncio.sleep(0.02)

    async def record_rss(self) -> None:
        while True:
            for feeder in self.feeders.values():
                if feeder.alive():
                    try:
                        rss = _rss_mb(feeder.pid)
                    except OSError:
                        continue
                    self.run.rss[feeder.pid].append(rss)
            await asyncio.sleep(1.0)

    async def all_live(self, provider: RedisMarketDataProvider) -> bool:
        for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
            try:
                books = await provider.aget_latest_snapshots(symbols, exchange=exchange)
            except Exception:
                return False
            if any(b is None for b in books.values()):
                return False
        return True

    # ------------------------------------------------------------------------------------------ faults
    async def counters(self, name: str) -> int:
        """A counter summed over the feeders' records (0 while Redis does not answer)."""
        client = redis.asyncio.Redis.from_url(self.redis.url, socket_timeout=0.5)
        try:
            records = [await arun_flow(client, feeder_record_flow(LAYOUT, f)) for f in self.feeders]
            return sum(int(r.get(name, 0)) for r in records if r is not None)
        except (redis.exceptions.RedisError, OSError):
            return 0
        finally:
            await client.aclose()

    async def answers(self) -> bool:
        client = redis.asyncio.Redis.from_url(self.redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        try:
            return bool(await client.ping())
        except (redis.exceptions.RedisError, OSError):
            return False
        finally:
            await client.aclose()

    async def fault(self, kind: str, provider: RedisMarketDataProvider) -> bool:
        """Inject one fault; True when its effect was observed (the fault really happened)."""
        sim, redis_server = self.sim, self.redis
        exchange = self.rng.choice(["upbit", "binance"])
        if kind == "drop":
            opened = sim.counters(exchange)["connections_opened"]
            await sim.drop(exchange)
            return await _within(3, lambda: _true(sim.counters(exchange)["connections_opened"] > opened))
        if kind == "stall":
            # the feeders see it within ~1 s and replace the connection at once (the books are down only
            # until the replacement delivers): the effect is their reconnect
            before = await self.counters("reconnects")
            started = time.monotonic()
            await sim.stall(exchange, seconds=2.0)
            seen = await _within(3, lambda: self._grew("reconnects", before))
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
            return seen
        if kind in ("garbage", "error", "shutdown"):
            counter = {"garbage": "bad", "error": "exchange_errors", "shutdown": "rotations"}[kind]
            before = await self.counters(counter)
            if kind == "garbage":
                await sim.send_garbage(exchange)
            elif kind == "error":
                await sim.send_error("binance", code=2, message="Invalid request: chaos")
            else:
                await sim.announce_shutdown("binance")
            return await _within(3, lambda: self._grew(counter, before))
        if kind == "redis-restart-empty":
            await asyncio.to_thread(redis_server.kill)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(redis_server.start)
            self.run.epochs.append(time.time())
            return True  # a new process: nothing survived (no persistence)
        if kind == "redis-pause":
            assert redis_server.process is not None
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                paused = not await self.answers()
                await asyncio.sleep(1.5)
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            return paused
        if kind == "feeder-kill":
            feeder_id = self.rng.choice(sorted(self.feeders))
            victim = self.feeders.pop(feeder_id)
            victim.signal(signal.SIGKILL)
            code = await asyncio.to_thread(victim.wait, 5)
            self.retired.append(victim)
            await asyncio.sleep(1.0)
            self.start_feeder(feeder_id)
            return code == -signal.SIGKILL
        raise ValueError(kind)  # pragma: no cover - the list in `main` is the whole vocabulary

    async def _grew(self, counter: str, before: int) -> bool:
        return await self.counters(counter) > before

    async def main(self) -> None:
        run = self.run
        self.redis.start()
        await self.sim.start()
        observers = [asyncio.create_task(self.record_truth()), asyncio.create_task(self.record_rss())]
        settings = load_settings(ClientSettings, redis_url=self.redis.url, redis_timeout=1.0)
        provider = RedisMarketDataProvider(settings=settings)
        try:
            for feeder_id in ("chaos-a", "chaos-b"):
                self.start_feeder(feeder_id)
            await poll(lambda: self.all_live(provider), 30, "the books did not come up")
            self.start_engines()
            await asyncio.sleep(2.0)
            kinds = ["drop", "stall", "garbage", "error", "shutdown", "redis-restart-empty", "redis-pause",
                     "feeder-kill"]  # fmt: skip
            deadline = time.monotonic() + run.seconds
            while time.monotonic() < deadline:
                self.rng.shuffle(kinds)
                for kind in kinds:
                    if time.monotonic() >= deadline:
                        break
                    fault = Fault(kind, time.time())
                    fault.seen = await self.fault(kind, provider)
                    fault.end = time.time()
                    if not fault.seen:
                        run.violations.append(
                            f"{kind}: its effect was not observed (was the fault injected?)"
                        )
                    try:
                        took = await poll(lambda: self.all_live(provider), 15, "")
                        fault.recovered = took
                    except TimeoutError:
                        run.violations.append(f"{kind}: books not all live 15 s after the fault ended")
                    run.faults.append(fault)
                    await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            faults_stopped = time.time()
            self.sim.set_rate(0.0)  # settle: the last books sent are the truth
            await self.check_settled(provider, faults_stopped)
            await asyncio.sleep(0.5)
        finally:
            for task in observers:
                task.cancel()
            await asyncio.gather(*observers, return_exceptions=True)
            await provider.astop()
            await asyncio.to_thread(self.stop_all)
            await self.sim.stop()

    async def check_settled(self, provider: RedisMarketDataProvider, since: float) -> None:
        truth = self.sim.last_sent

        async def equal() -> bool:
            for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
                books = await provider.aget_latest_snapshots(symbols, exchange=exchange)
                if not all(same_book(books[s], truth.get((exchange, s))) for s in symbols):
                    return False
            return True

        try:
            await poll(equal, 10, "")
            self.run.settle = time.time() - since
            if self.run.settle > 2.0:
                self.run.violations.append(
                    f"books equal to the last sent only {self.run.settle:.2f}s after the faults"
                )
        except TimeoutError:
            self.run.violations.append(
                "books never equal to the simulator's last ones after the faults stopped"
            )


async def _true(value: bool) -> bool:
    return value


async def _within(timeout: float, check: Callable[[], Awaitable[bool]]) -> bool:
    try:
        await poll(check, timeout, "")
    except TimeoutError:
        return False
    return True


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, message: str) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(message)
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------------------------- the check
def check(run: Run) -> dict[str, Any]:
    """Check every engine's samples against the simulator's history; returns the summary."""
    samples = 0
    by_kind: Counter[str] = Counter()
    examples: dict[str, str] = {}

    def violate(kind: str, text: str) -> None:
        by_kind[kind] += 1
        examples.setdefault(kind, text)

    worst_age = 0.0  # the oldest a book served as live was: time since a newer one had been sent
    xids = {key: [x for _, x in h] for key, h in run.history.items()}
    epochs = sorted(run.epochs)
    for out in sorted(run.workdir.glob("engine-*.out")):
        last: dict[str, tuple[int, int]] = {}  # key -> (epoch, xid)
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[0] == "ready":
                continue
            t, key, xid = float(parts[0]), parts[1], int(parts[2])
            samples += 1
            history = run.history.get(key, [])
            # the first book newer than this one (the simulator's ids only grow), if sent before the read
            newer = bisect.bisect_right(xids.get(key, []), xid)
            if newer < len(history) and history[newer][0] <= t:
                age = t - history[newer][0]
                worst_age = max(worst_age, age)
                if age > run.bound:
                    violate(
                        "stale book served as live",
                        f"{out.name}: {key} xid {xid} at {t:.3f}, {history[newer][1]} sent {age:.2f}s before",
                    )
            epoch = bisect.bisect_right(epochs, t)
            seen = last.get(key)
            if seen is not None and seen[0] == epoch and xid < seen[1]:
                violate("xid went backwards", f"{out.name}: {key} {seen[1]} -> {xid} at {t:.3f}")
            last[key] = (epoch, xid)
    for err in sorted(run.workdir.glob("*.err")) + sorted(run.workdir.glob("*.log")):
        text = err.read_text(errors="replace")
        if "Traceback" in text:
            violate("traceback", err.name)
        for line in text.splitlines():
            if line.startswith("unexpected error"):
                violate("error not a MarketDataError", f"{err.name}: {line}")
    for pid, series in run.rss.items():
        if len(series) >= 3 and max(series[2:]) > series[1] * 1.5 + 30:
            violate("feeder memory grew", f"pid {pid}: {series[1]:.0f} -> {max(series):.0f} MB")
    for text in run.violations:
        violate("recovery", text)
    recovery: dict[str, list[float]] = defaultdict(list)
    for fault in run.faults:
        if fault.recovered is not None:
            recovery[fault.kind].append(fault.recovered)
    return {
        "seconds": run.seconds,
        "bound": run.bound,
        "samples": samples,
        "worst_live_age_s": round(worst_age, 3),
        "faults": dict(Counter(f.kind for f in run.faults)),
        "faults_observed": sum(1 for f in run.faults if f.seen),
        "recovery_p50_max": {
            k: [round(statistics.median(v), 3), round(max(v), 3)] for k, v in sorted(recovery.items())
        },
        "settled_after_faults_s": None if run.settle is None else round(run.settle, 3),
        "violations": dict(by_kind),
        "examples": examples,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"chaos: {summary['seconds']:g} s of faults, {summary['samples']} live reads checked "
          f"(bound {summary['bound']:g} s)")  # fmt: skip
    print(f"the oldest book served as live: {summary['worst_live_age_s']:.3f} s behind the exchange")
    print("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["faults"].items())))
    print(f"  effect observed for {summary['faults_observed']} of {sum(summary['faults'].values())}")
    for kind, (p50, worst) in summary["recovery_p50_max"].items():
        print(f"  recovery after {kind}: p50 {p50:.3f} s, max {worst:.3f} s")
    print(
        f"books equal to the simulator's last {summary['settled_after_faults_s']} s after the faults stopped"
    )
    violations = summary["violations"]
    print(f"violations: {sum(violations.values())}")
    for kind, count in violations.items():
        print(f"  {kind}: {count} (e.g. {summary['examples'][kind]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long faults are injected")
    parser.add_argument("--bound", type=float, default=3.0, help="the oldest a live book may be (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--engine", choices=["read-through", "mirror"], help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:
        return engine(args.redis_url, args.engine)
    run = Run(args.seconds, args.bound, args.seed, Path(tempfile.mkdtemp(prefix="md-chaos-")))
    asyncio.run(Chaos(run).main())
    summary = check(run)
    summary["logs"] = str(run.workdir)
    print_summary(summary)
    print(f"logs in {run.workdir}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
