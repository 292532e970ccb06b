"""Flows: every round trip to Redis, written once, for the sync and the asyncio client alike.

A flow is a generator that yields the list of commands of one round trip and is sent back their replies
(errors as values, in order); what it returns is the result. It does no I/O itself: `client.transport` drives
it with a sync or an asyncio client, so the logic that matters (which commands, how replies are read, what a
NOSCRIPT means) cannot differ between the two. A driver may also throw a connection error into the flow at
its ``yield``, which lets a flow turn "Redis is away" into a result of its own.

Flows compose with ``yield from``: the provider's read is resolve, then read books, then feeder states.
"""

from __future__ import annotations

from collections.abc import Container, Generator, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from redis.exceptions import NoScriptError

from client.layout.codec import READ_FIELDS, Command, EncodedBook
from client.layout.feeder_record import OFFLINE, OFFLINE_KEEP_SECONDS, STATE_FIELD, FeederRecord
from client.layout.names import RedisLayout
from client.layout.scripts import MARK_DOWN, WRITE_BOOK

T = TypeVar("T")
Flow = Generator[list[Command], list[Any], T]
"""A flow that returns a `T`: yields the commands of each round trip, is sent their replies."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raise_errors(replies: Iterable[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


# --------------------------------------------------------------------------------------------- writes
def write_flow(
    layout: RedisLayout, books: Sequence[EncodedBook], *, indexed: Container[str] = ()
) -> Flow[list[int]]:
    """Write books in one pipelined round trip; returns each book's new seq, 0 where rejected by ordering.

    The symbol and exchange indexes and the per-exchange "last written" pointer are updated in the same
    pipeline (not inside the script: they live in other Cluster slots). Books whose key is in `indexed` skip
    the index update: a feeder remembers what it already indexed since Redis last came back.
    """
    sha = WRITE_BOOK.sha
    commands: list[Command] = [("EVALSHA", sha, 1, book.key, *book.args) for book in books]
    last: dict[str, str] = {}
    new_exchanges: set[str] = set()
    for book in books:
        if book.key not in indexed:
            commands.append(("SADD", layout.symbols_key(book.exchange), book.symbol))
            new_exchanges.add(book.exchange)
        last[book.exchange] = book.symbol
    if new_exchanges:
        commands.append(("SADD", layout.exchanges_key(), *sorted(new_exchanges)))
    for exchange, symbol in last.items():
        commands.append(("SET", layout.last_key(exchange), symbol))
    replies = yield commands
    results: list[int] = [0] * len(books)
    retry: list[int] = []
    for i in range(len(books)):
        reply = replies[i]
        if isinstance(reply, NoScriptError):
            retry.append(i)
        elif isinstance(reply, Exception):
            raise reply
        else:
            results[i] = int(reply)
    _raise_errors(replies[len(books) :])
    if retry:
        # Redis restarted (or SCRIPT FLUSH): NOSCRIPT means nothing ran, so loading and retrying is safe.
        replies = yield [("SCRIPT", "LOAD", WRITE_BOOK.source)] + [books[i].script_command() for i in retry]
        _raise_errors(replies)
        for i, reply in zip(retry, replies[1:], strict=True):
            results[i] = int(reply)
    return results


def mark_down_flow(layout: RedisLayout, writer: str, books: Iterable[tuple[str, str]]) -> Flow[int]:
    """Mark the writer's books of these (exchange, symbol) pairs not live; returns how many it marked."""
    commands: list[Command] = []
    for exchange, symbol in books:
        payload = orjson.dumps({"exchange": exchange, "symbol": symbol, "feeder": writer, "live": False})[1:]
        commands.append(("EVALSHA", MARK_DOWN.sha, 1, layout.book_key(exchange, symbol), writer, payload))
    if not commands:
        return 0
    replies = yield commands
    if any(isinstance(r, NoScriptError) for r in replies):
        replies = (yield [("SCRIPT", "LOAD", MARK_DOWN.source), *commands])[1:]
    _raise_errors(replies)
    return sum(int(r) for r in replies)


# --------------------------------------------------------------------------------------------- reads
def read_book_command(key: str) -> Command:
    """The read of one book: the fields a reader needs (`READ_FIELDS`, decoded by `decode_book_fields`)."""
    return ("HMGET", key, *READ_FIELDS)


