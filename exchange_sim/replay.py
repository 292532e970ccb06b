"""What the simulator sent (the truth record) and recorded captures replayed instead of generated books.

`Truth` is the book last sent for a symbol, exactly as a client decodes it: tests compare what reached Redis
with it. A replay feeds each connection a capture frame by frame at the recorded pace (or as fast as the
client reads), and updates the truth from every book frame it sends.

The capture format is the one of the cryptofeed sample data in ``tests/data/`` (frames/, recordings/) (one event per line):

- ``URL <-> unix_ts``: the connection was opened (skipped);
- ``URL <- unix_ts: PAYLOAD``: a frame the client sent (skipped: the client under test sends its own);
- ``unix_ts: PAYLOAD``: a frame received from the exchange. ``b'...'`` is a Python bytes literal and was a
  **binary** WebSocket frame (Upbit); anything else was a text frame (Binance).

Replaying real frames byte for byte is the point: they carry the quirks (trade frames interleaved with books,
SIMPLE keys, number formats) that generated books do not.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.models import OrderBookSnapshot
from exchange_sim.books import Level

if TYPE_CHECKING:
    from exchange_sim.session import Session


@dataclass(frozen=True, slots=True)
class Truth:
    """The book last sent for a symbol, as the client decodes it (levels best first, floats)."""

    bids: list[Level]
    asks: list[Level]
    xid: int  # Upbit: timestamp ms; Binance: lastUpdateId
    timestamp: float  # seconds since the epoch: Upbit's timestamp, or when Binance's frame was encoded


def truth_snapshots(exchange: str, truth: dict[str, Truth]) -> dict[tuple[str, str], OrderBookSnapshot]:
    """``(exchange, symbol) -> the book last sent``, as `OrderBookSnapshot` (``xid`` set)."""
    return {
        (exchange, symbol): OrderBookSnapshot(
            symbol=symbol,
            timestamp=t.timestamp,
            bids=list(t.bids),
            asks=list(t.asks),
            exchange=exchange,
            xid=t.xid,
        )
        for symbol, t in truth.items()
    }


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One frame the exchange sent: when (seconds since the epoch) and exactly what."""

    ts: float
    payload: bytes | str  # bytes: a binary frame; str: a text frame


class CaptureFormatError(ValueError):
    """A capture line that is neither a connection marker, a sent frame, nor a received frame."""


def parse_capture(lines: Iterable[str]) -> list[CapturedFrame]:
    """The received frames of a capture, in order. Blank lines are ignored; a malformed line raises."""
    frames: list[CapturedFrame] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        head, sep, payload = line.partition(": ")
        if " <-> " in head or " <- " in head:
            continue  # connection opened / frame sent by the recorded client
        try:
            ts = float(head)
        except ValueError:
            raise CaptureFormatError(
                f"line {number}: expected 'unix_ts: payload', got {line[:60]!r}"
            ) from None
        if not sep:
            raise CaptureFormatError(f"line {number}: no payload after the timestamp")
        if payload.startswith(("b'", 'b"')):
            try:
                data = ast.literal_eval(payload)
            except (ValueError, SyntaxError) as exc:
                raise CaptureFormatError(f"line {number}: bad bytes literal: {exc}") from None
            if not isinstance(data, bytes):
                raise CaptureFormatError(f"line {number}: bad bytes literal")
            frames.append(CapturedFrame(ts, data))
        else:
            frames.append(CapturedFrame(ts, payload))
    return frames


def load_capture(path: str | Path) -> list[CapturedFrame]:
    """Read a capture file (UTF-8). Raises CaptureFormatError if it holds no received frame at all."""
    with open(path, encoding="utf-8") as fh:
        frames = parse_capture(fh)
    if not frames:
        raise CaptureFormatError(f"{path}: no received frames in this capture")
    return frames


# --------------------------------------------------------------------------------------------- replaying
@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """A capture replayed to each connection of an exchange instead of generated books."""

    frames: list[CapturedFrame]
    speed: float | None = 1.0  # 1.0: the recorded pace; 2.0: twice as fast; None or 0: as fast as possible
    loop: bool = False  # start again from the first frame at the end
    truths: list[tuple[str, Truth] | None] = field(default_factory=list)  # per frame, if it is a book


async def replay_to(
    session: Session[Any], settings: ReplaySettings, truth: dict[str, Truth], counters: dict[str, int]
) -> None:
    """Send the capture to one session (at its pace, or as fast as it reads), updating the truth record."""
    loop = asyncio.get_running_loop()
    frames, truths, speed = settings.frames, settings.truths, settings.speed
    while not session.closing:
        start, t0 = loop.time(), frames[0].ts
        for i, frame in enumerate(frames):
            if speed:
                delay = start + (frame.ts - t0) / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 200 == 0:
                await session.wait_idle(1000)  # as fast as the client reads, with bounded memory
            if session.stalled:
                await session.wait_unstalled()  # a capture is not lost to a stall, only delayed
            if session.closing:
                return
            session.enqueue(frame.payload)
            counters["replayed_frames"] += 1
            known = truths[i] if i < len(truths) else None
            if known is not None:
                symbol, t = known
                truth[symbol] = t if t.timestamp else dataclasses.replace(t, timestamp=time.time())
        if not settings.loop:
            return


def same_book(stored: OrderBookSnapshot | None, sent: OrderBookSnapshot | None) -> bool:
    """Whether a book read back (from Redis, a mirror) is the one the simulator sent: same ordering id, same
    levels. The check every test, benchmark and the chaos run makes against the simulator's truth."""
    return (
        stored is not None
        and sent is not None
        and stored.xid == sent.xid
        and stored.bids == sent.bids
        and stored.asks == sent.asks
    )
