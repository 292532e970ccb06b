"""Writing books the way a feeder does, for tests that need heartbeat-backed books without a feeder process."""

from __future__ import annotations

import time
from typing import Any

from client import OrderBookSnapshot
from client.layout import RedisLayout, encode_book, write_flow
from client.transport import run_flow

LAYOUT = RedisLayout("md")


def book(
    symbol: str = "KRW-BTC", tag: float = 1.0, *, xid: int | None = None, recv_ts: float | None = None
) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        symbol, 1_700_000_000.0 + tag, [(100.0 + tag, tag)], [(200.0 + tag, tag)], xid=xid, recv_ts=recv_ts
    )


def feeder_write(client: Any, snapshot: OrderBookSnapshot, writer: str, exchange: str = "upbit") -> int:
    """Write the way a feeder does: heartbeat-backed, by the shared write flow; returns the new seq (0: rejected)."""
    encoded = encode_book(LAYOUT, snapshot, exchange=exchange, writer=writer, heartbeat=True)
    seqs: list[int] = run_flow(client, write_flow(LAYOUT, [encoded]))
    return seqs[0]


def set_feeder_state(client: Any, feeder: str, state: str = "running", ttl_ms: int = 30_000) -> None:
    client.hset(f"md:feeder:{feeder}", mapping={"state": state, "heartbeat": time.time()})
    client.pexpire(f"md:feeder:{feeder}", ttl_ms)
