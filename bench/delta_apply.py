"""Delta-apply speed of `feeder.incremental_book.IncrementalBook`: updates/s on a 200-level book.

The stream is what Bybit's ``orderbook.200`` looks like between two pushes: a snapshot of 200 levels a side,
then deltas of 1 to 6 levels each (sizes changed, levels added inside the book, levels deleted with size
``"0"``), consecutive ids. `IncrementalBook.apply` checks the chain and the book (not crossed), keeps the full
book in order and returns the top 20 levels a side after every delta, which is what the feeder writes.

The reference, timed in the same run, is the least any book must do per delta: the same levels written into
two plain dicts (no order, no checks, no top levels). Correctness: after the stream, the book's top levels
equal an independent model of the same stream (two dicts sorted at the end).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bench.report import Context, Table
from client.models import OrderBookSnapshot
from feeder.incremental_book import BookUpdate, Chain, IncrementalBook, RawLevel

LEVELS = 200
WRITTEN = 20


def delta_stream(count: int, seed: int = 7) -> tuple[BookUpdate, list[BookUpdate]]:
    """A 200-level snapshot and `count` deltas around a mid price of 100,000 with a tick of 0.1."""
    rng = random.Random(seed)
    bids = {1_000_000 - i: rng.randint(1, 5000) for i in range(1, LEVELS + 1)}  # ticks -> size in lots
    asks = {1_000_000 + i: rng.randint(1, 5000) for i in range(1, LEVELS + 1)}

    def text(levels: dict[int, int], reverse: bool) -> list[RawLevel]:
        return [(f"{t / 10:.1f}", f"{s / 1000:.3f}") for t, s in sorted(levels.items(), reverse=reverse)]

    snapshot = BookUpdate("BTCUSDT", 1.7e9, text(bids, True), text(asks, False), seq=1, snapshot=True)
    deltas: list[BookUpdate] = []
    for n in range(count):
        changes: tuple[list[RawLevel], list[RawLevel]] = ([], [])
        for _ in range(rng.randint(1, 6)):
            side, book, sign = rng.choice(((0, bids, -1), (1, asks, 1)))
            best = max(bids) if sign < 0 else min(asks)
            tick = best + sign * rng.randint(-2, LEVELS + 20)  # inside the book, a new best, or beyond
            if tick in book and rng.random() < 0.3:
                del book[tick]
                changes[side].append((f"{tick / 10:.1f}", "0"))
            elif (sign < 0 and tick < min(asks)) or (sign > 0 and tick > max(bids)):
                book[tick] = rng.randint(1, 5000)
                changes[side].append((f"{tick / 10:.1f}", f"{book[tick] / 1000:.3f}"))
        deltas.append(BookUpdate("BTCUSDT", 1.7e9 + n / 1000, changes[0], changes[1], seq=n + 2))
    return snapshot, deltas


def model_top(snapshot: BookUpdate, deltas: list[BookUpdate]) -> tuple[list[tuple[float, float]], ...]:
    """The top levels after the stream, from two dicts: the independent answer."""
    sides: list[dict[float, float]] = [{}, {}]
    for update in (snapshot, *deltas):
        for side, levels in zip(sides, (update.bids, update.asks), strict=True):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
    bids = sorted(sides[0].items(), reverse=True)[:WRITTEN]
    asks = sorted(sides[1].items())[:WRITTEN]
    return bids, asks


def run(ctx: Context) -> list[Table]:
    snapshot, deltas = delta_stream(2_000 if ctx.quick else 50_000)
    table = Table(
        "delta_apply",
        f"delta apply: updates/s of IncrementalBook on a {LEVELS}-level book (top {WRITTEN} written) vs two dicts",
        ["case", "updates", "levels/update", "apply updates/s", "apply µs", "dicts updates/s", "dicts µs",
         "ratio"],
    )  # fmt: skip

    book = IncrementalBook("bybit", "BTCUSDT", chain=Chain.CONSECUTIVE, depth=WRITTEN)
    served = book.apply(snapshot)
    for delta in deltas:
        served = book.apply(delta)
    want = model_top(snapshot, deltas)
    if table.check(
        isinstance(served, OrderBookSnapshot), f"the stream did not end with a live book: {served}"
    ):
        assert isinstance(served, OrderBookSnapshot)
        got = (served.bids, served.asks)
        table.check(got == want, "IncrementalBook's top levels differ from the independent model")

    def apply_all() -> None:
        fresh = IncrementalBook("bybit", "BTCUSDT", chain=Chain.CONSECUTIVE, depth=WRITTEN)
        fresh.apply(snapshot)
        apply = fresh.apply
        for delta in deltas:
            apply(delta)

    def dicts_all() -> None:
        bids: dict[float, float] = {}
        asks: dict[float, float] = {}
        for update in (snapshot, *deltas):
            for price, size in update.bids:
                bids[float(price)] = float(size)
            for price, size in update.asks:
                asks[float(price)] = float(size)

    def rate(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return len(deltas) / (time.perf_counter() - start)

    apply_rate = dicts_rate = 0.0
    for _ in range(1 if ctx.quick else 5):  # alternate, so that machine noise hits both alike
        apply_rate = max(apply_rate, rate(apply_all))
        dicts_rate = max(dicts_rate, rate(dicts_all))
    per_update = sum(len(d.bids) + len(d.asks) for d in deltas) / len(deltas)
    table.add(
        "bybit-like orderbook.200", len(deltas), round(per_update, 1), apply_rate, 1e6 / apply_rate,
        dicts_rate, 1e6 / dicts_rate, round(apply_rate / dicts_rate, 2),
    )  # fmt: skip
    table.note("rates: best of 5 alternating runs of the whole stream (snapshot included in the time)")
    table.note(
        "apply includes the chain check, the crossed-book check and the top-20 levels after every delta"
    )
    return [table]
