"""`md record` writes an exchange's traffic as a capture; `md-sim` replays it; a feeder fed by the replay stores
the same books the recording holds: a day of real traffic becomes a test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.feeder_process import FeederProcess
from support.feeder_rig import poll

from client import OrderBookSnapshot, RedisMarketDataProvider
from exchange_sim import ExchangeSimulator, load_capture
from feeder.exchanges import UpbitProtocol, books_in
from launch.redis_server import LocalRedisServer as RedisServer

pytestmark = pytest.mark.e2e

SYMBOLS = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]


def last_books(capture: Path) -> dict[str, OrderBookSnapshot]:
    """The last book of every symbol in a capture, decoded independently of the feeder's run."""
    protocol = UpbitProtocol()
    last: dict[str, OrderBookSnapshot] = {}
    for frame in load_capture(capture):
        for book in books_in(protocol.parse(frame.payload, frame.ts)):
            last[book.symbol] = book
    return last


async def test_record_then_replay_gives_the_same_books(
    tmp_path: Path, fresh_redis_server: RedisServer
) -> None:
    capture = tmp_path / "upbit.ws.txt"
    async with ExchangeSimulator(rate=20.0, binance_port=None) as live:  # stands in for the real exchange
        url = live.upbit_url
        env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "md_cli", "record", str(capture), "--exchange", "upbit",
             "--symbols", ",".join(SYMBOLS), "--frames", "60", "--url", url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = capture.read_text().splitlines()
    assert lines[0].startswith(f"{url} <-> ") and " <- " in lines[1]  # opened, then subscribed
    received = [line for line in lines if not line.startswith("ws://")]
    assert len(received) == 60 and all(": b'" in line for line in received)  # Upbit's frames are binary
    recorded = last_books(capture)
    assert set(recorded) == set(SYMBOLS)

    async with ExchangeSimulator(binance_port=None, replay_upbit=capture, replay_speed=None) as replay:
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": fresh_redis_server.url,
                "MD_EXCHANGES": "upbit",
                "MD_FEEDER_ID": "replayed",
                "MD_UPBIT_URL": replay.upbit_url,
                "MD_UPBIT_SYMBOLS": ",".join(SYMBOLS),
            }
        )
        try:
            async with RedisMarketDataProvider.from_url(fresh_redis_server.url) as provider:

                async def same() -> bool:
                    books = await provider.aget_latest_snapshots(SYMBOLS, exchange="upbit")
                    return all(
                        b is not None and (b.xid, b.bids, b.asks) == (r.xid, r.bids, r.asks)
                        for b, r in ((books[s], recorded[s]) for s in SYMBOLS)
                    )

                await poll(same, 20, f"the replayed books differ from the recording\n{feeder.log()[-2000:]}")
        finally:
            feeder.cleanup()
