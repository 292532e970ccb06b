"""A test-side WebSocket client of the simulator: requests, an independent Upbit decoder, waits with deadlines."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed


async def recv(ws: ClientConnection, timeout: float = 5.0) -> str | bytes:
    async with asyncio.timeout(timeout):
        return await ws.recv()


async def silent(ws: ClientConnection, seconds: float) -> bool:
    """True if nothing arrives for ``seconds`` (an assertion of silence, not a way to wait for something)."""
    try:
        await recv(ws, seconds)
    except TimeoutError:
        return True
    return False


def upbit_request(codes: list[str], fmt: str | None = None, **options: Any) -> str:
    request: list[dict[str, Any]] = [{"ticket": "test"}, {"type": "orderbook", "codes": codes, **options}]
    if fmt is not None:
        request.append({"format": fmt})
    return orjson.dumps(request).decode()


def decode_upbit(payload: str | bytes) -> dict[str, Any]:
    """A test-side decoder of every Upbit orderbook format, independent of the simulator's code."""
    obj = orjson.loads(payload)
    if isinstance(obj, list):
        assert len(obj) == 1
        obj = obj[0]
    if "ty" in obj:
        units = [(u["ap"], u["as"], u["bp"], u["bs"]) for u in obj["obu"]]
        code, ts, st = obj["cd"], obj["tms"], obj["st"]
    else:
        keys = ("ask_price", "ask_size", "bid_price", "bid_size")
        units = [tuple(u[k] for k in keys) for u in obj["orderbook_units"]]
        code, ts, st = obj["code"], obj["timestamp"], obj["stream_type"]
    return {
        "code": code,
        "ts": ts,
        "stream_type": st,
        "asks": [(float(u[0]), float(u[1])) for u in units],
        "bids": [(float(u[2]), float(u[3])) for u in units],
    }


async def until_closed(ws: ClientConnection, timeout: float = 5.0) -> ConnectionClosed:
    """Read (and discard) frames until the connection closes; return the exception that said so."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                return exc
