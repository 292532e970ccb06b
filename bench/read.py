"""Read cost for an engine: read-through, batch and mirror reads against the old in-process dict lookup, and
what mirror mode costs per update instead (one message received and applied).

Targets (2-core machine): mirror read ≤ 5 µs, read-through p50 ≤ 100 µs, batch of 100 ≤ 2 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from bench.report import Context, Table, percentile
from client import OrderBookSnapshot, RedisMarketDataProvider
from client.layout import (
    RedisLayout,
    StoredBook,
    decode_message_book,
    decode_message_head,
    encode_book,
    write_flow,
)
from client.mirror import BookCache
from client.transport import PubSubSource, receive_replies, run_flow


def _book(symbol: str, i: int, levels: int = 15) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        symbol,
        1_700_000_000.0 + i,
        [(100_000.0 - j * 10, 0.5 + j) for j in range(levels)],
        [(100_010.0 + j * 10, 0.25 + j) for j in range(levels)],
        xid=i,
        recv_ts=time.time(),
    )


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return samples


def _row(table: Table, name: str, samples: list[float], per_call: int, target: str, ok: bool | None) -> None:
    us = [s * 1e6 for s in samples]
    verdict = "" if ok is None else ("met" if ok else "NOT met")
    table.add(name, per_call, percentile(us, 50), percentile(us, 99), percentile(us, 99.9), target, verdict)


_REFERENCE_CHUNK = 40  # messages per CPU-time sample of the reference (about one receive's batch)


def _publish_all(client: redis.Redis, messages: list[tuple[str, bytes]], table: Table) -> None:
    pipe = client.pipeline(transaction=False)
    for key, data in messages:
        pipe.publish(key, data)
    receivers = pipe.execute()
    table.check(all(r >= 1 for r in receivers), "mirror update: a message had no subscriber")


def _mirror_updates(
    client: redis.Redis, layout: RedisLayout, symbols: list[str], first: int, count: int, table: Table
) -> tuple[list[float], list[float], list[float]]:
    """Time what a mirror's subscriber does per update, and what the first read of an updated book adds.

    Returns (subscriber, first read, reference) samples in seconds per update: the thread's CPU time for the
    subscriber's receive (`receive_replies`, from hiredis's buffer) and the cache's apply of each message,
    per batch shared by the batch's messages; the wall time of the read that decodes a book applied that way;
    and, as the reference, the CPU time of redis-py's ``get_message`` plus a whole decode of each message
    (what the mirror did before it decoded lazily), per 40 messages. CPU time, because the machine is shared:
    the wall time of one call also counts whatever else ran on the core meanwhile.
    """
    messages = []
    for i in range(2 * count):
        version = first + i // len(symbols)
        book = _book(symbols[i % len(symbols)], version)
        encoded = encode_book(layout, book, exchange="upbit", writer="bench", heartbeat=True)
        now = time.time()
        messages.append((encoded.key, encoded.message(version, f"{now:.3f}", f"{now:.6f}", "bench")))
    ours, reference = messages[:count], messages[count:]
    cache = BookCache(layout)
    run_flow(client, cache.reload_flow([k for k, _ in ours[: len(symbols)]]))  # the mirror holds every book
    source = PubSubSource(client)  # the mirror's own: RESP2 for a plain client
    pubsub = source.pubsub()
    clock, cpu = time.perf_counter, time.thread_time
    subscriber: list[float] = []
    reads: list[float] = []
    samples: list[float] = []
    try:
        pubsub.psubscribe(layout.book_pattern("upbit"))
        deadline = time.monotonic() + 5
        while client.pubsub_numpat() < 1:  # the server has the subscription: nothing published is lost
            receive_replies(pubsub, 0.01)
            if time.monotonic() > deadline:
                raise TimeoutError("PSUBSCRIBE not confirmed")
        _publish_all(client, ours, table)
        apply, book_of = cache.apply, cache.book
        next_read = len(symbols)
        deadline = time.monotonic() + 30
        while len(subscriber) < count and time.monotonic() < deadline:
            t0 = cpu()
            replies = receive_replies(pubsub, 1)
            messages = [r for r in replies if r[0] == b"pmessage"]  # not the PSUBSCRIBE confirmation
            for reply in messages:
                apply(reply[-2], reply[-1])
            if messages:
                subscriber += [(cpu() - t0) / len(messages)] * len(messages)
            if len(subscriber) >= next_read:  # a round of versions applied: read each book once (untimed
                next_read += len(symbols)  # receives in between)
                for key, _ in ours[: len(symbols)]:
                    t1 = clock()
                    book_of(key)
                    reads.append(clock() - t1)
        _publish_all(client, reference, table)
        get = pubsub.get_message
        while len(samples) < count and time.monotonic() < deadline:
            t0 = cpu()
            taken = 0
            while taken < _REFERENCE_CHUNK:
                message = get(timeout=1)
                if message is None:
                    break
                key = message["channel"].decode()
                decode_message_book(layout, key, decode_message_head(message["data"]))
                taken += 1
            if taken:
                samples += [(cpu() - t0) / taken] * taken
    finally:
        pubsub.close()
        source.close()
    table.check(len(subscriber) == count, f"mirror update: {len(subscriber)} of {count} messages arrived")
    table.check(len(samples) == count, f"mirror update (reference): {len(samples)} of {count} arrived")
    key, data = ours[-1]
    held = cache.book(key)
    table.check(
        isinstance(held, StoredBook) and held.seq == first + (count - 1) // len(symbols),
        "mirror update: the cache does not hold the last message",
    )
    return subscriber, reads, samples


def run(ctx: Context) -> list[Table]:
    n = 200 if ctx.quick else 20_000
    server = ctx.redis()
    client = redis.Redis.from_url(server.url)
    layout = RedisLayout()
    symbols = [f"KRW-R{i:03d}" for i in range(100)]
    books = {s: _book(s, 1) for s in symbols}
    client.hset("md:feeder:bench", mapping={"state": "running"})
    encoded = [
        encode_book(layout, b, exchange="upbit", writer="bench", heartbeat=True) for b in books.values()
    ]
    run_flow(client, write_flow(layout, encoded))

    table = Table(
        "read",
        "read: one book as an engine sees it (µs per call; 15 levels a side)",
        ["read", "books/call", "p50 µs", "p99 µs", "p99.9 µs", "target", ""],
    )
    legacy = {s: books[s] for s in symbols}  # the old in-process provider: a dict of snapshots
    _row(
        table,
        "dict lookup (old in-process provider)",
        _timed(lambda: legacy.get("KRW-R007"), n),
        1,
        "reference",
        None,
    )

    ping = _timed(client.ping, n)
    _row(table, "redis PING round trip (the floor of a read-through)", ping, 0, "reference", None)
    with RedisMarketDataProvider(redis=client) as through:
        for s in symbols:  # warm the resolution and feeder caches, as a running engine has them
            through.get_latest_snapshot(s)
        one = _timed(lambda: through.get_latest_snapshot("KRW-R007"), n)
        _row(table, "read-through get_latest_snapshot", one, 1, "p50 ≤ 100", percentile(one, 50) <= 100e-6)
        batch = _timed(lambda: through.get_latest_snapshots(symbols), max(20, n // 50))
        _row(table, "read-through batch of 100", batch, 100, "p50 ≤ 2000", percentile(batch, 50) <= 2e-3)
        table.check(through.get_latest_snapshots(symbols) == books, "read-through returned other books")
        # the same batch when every book changed since the previous read (each one decoded again)
        version = [1]

        def rewrite() -> None:
            version[0] += 1
            fresh = [_book(s, version[0]) for s in symbols]
            run_flow(client, write_flow(layout, [encode_book(layout, b, exchange="upbit", writer="bench",
                                                             heartbeat=True) for b in fresh]))  # fmt: skip

        changed: list[float] = []
        for _ in range(max(10, n // 100)):
            rewrite()  # untimed
            changed += _timed(lambda: through.get_latest_snapshots(symbols), 1)
        _row(
            table,
            "read-through batch of 100, all changed",
            changed,
            100,
            "p50 ≤ 2000",
            percentile(changed, 50) <= 2e-3,
        )
        table.check(
            all(
                b is not None and b.xid == version[0] for b in through.get_latest_snapshots(symbols).values()
            ),
            "read-through served a book older than Redis holds",
        )
        books = {s: _book(s, version[0]) for s in symbols}

    with RedisMarketDataProvider(redis=redis.Redis.from_url(server.url), mode="mirror") as mirror:
        got = _timed(lambda: mirror.get_latest_snapshot("KRW-R007"), n)
        _row(table, "mirror get_latest_snapshot", got, 1, "p50 ≤ 5", percentile(got, 50) <= 5e-6)
        batch = _timed(lambda: mirror.get_latest_snapshots(symbols), max(20, n // 50))
        _row(table, "mirror batch of 100", batch, 100, "", None)
        table.check(mirror.get_latest_snapshots(symbols) == books, "mirror returned other books")
        table.check(mirror.get_latest_snapshot("KRW-R007") == books["KRW-R007"], "mirror read differs")
    updates, first_reads, before = _mirror_updates(
        client, layout, symbols, version[0] + 1, 200 if ctx.quick else 4000, table
    )
    _row(table, "mirror update: get_message + whole decode (before)", before, 1, "reference", None)
    _row(table, "mirror update: received and applied", updates, 1, "p50 ≤ 4", percentile(updates, 50) <= 4e-6)
    _row(table, "mirror: first read of an updated book (decode)", first_reads, 1, "", None)
    table.note(
        "mirror update: the subscriber thread's CPU time per update of a mirrored book (thread_time per batch "
        "of replies taken from hiredis's buffer, shared by its messages; each applied on its seq); the book is "
        "decoded by the first read of that version, which the next row times (wall clock). The reference is "
        "how the mirror took an update before: redis-py get_message and a whole decode (CPU per 40 messages)"
    )
    table.note(
        "each call timed alone with perf_counter (adds ~0.1 µs); the client and redis-server share the host"
    )
    client.close()
    return [table]
