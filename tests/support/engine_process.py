"""A stand-in trading engine for the many-engines test: reads books in a loop through the provider.

    python engine_process.py URL MODE SYMBOLS...      MODE: sync, mirror, async, async-mirror, events

It checks that no book's seq ever goes backwards, prints "ready" once every symbol has a book, and on a line
"final {json seqs}" on stdin waits until its own view has caught up with those seqs (mirror engines lag by a
message), then prints its view as JSON and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from typing import Any

from client import OrderBookSnapshot, RedisMarketDataProvider

URL, MODE, SYMBOLS = sys.argv[1], sys.argv[2], sys.argv[3:]


class View:
    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}
        self.books: dict[str, OrderBookSnapshot] = {}
        self.reads = 0
        self.first_complete: bool | None = None

    def see(self, books: dict[str, OrderBookSnapshot | None]) -> None:
        if self.first_complete is None:
            self.first_complete = all(b is not None for b in books.values())
        self.reads += 1
        for symbol, book in books.items():
            if book is None or book.seq is None:
                continue
            last = self.seqs.get(symbol, 0)
            if book.seq < last:
                old = self.books[symbol]
                print(json.dumps({"error": f"{MODE}: {symbol} seq went back from {last} to {book.seq}",
                                  "old": [old.xid, old.recv_ts], "new": [book.xid, book.recv_ts]}), flush=True)  # fmt: skip
                sys.exit(3)
            self.seqs[symbol] = book.seq
            self.books[symbol] = book

    def caught_up(self, target: dict[str, int]) -> bool:
        return all(self.seqs.get(s, 0) >= seq for s, seq in target.items())

    def dump(self) -> str:
        return json.dumps(
            {
                "first_complete": self.first_complete,
                "reads": self.reads,
                "books": {
                    s: {"seq": b.seq, "xid": b.xid, "bids": b.bids, "asks": b.asks}
                    for s, b in self.books.items()
                },
            }
        )


def wait_final(stop: threading.Event, final: dict[str, Any]) -> None:
    line = sys.stdin.readline()
    if line.startswith("final "):
        final.update(json.loads(line[6:]))
    stop.set()


def run_sync(view: View) -> None:
    mode = "mirror" if MODE == "mirror" else "read-through"
    with RedisMarketDataProvider.from_url(URL, mode=mode) as provider:
        stop, final = threading.Event(), {}
        ready = False
        threading.Thread(target=wait_final, args=(stop, final), daemon=True).start()
        while not stop.is_set():
            view.see(provider.get_latest_snapshots(SYMBOLS))
            if not ready and len(view.books) == len(SYMBOLS):
                ready = True
                print("ready", flush=True)
            time.sleep(0.002)
        deadline = time.monotonic() + 10
        while not view.caught_up(final) and time.monotonic() < deadline:
            view.see(provider.get_latest_snapshots(SYMBOLS))
            time.sleep(0.01)


async def run_async(view: View) -> None:
    mode = "mirror" if MODE == "async-mirror" else "read-through"
    async with RedisMarketDataProvider.from_url(URL, mode=mode) as provider:
        stop, final = threading.Event(), {}
        threading.Thread(target=wait_final, args=(stop, final), daemon=True).start()
        ready = False

        async def read_all() -> dict[str, OrderBookSnapshot | None]:
            books = await asyncio.gather(*(provider.aget_latest_snapshot(s) for s in SYMBOLS))
            return dict(zip(SYMBOLS, books, strict=True))

        stream = View()  # the update stream must be monotonic by itself (it may lag direct reads)

        async def events() -> None:
            async for snapshot in provider.updates(SYMBOLS):
                stream.see({snapshot.symbol: snapshot})

        consumer = asyncio.create_task(events()) if MODE == "events" else None
        while not stop.is_set():
            view.see(await read_all())
            if not ready and len(view.books) == len(SYMBOLS):
                ready = True
                print("ready", flush=True)
            await asyncio.sleep(0.002)
        deadline = time.monotonic() + 10
        while not view.caught_up(final) and time.monotonic() < deadline:
            view.see(await read_all())
            await asyncio.sleep(0.01)
        if consumer is not None:
            if stream.reads < 10:
                print(json.dumps({"error": f"only {stream.reads} updates arrived on the stream"}), flush=True)
                sys.exit(3)
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer


def main() -> None:
    view = View()
    if MODE in ("sync", "mirror"):
        run_sync(view)
    else:
        asyncio.run(run_async(view))
    print(view.dump(), flush=True)


if __name__ == "__main__":
    main()
