"""md-sim as a real process: it serves, and stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from support.sim_client import decode_upbit, recv, until_closed, upbit_request
from websockets.asyncio.client import connect


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_cli_serves_and_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "exchange_sim", "--upbit-port", "0", "--binance-port", "0", "--rate", "20"),
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=root,
    )
    assert proc.stderr is not None
    urls: dict[str, str] = {}
    try:
        async with asyncio.timeout(15):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "the simulator exited early"
                if m := re.search(r"(upbit|binance): (ws://\S+)", line):
                    urls[m.group(1)] = m.group(2)
                if "ready" in line:
                    break
        async with connect(urls["upbit"]) as ws:
            await ws.send(upbit_request(["KRW-BTC"]))
            assert decode_upbit(await recv(ws))["code"] == "KRW-BTC"
            proc.send_signal(sig)
            closed = await until_closed(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1001
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