def read_books_flow(
    layout: RedisLayout, keys: Sequence[str], feeders: Sequence[str] = ()
) -> Flow[tuple[list[Any], dict[str, Any]]]:
    """The raw fields of each book (errors as values) and, in the same round trip, the state of `feeders`."""
    if not keys and not feeders:
        return [], {}
    replies = yield [read_book_command(k) for k in keys] + [
        ("HGET", layout.feeder_key(f), STATE_FIELD) for f in feeders
    ]
    return replies[: len(keys)], dict(zip(feeders, replies[len(keys) :], strict=True))


def indexed_books_flow(
    layout: RedisLayout, exchanges: Iterable[str] | None = None
) -> Flow[list[tuple[str, str]]]:
    """Every (exchange, symbol) in the indexes of `exchanges` (None: every indexed exchange), sorted."""
    if exchanges is None:
        replies = yield [("SMEMBERS", layout.exchanges_key())]
        names = sorted(_text(x) for x in replies[0])
    else:
        names = sorted(exchanges)
    if not names:
        return []
    replies = yield [("SMEMBERS", layout.symbols_key(ex)) for ex in names]
    _raise_errors(replies)
    return [(ex, _text(s)) for ex, members in zip(names, replies, strict=True) for s in sorted(members)]


def carriers_flow(layout: RedisLayout, symbols: Sequence[str]) -> Flow[dict[str, list[str]]]:
    """For each bare symbol, the exchanges whose index holds it (in exchange order; [] when none)."""
    carriers: dict[str, list[str]] = {s: [] for s in symbols}
    if not carriers:
        return carriers
    replies = yield [("SMEMBERS", layout.exchanges_key())]
    exchanges = sorted(_text(x) for x in replies[0])
    if exchanges:
        pairs = [(s, ex) for s in carriers for ex in exchanges]
        replies = yield [("SISMEMBER", layout.symbols_key(ex), s) for s, ex in pairs]
        for (s, ex), member in zip(pairs, replies, strict=True):
            if member:
                carriers[s].append(ex)
    return carriers


def last_symbol_flow(layout: RedisLayout, exchange: str) -> Flow[str | None]:
    """The symbol most recently written on `exchange` (the legacy ``snapshot_<exchange>``), or None."""
    replies = yield [("GET", layout.last_key(exchange))]
    _raise_errors(replies)
    return None if replies[0] is None else _text(replies[0])


def scan_flow(pattern: str, count: int = 1000) -> Flow[list[bytes | str]]:
    """Every key matching `pattern` (SCAN until the cursor comes back to 0), sorted, without duplicates."""
    cursor: Any = 0
    found: set[bytes | str] = set()
    while True:
        replies = yield [("SCAN", cursor, "MATCH", pattern, "COUNT", count)]
        _raise_errors(replies)
        cursor, keys = replies[0]
        found.update(keys)
        if int(cursor) == 0:
            return sorted(found)


# --------------------------------------------------------------------------------------------- feeder record
def feeder_states_flow(layout: RedisLayout, feeders: Sequence[str]) -> Flow[dict[str, Any]]:
    """The ``state`` of each feeder's record: None once it expired, an error value if unreadable."""
    if not feeders:
        return {}
    replies = yield [("HGET", layout.feeder_key(f), STATE_FIELD) for f in feeders]
    return dict(zip(feeders, replies, strict=True))


def heartbeat_flow(layout: RedisLayout, feeder_id: str, record: FeederRecord, ttl_ms: int) -> Flow[None]:
    """Write a feeder's record and push its expiry `ttl_ms` out: its books stay live until then."""
    key = layout.feeder_key(feeder_id)
    replies = yield [("HSET", key, *record.flat()), ("PEXPIRE", key, ttl_ms)]
    _raise_errors(replies)


def offline_flow(layout: RedisLayout, feeder_id: str, record: FeederRecord) -> Flow[None]:
    """Write a feeder's last record, ``state`` offline, kept `OFFLINE_KEEP_SECONDS` for operators to read."""
    key = layout.feeder_key(feeder_id)
    assert record.state == OFFLINE
    replies = yield [("HSET", key, *record.flat()), ("EXPIRE", key, OFFLINE_KEEP_SECONDS)]
    _raise_errors(replies)


def feeder_records_flow(layout: RedisLayout) -> Flow[list[tuple[str, Any, Any]]]:
    """Every feeder record: (key, its fields or an error value, its PTTL in ms), sorted by key."""
    keys = yield from scan_flow(layout.feeder_pattern())
    if not keys:
        return []
    replies = yield [("HGETALL", k) for k in keys] + [("PTTL", k) for k in keys]
    return [(_text(k), replies[i], replies[len(keys) + i]) for i, k in enumerate(keys)]
