"""Shared helpers of the end-to-end benchmarks (e2e, latency, reconnect, scale).

- `simulator`: the exchange simulator in this process (started and always stopped), with what the benchmarks
  read from it: frames queued and sent, and the backlog still waiting in its outboxes.
- `FeederProcess`: ``python -m feeder`` as a subprocess with ``MD_*`` settings, its log kept in the run's
  scratch directory; `stop` always ends it (SIGTERM, then SIGKILL at a deadline).
- `cpu_seconds`, `rss_mb`, `CpuMeter`: a process's CPU time (utime + stime from ``/proc/<pid>/stat``) and
  resident memory (``/proc/<pid>/status``), without psutil.
- `poll`: every wait is a poll with a deadline.
- `FeederProbe`: reads a feeder's status hash (``md:feeder:<id>``), waiting for a fresh heartbeat so that its
  counters belong to a known moment.
- `mismatched_books`: the books in Redis that differ from what the simulator last sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

from client import RedisMarketDataProvider
from client.layout import RedisLayout
from exchange_sim import ExchangeSimulator, same_book
from launch.child import ChildProcess, clean_environment, feeder_command

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Settings of every benchmark feeder: quick heartbeats so that status counters are fresh, no summary noise.
# Pings stay at their defaults (5 s): a loaded feeder answers late, and a pong timeout would cut the
# connection in the middle of a throughput measurement.
BENCH_ENV = {
    # the stall watchdog is not what these benchmarks measure: a quiet phase (the truth check freezes the
    # simulator) must not mark books down; the stall benchmark sets its own
    "MD_SILENCE_TIMEOUT": "3600",
    "MD_HEARTBEAT_INTERVAL": "0.1",
    "MD_HEARTBEAT_TTL": "5",
    "MD_RECONNECT_MAX_DELAY": "1",
    "MD_SUMMARY_INTERVAL": "3600",
    "MD_LOG_LEVEL": "INFO",
}


# ------------------------------------------------------------------------------------------ /proc readers
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_kb(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return float("nan")


def rss_mb(pid: int) -> float:
    """Resident set size now, MB (VmRSS)."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Highest resident set size so far, MB (VmHWM)."""
    return _status_kb(pid, "VmHWM") / 1024


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _process_table() -> dict[int, tuple[int, float]]:
    """Every process now: pid -> (parent pid, CPU seconds so far)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


class OtherLoad:
    """CPU used by every process outside this one's own tree (the machine's other users) between `start`
    and `cores`: sampled at both ends, so a process that lives through the window is measured exactly and
    one that starts or ends inside it only in part (the figure is a floor)."""

    def __init__(self) -> None:
        self._wall = 0.0
        self._before: dict[int, float] = {}

    def _others(self) -> dict[int, float]:
        table = _process_table()
        ours = {os.getpid()}
        changed = True
        while changed:  # descendants, whatever their depth
            changed = False
            for pid, (parent, _) in table.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return {pid: cpu for pid, (_, cpu) in table.items() if pid not in ours}

    def start(self) -> None:
        self._wall = time.monotonic()
        self._before = self._others()

    def cores(self) -> float:
        """Cores the others used on average since `start`."""
        wall = time.monotonic() - self._wall
        after = self._others()
        used = sum(cpu - self._before.get(pid, 0.0) for pid, cpu in after.items())
        return max(0.0, used) / wall if wall > 0 else 0.0


class CpuMeter:
    """CPU used by named processes between `start` and `read`, and by the whole machine (``"machine"``)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._wall = 0.0
        self._cpu: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["machine"] = machine_busy_seconds()
        return now

    def start(self) -> None:
        self._wall = time.monotonic()
        self._cpu = self._now()

    def read(self) -> tuple[float, dict[str, float]]:
        """(wall seconds, {name: CPU seconds}) since `start`; ``"other"`` is the machine minus the named ones."""
        wall = time.monotonic() - self._wall
        now = self._now()
        used = {name: now[name] - self._cpu[name] for name in now}
        used["other"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine"))
        return wall, used


async def quiet_machine(
    max_busy: float = 0.3, timeout: float = 60.0, window: float = 1.0, exclude: Iterable[int] = ()
) -> float:
    """Wait (up to `timeout`) until the machine, apart from the `exclude` pids (the benchmark's own processes,
    this one always), is busy less than `max_busy` cores over `window` seconds.

    The cores are shared with whatever else runs on the machine; a measurement started while another job
    holds a core says more about that job than about the feeder. Returns the busy cores last seen (the
    caller reports it when the machine never became quiet). A `timeout` of 0 does not wait (quick runs).
    """
    if timeout <= 0:
        return 0.0
    meter = CpuMeter({str(pid): pid for pid in {os.getpid(), *exclude}})
    deadline = time.monotonic() + timeout
    while True:
        meter.start()
        await asyncio.sleep(window)
        wall, used = meter.read()
        busy = used["other"] / wall
        if busy <= max_busy or time.monotonic() > deadline:
            return busy


# ------------------------------------------------------------------------------------------ waiting
async def poll(
    check: Callable[[], Awaitable[bool]], timeout: float, message: str, interval: float = 0.02
) -> float:
    """Await `check()` until it is true; the seconds it took. TimeoutError naming `message` at the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{message} (not within {timeout:g}s)")
        await asyncio.sleep(interval)
    return time.monotonic() - start


# ------------------------------------------------------------------------------------------ simulator
@contextlib.asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[ExchangeSimulator]:
    """An `ExchangeSimulator` in this process on free ports; stopped (every task, every connection) on exit.

    Benchmark defaults: no Binance server pings, a deep outbox (a feeder that falls behind shows up as a
    growing backlog instead of being dropped as a slow consumer in the middle of a measurement).
    """
    # no unchanged-book pushes: the offered rate is what the benchmark sets, nothing more
    options: dict[str, Any] = {
        "ping_interval": None,
        "max_outbox": 2_000_000,
        "seed": 1,
        "binance_cadence": False,
    }
    options.update(kwargs)
    sim = ExchangeSimulator(**options)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def sim_frames(sim: ExchangeSimulator) -> int:
    """Book frames the simulator queued so far (all exchanges)."""
    return sum(server.counters["book_frames"] for server in sim.servers.values())


def sim_backlog(sim: ExchangeSimulator) -> int:
    """Frames queued in the simulator's outboxes, not yet handed to the sockets."""
    return sum(len(s.outbox) for server in sim.servers.values() for s in server.sessions.values())


def symbol_names(exchange: str, n: int, start: int = 0) -> list[str]:
    """``n`` made-up symbols the simulator generates books for: ``KRW-B0001…`` or ``B0001USDT…``."""
    if exchange == "upbit":
        return [f"KRW-B{i:04d}" for i in range(start, start + n)]
    return [f"B{i:04d}USDT" for i in range(start, start + n)]


# ------------------------------------------------------------------------------------------ feeders
class FeederProcess(ChildProcess):
    """``python -m feeder`` as a subprocess, pointed at the simulator and the run's Redis."""

    def __init__(
        self,
        *,
        redis_url: str,
        sim: ExchangeSimulator,
        feeder_id: str,
        log_dir: Path,
        upbit: Iterable[str] = (),
        binance: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        upbit, binance = list(upbit), list(binance)
        self.feeder_id = feeder_id
        self.symbols = {"upbit": upbit, "binance": binance}
        settings = {
            "MD_REDIS_URL": redis_url,
            "MD_FEEDER_ID": feeder_id,
            "MD_EXCHANGES": ",".join(x for x, s in (("upbit", upbit), ("binance", binance)) if s),
            "MD_UPBIT_SYMBOLS": ",".join(upbit),
            "MD_BINANCE_SYMBOLS": ",".join(binance),
        }
        if "upbit" in sim.servers:
            settings["MD_UPBIT_URL"] = sim.upbit_url
        if "binance" in sim.servers:
            settings["MD_BINANCE_URL"] = sim.binance_url
        log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            feeder_command(),
            log_dir / f"feeder-{feeder_id}.log",
            env=clean_environment({**BENCH_ENV, **settings, **(env or {})}),
            cwd=log_dir,  # no stray .env from the repository
        )


class Feeders:
    """The feeder processes of one benchmark; `stop_all` in a ``finally`` ends every one of them."""

    def __init__(self, redis_url: str, sim: ExchangeSimulator, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.sim = sim
        self.log_dir = log_dir
        self.started: list[FeederProcess] = []

    def start(
        self,
        feeder_id: str,
        *,
        upbit: Iterable[str] = (),
        binance: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> FeederProcess:
        feeder = FeederProcess(
            redis_url=self.redis_url,
            sim=self.sim,
            feeder_id=feeder_id,
            log_dir=self.log_dir,
            upbit=upbit,
            binance=binance,
            env=env,
        )
        self.started.append(feeder)
        return feeder

    def stop_all(self) -> None:
        for feeder in self.started:
            feeder.stop()
        self.started.clear()

    # SIGTERM waits block the event loop for at most a few seconds: run them in a thread so that the
    # simulator keeps serving the feeders' closing handshakes meanwhile.
    async def astop_all(self) -> None:
        await asyncio.to_thread(self.stop_all)


@dataclass
class FeederSample:
    """A feeder's counters at its heartbeat time, with the simulator's frame count read right after it."""

    heartbeat: float  # epoch seconds, from the status hash
    counters: dict[str, int]
    sim_frames: int
    cpu: float  # CPU seconds of the feeder process when the sample was taken


COUNTERS = ("msgs_in", "books_in", "written", "coalesced", "rejected", "bad", "reconnects", "connections_up")


class FeederProbe:
    """Reads ``md:feeder:<id>`` (refreshed by every heartbeat) through its own Redis connection."""

    def __init__(self, redis_url: str, prefix: str = "md", client: Any = None) -> None:
        """`client`: a client of one's own (a Cluster's), closed by `aclose` like the one built from the URL."""
        self.client = client or redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        self.prefix = prefix

    async def aclose(self) -> None:
        await self.client.aclose()

    async def status(self, feeder_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(RedisLayout(self.prefix).feeder_key(feeder_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def counters(self, feeder_id: str) -> dict[str, int]:
        status = await self.status(feeder_id)
        return {name: int(status.get(name, 0)) for name in COUNTERS}

    async def sample(
        self, feeder: FeederProcess, sim: ExchangeSimulator, timeout: float = 5.0
    ) -> FeederSample:
        """Wait for the next heartbeat, then read the counters, the simulator's frames and the feeder's CPU."""
        first = (await self.status(feeder.feeder_id)).get("heartbeat")
        status: dict[str, str] = {}

        async def fresh() -> bool:
            nonlocal status
            status = await self.status(feeder.feeder_id)
            return bool(status) and status.get("heartbeat") != first

        await poll(fresh, timeout, f"no heartbeat from feeder {feeder.feeder_id}", interval=0.005)
        return FeederSample(
            heartbeat=float(status["heartbeat"]),
            counters={name: int(status.get(name, 0)) for name in COUNTERS},
            sim_frames=sim_frames(sim),
            cpu=cpu_seconds(feeder.pid),
        )

    async def wait_connected(self, feeder: FeederProcess, connections: int, timeout: float) -> None:
        async def up() -> bool:
            if not feeder.alive():
                raise RuntimeError(f"feeder {feeder.feeder_id} exited\n{feeder.log_tail()}")
            status = await self.status(feeder.feeder_id)
            return int(status.get("connections_up", 0)) >= connections

        try:
            await poll(up, timeout, f"feeder {feeder.feeder_id}: {connections} connections not up")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{feeder.log_tail()}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ------------------------------------------------------------------------------------------ truth check
async def mismatched_books(
    provider: RedisMarketDataProvider, sim: ExchangeSimulator, books: Iterable[tuple[str, str]]
) -> list[str]:
    """The ``exchange:symbol`` books whose live Redis copy differs from the simulator's `last_sent`."""
    truth = sim.last_sent
    by_exchange: dict[str, list[str]] = {}
    for exchange, symbol in books:
        by_exchange.setdefault(exchange, []).append(symbol)
    bad: list[str] = []
    for exchange, symbols in by_exchange.items():
        stored = await provider.aget_latest_snapshots(symbols, exchange=exchange)
        for symbol in symbols:
            expected = truth.get((exchange, symbol))
            if expected is None or not same_book(stored.get(symbol), expected):
                bad.append(f"{exchange}:{symbol}")
    return bad


async def wait_for_truth(
    provider: RedisMarketDataProvider,
    sim: ExchangeSimulator,
    books: list[tuple[str, str]],
    timeout: float,
) -> list[str]:
    """Freeze the simulator, wait until Redis holds exactly what it sent last; the books that never did."""
    sim.set_rate(0.0)
    bad: list[str] = []

    async def equal() -> bool:
        nonlocal bad
        bad = await mismatched_books(provider, sim, books)
        return not bad

    with contextlib.suppress(TimeoutError):
        await poll(equal, timeout, "Redis books differ from the simulator's last frames", interval=0.1)
    return bad


async def stop_recorder(process: asyncio.subprocess.Process, timeout: float = 15.0) -> int:
    """Ask a recording subprocess to finish (a "stop" line on stdin), kill it at the deadline; its exit code."""
    try:
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.write(b"stop\n")
                await process.stdin.drain()
        async with asyncio.timeout(timeout):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode if process.returncode is not None else -1


def psubscribe_books(pubsub: Any, timeout: float = 10.0) -> None:
    """PSUBSCRIBE every Upbit and Binance book channel and wait until Redis confirmed both patterns."""
    pubsub.psubscribe("md:upbit:*", "md:binance:*")
    confirmed = 0
    deadline = time.monotonic() + timeout
    while confirmed < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "psubscribe":
            confirmed += 1
