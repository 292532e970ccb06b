"""Write throughput of the feeder: Binance depth20 frames → parse → `SnapshotWriter` → Redis, in books/s.

200 symbols, frames arriving round-robin (one book per symbol per round), written into the run's private
redis-server. Feeder rows (asyncio, as the feeder runs):

- *flat out*: every frame is submitted as fast as possible, as the feeder's read loop does it (a frame of a
  symbol already seen goes to the writer undecoded and is decoded only if it is written), yielding to the event
  loop every `CHUNK` frames (as a read loop does when the socket buffer is drained); the clock stops when the
  writer has flushed. Books that arrive while their predecessor is still pending replace it (coalesced), so
  ``submitted = written + coalesced``: submitted/s is the frame rate the feeder keeps up with, written/s what
  reached Redis. *flat out, every frame decoded*: the same with every frame parsed before it is submitted.
- *lock-step*: one round (a book per symbol) is submitted, then the writer is awaited until flushed: nothing
  coalesces, every book is written: the like-for-like comparison with the reference.
- *writer only*: flat out with snapshots decoded beforehand: the write path alone.
- *lock-step, history N*: lock-step with ``MD_HISTORY_MAXLEN=N``: every accepted version is also appended to
  its capped stream by the same script (what history costs a write; no target).

The reference, timed in the same run, is the minimal loop a feeder could be: ``orjson.loads`` of the frame, the
bids/asks arrays dumped back as they came (string numbers, no conversion), and per book one ``HSET`` of the
same fields plus one ``PUBLISH`` of a JSON payload, pipelined in batches of 100, no ordering check, no seq.
Both redis-py flavours are timed (sync and asyncio, hiredis parser); the faster is the reference. Target:
feeder lock-step written/s and flat-out submitted/s ≥ 0.8x the reference (flat out as the feeder runs).

Correctness: after each feeder run every Redis book equals the last book submitted for its key, seqs add up to
the written count (to the number of rounds in lock-step), nothing was rejected; in quick mode every published
message is read back too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from bench.parse import binance_depth20_frames
from bench.report import Context, Table
from client.layout import RedisLayout, decode_book
from client.models import OrderBookSnapshot
from feeder.exchanges import BinanceProtocol, books_in
from feeder.exchanges.base import BookSides
from feeder.writer import SnapshotWriter

TARGET = 0.8
CHUNK = 50  # frames handled between two yields to the event loop in the flat-out feeder run
REF_BATCH = 100
HISTORY = 1000  # MD_HISTORY_MAXLEN of the history row
FEEDER_ID = "bench-writer"


@dataclass
class Run:
    name: str
    seconds: float
    submitted: int
    written: int
    coalesced: int = 0
    batches: int = 0
    submit_seconds: float = 0.0  # flat out: until the last submit (the rest is draining)


# ------------------------------------------------------------------------------------------------ reference
def reference_sync(url: str, frames: Sequence[bytes], warmup: int) -> Run:
    client = redis.Redis.from_url(url)
    try:
        write = _reference_writer()
        pipe = client.pipeline(transaction=False)
        _reference_batches(write, pipe, frames[:warmup], pipe.execute)
        start = time.perf_counter()
        _reference_batches(write, pipe, frames[warmup:], pipe.execute)
        return Run("reference, sync", time.perf_counter() - start, len(frames) - warmup, len(frames) - warmup)
    finally:
        client.close()


def _reference_batches(
    write: Callable[[Any, bytes], None], pipe: Any, frames: Sequence[bytes], execute: Callable[[], Any]
) -> None:
    n = 0
    for frame in frames:
        write(pipe, frame)
        n += 1
        if n == REF_BATCH:
            execute()
            n = 0
    if n:
        execute()


async def _reference_async(url: str, frames: Sequence[bytes], warmup: int) -> Run:
    client = redis.asyncio.Redis.from_url(url)
    try:
        write = _reference_writer()
        pipe = client.pipeline(transaction=False)

        async def batches(frames: Sequence[bytes]) -> None:
            n = 0
            for frame in frames:
                write(pipe, frame)
                n += 1
                if n == REF_BATCH:
                    await pipe.execute()
                    n = 0
            if n:
                await pipe.execute()

        await batches(frames[:warmup])
        start = time.perf_counter()
        await batches(frames[warmup:])
        return Run(
            "reference, asyncio", time.perf_counter() - start, len(frames) - warmup, len(frames) - warmup
        )
    finally:
        await client.aclose()


def reference_async(url: str, frames: Sequence[bytes], warmup: int) -> Run:
    return asyncio.run(_reference_async(url, frames, warmup))


def _reference_writer() -> Callable[[Any, bytes], None]:
    """The per-book work of the minimal loop: decode, dump both sides back, queue HSET and PUBLISH."""
    loads, dumps, fragment, now = orjson.loads, orjson.dumps, orjson.Fragment, time.time
    routes: dict[str, tuple[str, str]] = {}  # stream -> (symbol, key), as any real loop would cache

    def write(pipe: Any, frame: bytes) -> None:
        recv_ts = now()
        obj = loads(frame)
        data = obj["data"]
        stream = obj["stream"]
        route = routes.get(stream)
        if route is None:
            symbol = stream[: stream.index("@")].upper()
            route = routes[stream] = (symbol, "ref:binance:" + symbol)
        symbol, key = route
        bids, asks = data["bids"], data["asks"]
        bids_json, asks_json = dumps(bids), dumps(asks)
        xid = data["lastUpdateId"]
        bid = bids[0][0] if bids else ""
        ask = asks[0][0] if asks else ""
        payload = dumps(
            {"exchange": "binance", "symbol": symbol, "ts": recv_ts, "recv_ts": recv_ts, "xid": xid,
             "feeder": FEEDER_ID, "bid": bid, "ask": ask, "bids": fragment(bids_json), "asks": fragment(asks_json)}
        )  # fmt: skip
        pipe.execute_command(
            "HSET", key, "exchange", "binance", "symbol", symbol, "bids", bids_json, "asks", asks_json,
            "bid", bid, "ask", ask, "ts", recv_ts, "recv_ts", recv_ts, "xid", xid, "feeder", FEEDER_ID,
        )  # fmt: skip
        pipe.execute_command("PUBLISH", key, payload)

    return write


# ------------------------------------------------------------------------------------------------ feeder
class _Source:
    """Decodes the frames the flat-out run hands to the writer undecoded, as a feeder connection does."""

    def __init__(self, protocol: BinanceProtocol) -> None:
        self._protocol = protocol
        self._parse = protocol.parse

    def book_sides(self, frame: bytes, recv_ts: float, symbol: str) -> BookSides | None:
        return self._protocol.book_sides(frame, recv_ts)

    def decode_deferred(self, frame: bytes, recv_ts: float, symbol: str) -> OrderBookSnapshot | None:
        return next((book for book in books_in(self._parse(frame, recv_ts)) if book.symbol == symbol), None)


async def _feeder(
    url: str, frames: Sequence[bytes], warmup: int, mode: str, round_size: int, table: Table, check: bool
) -> Run:
    client = redis.asyncio.Redis.from_url(url)
    layout = RedisLayout()
    history = HISTORY if mode.startswith("lock-step, history") else 0
    writer = SnapshotWriter(client, layout, FEEDER_ID, history=history)
    task = asyncio.create_task(writer.run())
    protocol = BinanceProtocol()
    parse, submit = protocol.parse, writer.submit
    # receive times, one per frame (a feeder takes time.time() per frame): fixed so that the check can
    # decode the same books again
    stamps = [time.time() + i * 1e-6 for i in range(len(frames))]
    last: dict[str, OrderBookSnapshot] = {}
    pubsub = client.pubsub()
    if check:
        await pubsub.psubscribe(layout.book_pattern("binance"))
    try:
        for frame, ts in zip(frames[:warmup], stamps, strict=False):
            for book in books_in(parse(frame, ts)):
                submit("binance", book)
        if not await writer.flush(30):
            raise RuntimeError("writer did not flush the warm-up round")
        base = (writer.stats.submitted, writer.stats.written, writer.stats.coalesced, writer.stats.batches)
        timed = list(zip(frames[warmup:], stamps[warmup:], strict=True))
        submit_seconds = 0.0
        start = time.perf_counter()
        if mode == "writer only":
            books = [b for frame, ts in timed for b in books_in(parse(frame, ts))]
            start = time.perf_counter()
            for i, book in enumerate(books):
                submit("binance", book)
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)
            submit_seconds = time.perf_counter() - start
        elif mode.startswith("flat out"):
            # "flat out" reads as the feeder does: a frame of a known symbol goes to the writer undecoded
            book_symbol = protocol.book_symbol if mode == "flat out" else lambda frame: None
            submit_frame, source = writer.submit_frame, _Source(protocol)
            for i, (frame, ts) in enumerate(timed):
                symbol = book_symbol(frame)
                if symbol is not None:
                    submit_frame("binance", symbol, frame, ts, source)
                else:
                    for event in parse(frame, ts):
                        if type(event) is OrderBookSnapshot:  # as the feeder's read loop does
                            submit("binance", event)
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)
            submit_seconds = time.perf_counter() - start
        else:  # lock-step
            for i, (frame, ts) in enumerate(timed):
                for event in parse(frame, ts):
                    if type(event) is OrderBookSnapshot:  # as the feeder's read loop does
                        submit("binance", event)
                if i % round_size == round_size - 1 and not await writer.flush(30):
                    raise RuntimeError("writer did not flush")
        if not await writer.flush(60):
            raise RuntimeError("writer did not flush")
        seconds = time.perf_counter() - start
        stats = writer.stats
        run = Run(
            f"feeder, {mode}", seconds, stats.submitted - base[0], stats.written - base[1],
            stats.coalesced - base[2], stats.batches - base[3], submit_seconds,
        )  # fmt: skip
        # correctness
        for frame, ts in zip(frames, stamps, strict=True):
            for book in books_in(protocol.parse(frame, ts)):
                last[book.symbol] = book
        table.check(stats.rejected == 0 and stats.redis_errors == 0, f"{run.name}: rejected or Redis errors")
        table.check(
            stats.submitted == stats.written + stats.coalesced == len(frames),
            f"{run.name}: submitted {stats.submitted} != written {stats.written} + coalesced {stats.coalesced}"
            f" != {len(frames)} books",
        )
        if mode.startswith("lock-step"):
            table.check(stats.coalesced == 0, f"{run.name}: {stats.coalesced} books coalesced")
        await _check_store(client, layout, last, stats.written, len(frames) // round_size, mode, table)
        if check:
            await _check_messages(pubsub, last, stats.written, table, run.name)
        if history:
            await _check_history(
                client, layout, last, min(history, len(frames) // round_size), table, run.name
            )
        return run
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()
        await client.aclose()


async def _check_store(
    client: redis.asyncio.Redis,
    layout: RedisLayout,
    last: dict[str, OrderBookSnapshot],
    written: int,
    rounds: int,
    mode: str,
    table: Table,
) -> None:
    keys = [layout.book_key("binance", symbol) for symbol in last]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    raws = await pipe.execute()
    wrong, seqs = 0, []
    for key, raw, book in zip(keys, raws, last.values(), strict=True):
        stored = decode_book(layout, key, raw)
        if stored is None or stored.snapshot != book or stored.snapshot.xid != book.xid:
            wrong += 1
        else:
            seqs.append(stored.seq)
    table.check(
        wrong == 0, f"feeder, {mode}: {wrong} of {len(keys)} stored books differ from the last submitted"
    )
    table.check(sum(seqs) == written, f"feeder, {mode}: seqs add up to {sum(seqs)}, written {written}")
    if mode.startswith("lock-step"):
        table.check(all(s == rounds for s in seqs), f"feeder, {mode}: a seq differs from the {rounds} rounds")
    members = await client.smembers(layout.symbols_key("binance"))
    table.check(
        {m.decode() if isinstance(m, bytes) else m for m in members} == set(last),
        f"feeder, {mode}: symbol index incomplete",
    )


async def _check_messages(
    pubsub: Any, last: dict[str, OrderBookSnapshot], written: int, table: Table, name: str
) -> None:
    count, newest = 0, {}
    deadline = time.monotonic() + 5
    while count < written and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            count += 1
            body = orjson.loads(message["data"])
            newest[body["symbol"]] = body
    table.check(count == written, f"{name}: {count} messages published, {written} books written")
    wrong = [
        s for s, book in last.items()
        if s not in newest
        or [tuple(x) for x in newest[s]["bids"]] != book.bids
        or [tuple(x) for x in newest[s]["asks"]] != book.asks
        or newest[s]["xid"] != book.xid
    ]  # fmt: skip
    table.check(not wrong, f"{name}: last message differs from the stored book for {len(wrong)} symbols")


async def _check_history(
    client: redis.asyncio.Redis,
    layout: RedisLayout,
    last: dict[str, OrderBookSnapshot],
    length: int,
    table: Table,
    name: str,
) -> None:
    """Every book's capped stream holds one entry per round (up to the cap), the newest the stored book's."""
    pipe = client.pipeline(transaction=False)
    for symbol in last:
        pipe.xlen(layout.history_key("binance", symbol))
    lengths = await pipe.execute()
    table.check(all(n == length for n in lengths), f"{name}: history lengths {set(lengths)}, want {length}")


def feeder(
    url: str, frames: Sequence[bytes], warmup: int, mode: str, round_size: int, table: Table, check: bool
) -> Run:
    return asyncio.run(_feeder(url, frames, warmup, mode, round_size, table, check))


def _check_reference(url: str, frames: Sequence[bytes], table: Table) -> None:
    client = redis.Redis.from_url(url)
    try:
        want: dict[str, int] = {}
        for frame in frames:
            obj = orjson.loads(frame)
            want[obj["stream"].split("@")[0].upper()] = obj["data"]["lastUpdateId"]
        pipe = client.pipeline(transaction=False)
        for symbol in want:
            pipe.hget(f"ref:binance:{symbol}", "xid")
        got = [int(x) for x in pipe.execute()]
        table.check(got == list(want.values()), "reference: stored xids differ from the last frames")
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------ run
FEEDER_MODES = (
    "lock-step",
    "flat out",
    "flat out, every frame decoded",
    "writer only",
    f"lock-step, history {HISTORY}",
)


def run(ctx: Context) -> list[Table]:
    symbols = [f"S{i:03d}USDT" for i in range(20 if ctx.quick else 200)]
    rounds = 4 if ctx.quick else 60
    # as bytes, which is what the feeder gets from websockets (and what orjson reads fastest)
    frames = [f.encode() for f in binance_depth20_frames(len(symbols) * rounds, symbols=symbols)]
    warmup = len(symbols)  # the first round: script load, indexes, connections
    table = Table(
        "write",
        f"write: Binance depth20 books/s into Redis ({len(symbols)} symbols x {rounds - 1} timed rounds, "
        f"{len(frames) - warmup:,} books)",
        ["path", "submitted/s", "written/s", "coalesced", "batches", "µs/submitted", "submitted ÷ ref",
         "written ÷ ref", f"target ≥{TARGET}x"],
    )  # fmt: skip
    repeats = 1 if ctx.quick else 3
    best: dict[str, Run] = {}

    def keep(result: Run) -> None:
        if result.name not in best or result.seconds < best[result.name].seconds:
            best[result.name] = result

    for _ in range(repeats):
        url = ctx.redis().url  # flushed before every run: ordering ids start again
        keep(reference_sync(url, frames, warmup))
        _check_reference(url, frames, table)
        url = ctx.redis().url
        keep(reference_async(url, frames, warmup))
        _check_reference(url, frames, table)
        for mode in FEEDER_MODES:
            url = ctx.redis().url
            keep(feeder(url, frames, warmup, mode, len(symbols), table, ctx.quick))

    refs = [best["reference, sync"], best["reference, asyncio"]]
    reference = max(refs, key=lambda r: r.written / r.seconds)
    ref_rate = reference.written / reference.seconds
    for result in (*refs, *(best[f"feeder, {mode}"] for mode in FEEDER_MODES)):
        submitted_rate = result.submitted / result.seconds
        written_rate = result.written / result.seconds
        target = ""
        # lock-step writes every book: judged on written/s; flat out on the books it keeps up with (submitted/s:
        # every one decoded, then written or superseded by a newer book of its symbol before it was written)
        judged = {"feeder, lock-step": written_rate, "feeder, flat out": submitted_rate}.get(result.name)
        if judged is not None:
            verdict = "pass" if judged / ref_rate >= TARGET else "FAIL"
            target = (
                "n/a (quick)"
                if ctx.quick
                else f"{verdict} ({'written' if judged is written_rate else 'submitted'})"
            )
        table.add(
            result.name, submitted_rate, written_rate, result.coalesced, result.batches or "",
            1e6 / submitted_rate, round(submitted_rate / ref_rate, 2), round(written_rate / ref_rate, 2), target,
        )  # fmt: skip
    table.note(
        f"ref = {reference.name} (the faster reference): orjson.loads + HSET + PUBLISH per book, batches of {REF_BATCH}"
    )
    table.note(
        "target: lock-step on written/s (every book decoded and written, like the reference); flat out on "
        "submitted/s (every frame read; decoded and written, or superseded by a newer one of its symbol first)"
    )
    table.note(
        f"flat out / writer only: a yield to the event loop every {CHUNK} frames; clock stops when flushed"
    )
    table.note(f"best of {repeats} alternating runs; the first round of each run is an untimed warm-up")
    return [table]
