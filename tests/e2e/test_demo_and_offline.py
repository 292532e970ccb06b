"""`make demo` runs offline and cleans up; a feeder without internet keeps retrying instead of crashing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from support.feeder_process import FeederProcess, wait_until

from launch.demo import BINANCE_SYMBOLS, MORE_SYMBOLS, UPBIT_SYMBOLS
from launch.redis_server import LocalRedisServer as RedisServer
from launch.redis_server import free_port


def test_demo_once_shows_live_books_and_leaves_nothing_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    done = subprocess.run(
        [sys.executable, "-m", "launch.demo", "--once", "--log-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    books = [("upbit", s) for s in UPBIT_SYMBOLS.split(",")] + [
        ("binance", s) for s in BINANCE_SYMBOLS.split(",")
    ]
    books += [(name, s) for name, listed in MORE_SYMBOLS.items() for s in listed.split(",")]
    for exchange, symbol in books:  # every exchange's books, each live
        assert re.search(rf"^{exchange}\s+{symbol}\s.*\blive\b", done.stdout, re.M), done.stdout
    assert f"{len(books)} books: {len(books)} live" in done.stdout
    assert "prefix demo" in done.stdout and done.stdout.count("live (sim)") == len(
        books
    )  # never mistaken for a market
    port = int(re.search(r"private redis-server at redis://127.0.0.1:(\d+)", done.stderr)[1])  # type: ignore[index]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the demo's redis-server is still running"
    for name in ("feeder-upbit", "feeder-binance", "feeder-more"):
        assert "stopped" in (tmp_path / f"{name}.log").read_text()


def test_feeder_without_exchange_keeps_retrying_then_stops_cleanly(redis_server: RedisServer) -> None:
    closed = free_port()  # nothing listens here: like having no internet
    feeder = FeederProcess(
        {
            "MD_REDIS_URL": redis_server.url,
            "MD_UPBIT_URL": f"ws://127.0.0.1:{closed}/websocket/v1",
            "MD_BINANCE_URL": f"ws://127.0.0.1:{closed}",
            "MD_FEEDER_ID": "offline-test",
        }
    )
    try:
        wait_until(
            lambda: feeder.log().count("connect failed") >= 6, 15, message="feeder did not keep retrying"
        )
        assert feeder.process.poll() is None
        assert "retry" in feeder.log()
        feeder.signal(signal.SIGTERM)
        assert feeder.wait(5) == 0
    finally:
        feeder.cleanup()


def test_bad_setting_stops_the_feeder_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env["MD_SHARD"] = "5/4"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "feeder"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "MD_SHARD" in done.stderr
    assert time.monotonic() - start < 20


async def test_arbitrage_example_prints_premiums(fresh_redis_server: RedisServer) -> None:
    import asyncio
    from pathlib import Path

    from exchange_sim import ExchangeSimulator

    example = Path(__file__).resolve().parents[2] / "examples" / "arbitrage.py"
    async with ExchangeSimulator(rate=10.0) as sim:
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": fresh_redis_server.url,
                "MD_UPBIT_URL": sim.upbit_url,
                "MD_BINANCE_URL": sim.binance_url,
                "MD_UPBIT_SYMBOLS": "KRW-BTC,KRW-USDT",
                "MD_BINANCE_SYMBOLS": "BTCUSDT",
                "MD_FEEDER_ID": "example",
            }
        )
        try:
            for mode in ("mirror", "read-through"):
                done = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, str(example), "--redis-url", fresh_redis_server.url, "--mode", mode, "--count", "5"],
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                lines = [ln for ln in done.stdout.splitlines() if "premium" in ln]
                assert len(lines) == 5, done.stdout + done.stderr
                values = [float(re.search(r"premium ([+-][\d.]+)%", ln)[1]) for ln in lines]  # type: ignore[index]
                assert all(abs(v) < 5 for v in values)  # the simulator prices agree to within a few percent
        finally:
            feeder.cleanup()


def test_the_demo_refuses_a_redis_holding_real_books_under_its_prefix(
    fresh_redis_server: RedisServer,
) -> None:
    """Was: ``make demo`` with MD_REDIS_URL exported wrote simulated books into the keys live engines read."""
    import redis

    from client.layout import RedisLayout, encode_book, write_flow
    from client.models import OrderBookSnapshot
    from client.transport import run_flow

    client = redis.Redis.from_url(fresh_redis_server.url)
    layout = RedisLayout("demo")
    real = OrderBookSnapshot("KRW-BTC", time.time(), [(1.0, 1.0)], [(2.0, 1.0)])
    run_flow(
        client,
        write_flow(layout, [encode_book(layout, real, exchange="upbit", writer="prod-1", heartbeat=True)]),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env["MD_REDIS_URL"] = fresh_redis_server.url
    done = subprocess.run(
        [sys.executable, "-m", "launch.demo", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "did not come from the simulator" in done.stderr and "prod-1" in done.stderr
    assert client.hget("demo:upbit:KRW-BTC", "feeder") == b"prod-1"  # untouched
    client.close()


def test_json_logs_are_one_object_per_line_with_stable_keys(redis_server: RedisServer) -> None:
    closed = free_port()
    feeder = FeederProcess(
        {
            "MD_REDIS_URL": redis_server.url,
            "MD_UPBIT_URL": f"ws://127.0.0.1:{closed}/websocket/v1",
            "MD_BINANCE_URL": f"ws://127.0.0.1:{closed}",
            "MD_FEEDER_ID": "json-log-test",
            "MD_LOG_FORMAT": "json",
        }
    )
    try:
        wait_until(lambda: feeder.log().count("connect failed") >= 2, 15, message="no retries logged")
        feeder.signal(signal.SIGTERM)
        assert feeder.wait(5) == 0
        lines = [line for line in feeder.log().splitlines() if line.strip()]
    finally:
        feeder.cleanup()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "time", "level", "logger", "message"} <= set(e) for e in events)
    assert any(e["level"] == "WARNING" and "connect failed" in e["message"] for e in events)
    assert any("stopped" in e["message"] for e in events)


def test_a_terminated_demo_stops_everything_it_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM (a supervisor, `timeout`, `kill`) stops the demo like Ctrl-C: no orphaned simulator, feeder or
    Redis (they run in sessions of their own, so nothing else would stop them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    errors = tmp_path / "demo.err"
    with errors.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "launch.demo", "--log-dir", str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path,
        )  # fmt: skip
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the first table: every book is live, every child runs
            if line.startswith("md watch"):
                break
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0, errors.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    said = errors.read_text()
    assert "stopping feeders, simulator and Redis" in said, said
    port = int(re.search(r"private redis-server at redis://127.0.0.1:(\d+)", said)[1])  # type: ignore[index]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the demo's redis-server is still running"
    for name in ("feeder-upbit", "feeder-binance", "feeder-more", "md-sim"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "stopped" in log or "stopping" in log, (name, log[-500:])
