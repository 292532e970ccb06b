"""Record an exchange's live traffic into a capture file that ``md-sim --replay-<exchange> FILE`` plays back.

``md record FILE`` (or ``md-feeder --record FILE``) opens the connection a feeder would (the exchange's own
protocol module: URL, subscribe frames, keep-alive message) for the symbols the settings name, and writes
every frame with its receive time in the capture format of `exchange_sim.replay`:

- ``URL <-> unix_ts``: the connection opened;
- ``URL <- unix_ts: PAYLOAD``: a frame sent (the subscription, keep-alive messages);
- ``unix_ts: PAYLOAD``: a frame received; ``b'...'`` (a Python bytes literal) for a binary frame, the text as
  it came for a text frame.

So a day of real traffic becomes a test: replayed, it goes through the feeder byte for byte. One exchange per
file (the simulator replays per exchange), the first connection's worth of symbols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from feeder.exchanges.registry import EXCHANGES
from feeder.settings import FeederSettings

log = logging.getLogger(__name__)


async def record(settings: FeederSettings, path: Path, *, seconds: float | None, frames: int | None) -> int:
    """Record until `seconds` pass or `frames` frames arrived (whichever first); the number of frames."""
    exchanges = settings.exchange_list
    if len(exchanges) != 1:
        raise ValueError(f"record one exchange at a time (MD_EXCHANGES names {', '.join(exchanges)})")
    descriptor = EXCHANGES[exchanges[0]]
    protocol = descriptor.build(settings)
    symbols = descriptor.symbols(settings)[: protocol.max_symbols_per_connection]
    if not symbols:
        raise ValueError(f"no symbols to record: set MD_{exchanges[0].upper()}_SYMBOLS")
    url = protocol.url(symbols)
    count = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    with path.open("w", encoding="utf-8") as out:
        async with connect(
            url, max_size=2**22, compression=None, open_timeout=settings.connect_timeout
        ) as ws:
            out.write(f"{url} <-> {time.time():.6f}\n")
            for frame in protocol.subscribe_frames(symbols):
                await ws.send(frame)
                _sent(out, url, frame)
            keepalive = None
            if protocol.ping_frame is not None:
                keepalive = asyncio.create_task(
                    _keepalive(ws, out, url, protocol.ping_frame, descriptor.keepalive.ping_interval)
                )
            try:
                while frames is None or count < frames:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    try:
                        async with asyncio.timeout(left):
                            frame = await ws.recv()
                    except TimeoutError:
                        break
                    received = time.time()
                    payload = repr(frame) if isinstance(frame, bytes) else frame.replace("\n", " ")
                    out.write(f"{received:.6f}: {payload}\n")
                    count += 1
            except ConnectionClosed as exc:
                log.warning("record: the exchange closed the connection (%s); %d frames recorded", exc, count)
            finally:
                if keepalive is not None:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keepalive
    log.info("record: %d frames of %s written to %s", count, exchanges[0], path)
    return count


def _sent(out: TextIO, url: str, frame: str | bytes) -> None:
    text = frame.decode() if isinstance(frame, bytes) else frame
    out.write(f"{url} <- {time.time():.6f}: {text}\n")


async def _keepalive(ws: ClientConnection, out: TextIO, url: str, frame: str, interval: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(interval)
            await ws.send(frame)
            _sent(out, url, frame)
