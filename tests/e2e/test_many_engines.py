"""Many engines, one feed: a simulator-driven feeder and nine engine processes on one real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from support.feeder_process import FeederProcess

from bench.rig import sim_backlog, sim_frames
from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.redis_server import LocalRedisServer as RedisServer

pytestmark = pytest.mark.e2e

ENGINE = str(Path(__file__).resolve().parents[1] / "support" / "engine_process.py")
UPBIT = [f"KRW-E{i:02d}" for i in range(10)]
BINANCE = [f"E{i:02d}USDT" for i in range(10)]
SYMBOLS = UPBIT + BINANCE
MODES = ["sync", "sync", "sync", "mirror", "mirror", "mirror", "async", "async-mirror", "events"]


def start_engine(url: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, ENGINE, url, mode, *SYMBOLS],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def feeder_count(client: redis.Redis, field: str) -> int:
    """One of the feeder's counters as of its last heartbeat (every 0.2 s here): books_in, reconnects, …"""
    return int(client.hget("md:feeder:many-engines", field) or 0)


def feeder_books(client: redis.Redis) -> int:
    """Book frames the feeder has read: new ones plus Binance's unchanged pushes (its 100 ms cadence)."""
    return feeder_count(client, "books_in") + feeder_count(client, "repeats")


def redis_seqs(client: redis.Redis) -> dict[str, int]:
    return {s: int(client.hget(f"md:{'upbit' if '-' in s else 'binance'}:{s}", "seq") or 0) for s in SYMBOLS}


async def test_nine_engines_see_monotonic_seqs_and_end_equal_to_redis(
    fresh_redis_server: RedisServer,
) -> None:
    url = fresh_redis_server.url
    client = redis.Redis.from_url(url)
    async with ExchangeSimulator(rate=20.0) as sim:
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": url,
                "MD_UPBIT_URL": sim.upbit_url,
                "MD_BINANCE_URL": sim.binance_url,
                "MD_UPBIT_SYMBOLS": ",".join(UPBIT),
                "MD_BINANCE_SYMBOLS": ",".join(BINANCE),
                "MD_FEEDER_ID": "many-engines",
                # the test freezes the simulator to compare views: to Upbit's adaptive rule a busy connection
                # gone silent is stalled, and its reconnect writes a new version after Redis "settled"
                "MD_SILENCE_TIMEOUT": "3600",
                # nine engines polling in tight loops load two cores fully: with the fast test timings (pong
                # within 0.3 s, heartbeat TTL 1 s) a starved feeder reconnects, and the reconnect's snapshot
                # is a new version written after Redis "settled". This test is about reads, not faults.
                "MD_PING_INTERVAL": "5",
                "MD_PING_TIMEOUT": "30",
                "MD_HEARTBEAT_TTL": "10",
            }
        )
        engines = [start_engine(url, mode) for mode in MODES]
        try:
            for engine in engines:  # each prints "ready" once it has seen every book
                line = await asyncio.wait_for(asyncio.to_thread(engine.stdout.readline), 60)  # type: ignore[union-attr]
                assert line.strip() == "ready", line + engine.stderr.read()  # type: ignore[union-attr]
            await asyncio.sleep(2.0)  # the load phase: 20 symbols x 20 updates/s while nine engines read
            sim.set_rate(0.0)
            # drained: every frame sent has left the simulator and been read by the feeder (under load a
            # frame can be in flight for longer than the settle interval below)
            deadline = time.monotonic() + 30
            while sim_backlog(sim) or feeder_books(client) < sim_frames(sim):
                assert time.monotonic() < deadline, "the feeder did not read every frame sent"
                await asyncio.sleep(0.05)
            # settle: Redis stops changing once the feeder has written the last frames
            previous = None
            deadline = time.monotonic() + 10
            while (current := redis_seqs(client)) != previous:
                assert time.monotonic() < deadline, "Redis did not settle"
                previous = current
                await asyncio.sleep(0.3)
            views = []
            for engine in engines:
                out, err = await asyncio.to_thread(
                    engine.communicate, "final " + json.dumps(current) + "\n", 60
                )
                assert engine.returncode == 0, out + err
                views.append(json.loads(out.strip().splitlines()[-1]))
            # a reconnect or rotation rewrites books after the settle: the comparison below would be void
            assert feeder_count(client, "reconnects") == 0 and feeder_count(client, "rotations") == 0
        finally:
            for engine in engines:
                if engine.poll() is None:
                    engine.kill()
                    engine.wait()
            feeder.cleanup()
    with RedisMarketDataProvider(redis=client) as truth:  # the feeder is offline now: read books regardless
        expected = {
            s: book
            for s, (_, book) in zip(SYMBOLS, truth.inspect_books([(None, s) for s in SYMBOLS]), strict=False)
        }
    for mode, view in zip(MODES, views, strict=True):
        assert view["reads"] > 10, mode
        for symbol in SYMBOLS:
            got, want = view["books"][symbol], expected[symbol]
            assert want is not None
            assert got["seq"] == want.seq, (mode, symbol)
            assert [tuple(x) for x in got["bids"]] == want.bids and [
                tuple(x) for x in got["asks"]
            ] == want.asks
    assert max(current.values()) > 20  # the books really moved during the run
    client.close()


def test_engine_started_late_gets_current_books_at_once(real_backend) -> None:  # type: ignore[no-untyped-def]
    from support.book_helpers import book, feeder_write, set_feeder_state

    set_feeder_state(real_backend.sync, "early")
    for s in UPBIT:
        feeder_write(real_backend.sync, book(s, 1, xid=1), "early")
    for mode in ("read-through", "mirror"):
        with RedisMarketDataProvider.from_url(real_backend.url, mode=mode) as late:
            first = late.get_latest_snapshots(UPBIT)  # the very first call, no waiting for an update
            assert all(first[s] == book(s, 1) for s in UPBIT), mode
