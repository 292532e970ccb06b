"""The mirror's state: the mirrored books, the feeder states that judge them, and what to mirror.

`BookCache` is pure code (no I/O): it applies pub/sub messages and full re-reads, ignores anything older than
what it holds, reports ``seq`` gaps (a lost message) so the key is re-read, and hands every accepted live book
to the registered consumers. `MirrorPlan` says which channels and patterns to subscribe and builds the flows
that (re-)load the mirrored books; the subscriber (`client.mirror.subscriber`) runs them.

Most mirrored updates are replaced by the next one before anything reads them, so a write message in the
script's own form is applied on its ``seq`` alone (`write_message_seq`) and kept as it came (`PendingBook`);
its book is decoded, and checked, when it is first read (`BookCache.book`). A message that does not decode
then is a corrupt book (the read answers None) and the key is re-read from Redis, which decides.

Consumers (`client.mirror.updates`) register from any thread while the subscriber publishes from its own:
registration takes a lock and replaces the tuple the subscriber iterates over, so publishing never sees a
list change under it and never takes the lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from client.errors import CorruptSnapshotError, InvalidSymbolError
from client.layout import (
    Flow,
    RedisLayout,
    StoredBook,
    decode_book_fields,
    decode_message_book,
    decode_message_head,
    feeder_alive,
    feeder_states_flow,
    indexed_books_flow,
    read_books_flow,
    write_message_seq,
)
from client.mirror.updates import Consumer

log = logging.getLogger("client.mirror")

HEALTH_TIMEOUT = 1.0  # seconds without any answer from Redis after which the mirror's books are unavailable


class PendingBook:
    """A write message applied without decoding it: the next version of a book the cache holds, decoded when
    first read. Until then the holders and heartbeat flag are the previous version's (`BookCache.feeders`)."""

    __slots__ = ("data", "heartbeat", "holders", "result", "seq")

    def __init__(self, seq: int, data: bytes, previous: StoredBook | PendingBook) -> None:
        self.seq = seq
        self.data = data
        self.holders: tuple[str, ...] = previous.holders
        self.heartbeat: bool = previous.heartbeat
        self.result: StoredBook | CorruptSnapshotError | None = None  # the decoded book, once read


@dataclass
class BookCache:
    """The mirrored books and the feeder states that judge them; fed by a subscriber, read by the provider."""

    layout: RedisLayout
    books: dict[str, StoredBook | PendingBook] = field(default_factory=dict)  # read them with `book`
    by_symbol: dict[str, list[str]] = field(default_factory=dict)  # symbol -> keys (bare-symbol resolution)
    feeder_states: dict[str, Any] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)  # feeders whose last known state is alive
    clock_offset: float = 0.0  # Redis's clock minus this host's, as last measured
    connected: bool = False
    heard: float = 0.0  # time.monotonic() of the last answer from Redis (a message, a pong, a round trip)
    unknown_feeders: set[str] = field(default_factory=set)
    consumers: tuple[Consumer, ...] = ()
    messages: int = 0
    gaps: int = 0
    reloads: int = 0
    errors: int = 0  # sessions ended by an unexpected error (logged with the traceback)
    # (exchange, seconds from Redis accepting a version to this cache applying it): opt-in latency metrics
    on_seen: Callable[[str, float], None] | None = None
    _consumers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reloads: set[str] = field(default_factory=set, repr=False)  # keys a read found corrupt: re-read them

    # ------------------------------------------------------------------------------------------ reading
    def book(self, key: str) -> StoredBook | CorruptSnapshotError | None:
        """The book the cache holds for `key`, decoded if it came as a pending message (from any thread: the
        decoded book is kept on the message, never written back over what the subscriber may have stored)."""
        entry = self.books.get(key)
        if type(entry) is PendingBook:
            return self._resolve(key, entry)
        return entry  # type: ignore[return-value]  # StoredBook or None

    def _resolve(self, key: str, pending: PendingBook) -> StoredBook | CorruptSnapshotError:
        result = pending.result
        if result is None:
            try:
                result = decode_message_book(self.layout, key, decode_message_head(pending.data))
            except ValueError as exc:
                log.warning("mirror: a malformed book message on %s; re-reading it", key)
                result = CorruptSnapshotError(key, "message", str(exc))
                self._reloads.add(key)
            else:
                self._note_feeders(result)
            pending.result = result
        return result

    def take_reloads(self) -> set[str]:
        """The keys reads found corrupt since the last call (the subscriber re-reads them)."""
        keys = set()
        with contextlib.suppress(KeyError):
            while True:
                keys.add(self._reloads.pop())  # one atomic pop at a time: readers add from other threads
        return keys

    # ------------------------------------------------------------------------------------------ consumers
    def add_consumer(self, consumer: Consumer) -> None:
        with self._consumers_lock:
            self.consumers = (*self.consumers, consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        with self._consumers_lock:
            self.consumers = tuple(c for c in self.consumers if c is not consumer)

    # ------------------------------------------------------------------------------------------ applying
    def load(self, key: str, raw: Any) -> None:
        """Apply a full read of one key (`read_book_command`): what Redis holds replaces the local copy, even
        with a lower ``seq`` (Redis restarted or failed over); a book Redis no longer holds is dropped."""
        try:
            book = decode_book_fields(self.layout, key, raw)
        except CorruptSnapshotError as exc:
            log.warning("mirror: ignoring %s", exc)
            book = None
        held = self.books.get(key)
        if book is None:
            if held is not None:
                self._drop(key)
            return
        current = self.book(key)
        self._store(key, book)
        if held is not None and (
            held.seq != book.seq
            or not isinstance(current, StoredBook)
            or current.snapshot.xid != book.snapshot.xid
        ):
            self._publish(key, book, held.seq)  # an update the messages did not bring

    def apply(self, channel: bytes | str, data: bytes | str) -> str | None:
        """Apply one pub/sub message; returns a key to re-read when the message does not fit what the cache
        holds (a lost message, a ``seq`` out of step after a Redis restart, a malformed or forged book).

        A message is only a hint: Redis is the truth, and a re-read replaces the local copy whatever it holds.
        """
        self.messages += 1
        key = channel.decode() if isinstance(channel, bytes) else channel
        held = self.books.get(key)
        if held is not None and self.on_seen is None:
            seq = write_message_seq(data)  # the next version, that no consumer waits for: kept as it came
            if seq == held.seq + 1 and not (self.consumers and self._wanted(key)):
                self.books[key] = PendingBook(seq, data, held)  # type: ignore[arg-type]  # bytes, as checked
                return None
        current = self.book(key)
        if not isinstance(current, StoredBook):
            current = None  # a corrupt pending book is being re-read: judge this message on its own
        try:
            head = decode_message_head(data)
        except ValueError:
            log.warning("mirror: ignoring a malformed message on %s", key)
            return None
        seq = head.seq
        if not head.has_book:  # a status message: who holds the version `seq`, and whether it is live
            if current is not None and seq == current.seq:
                holders = head.holders if head.holders is not None else (current.holders if head.live else ())
                updated = self.books[key] = replace(current, live=head.live, holders=holders)
                self._note_feeders(updated)
                return None
            return key if current is not None and seq > current.seq else None
        if current is not None:
            if seq <= current.seq:
                xid = head.fields.get("xid")
                same = seq == current.seq and xid == current.snapshot.xid
                older = seq < current.seq and isinstance(xid, int) and xid <= (current.snapshot.xid or 0)
                return None if same or older else key  # newer content under an old seq: re-read
            if seq > current.seq + 1:
                self.gaps += 1
                return key  # a message was lost (or forged): what Redis holds decides
        try:
            book = decode_message_book(self.layout, key, head)
        except ValueError:
            log.warning("mirror: ignoring a malformed book message on %s", key)
            return key
        if self.on_seen is not None and book.wts is not None:
            self.on_seen(book.snapshot.exchange or "", time.time() + self.clock_offset - book.wts)
        self._store(key, book)
        self._publish(key, book, current.seq if current is not None else None)
        return None

    def set_feeder_states(self, states: dict[str, Any]) -> None:
        """Take the feeder states just read (an unreadable one keeps its last known state)."""
        for feeder, state in states.items():
            if isinstance(state, Exception):
                continue
            self.feeder_states[feeder] = state
            if feeder_alive(state):
                self.alive.add(feeder)
            else:
                self.alive.discard(feeder)
        self.unknown_feeders.difference_update(states)

    def _store(self, key: str, book: StoredBook) -> None:
        if key not in self.books:
            self.by_symbol.setdefault(book.snapshot.symbol, []).append(key)
        self.books[key] = book
        self._note_feeders(book)

    def _note_feeders(self, book: StoredBook) -> None:
        if book.heartbeat:
            for holder in book.holders:
                if holder not in self.feeder_states:
                    self.unknown_feeders.add(holder)

    def _drop(self, key: str) -> None:
        del self.books[key]
        symbol = self.layout.parse_book_key(key)[1]
        keys = self.by_symbol.get(symbol)
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self.by_symbol[symbol]

    def _wanted(self, key: str) -> bool:
        """Whether a consumer takes updates of `key` (they get every version decoded, as it arrives)."""
        return any(consumer.wants(key) for consumer in self.consumers)

    def _publish(self, key: str, book: StoredBook, previous_seq: int | None) -> None:
        for consumer in self.consumers:
            if consumer.wants(key):
                consumer.push(key, book.snapshot, previous_seq)

    def feeders(self) -> list[str]:
        held = {h for b in self.books.values() if b.heartbeat for h in b.holders}
        return sorted(held | self.unknown_feeders)

    def available(self) -> bool:
        """Synced with Redis, and Redis answered within `HEALTH_TIMEOUT` (a stopped Redis is seen in a second,
        even while the subscriber waits for a reply)."""
        return self.connected and time.monotonic() - self.heard <= HEALTH_TIMEOUT

    def redis_now(self) -> float:
        """Redis's clock, as this host estimates it from its own and the offset last measured."""
        return time.time() + self.clock_offset

    # ------------------------------------------------------------------------------------------ flows
    def feeder_refresh_flow(self) -> Flow[None]:
        """Read the state of every feeder the cache's books depend on, and Redis's clock."""
        before = time.time()
        states, now = yield from feeder_states_flow(self.layout, self.feeders())
        self.clock_offset = now - (before + time.time()) / 2
        self.set_feeder_states(states)

    def reload_flow(self, keys: Iterable[str]) -> Flow[None]:
        """Re-read these books whole: Redis's copy replaces the local one."""
        ordered = sorted(set(keys))
        if not ordered:
            return
        read = yield from read_books_flow(self.layout, ordered)
        for key, raw in zip(ordered, read.raws, strict=True):
            self.load(key, raw)


@dataclass
class MirrorPlan:
    """Channels and patterns to subscribe, and how to find the keys to (re-)load."""

    layout: RedisLayout
    keys: set[str] = field(default_factory=set)  # explicit book keys
    exchanges: set[str] | None = None  # whole exchanges; empty set = every exchange

    def channels(self) -> list[str]:
        return sorted(self.keys)

    def patterns(self) -> list[str]:
        if self.exchanges is None:
            return []
        if not self.exchanges:
            return [self.layout.book_pattern()]
        return [self.layout.book_pattern(ex) for ex in sorted(self.exchanges)]

    def covers(self, key: str) -> bool:
        if key in self.keys:
            return True
        if self.exchanges is None:
            return False
        return not self.exchanges or self.layout.exchange_of(key) in self.exchanges

    def wanted_flow(self) -> Flow[set[str]]:
        """The keys of every book this plan mirrors that Redis has now: the explicit keys, and the indexed books
        of the mirrored exchanges."""
        keys = set(self.keys)
        if self.exchanges is not None:
            pairs = yield from indexed_books_flow(self.layout, self.exchanges or None)
            for exchange, symbol in pairs:
                with contextlib.suppress(InvalidSymbolError):
                    keys.add(self.layout.book_key(exchange, symbol))
        return keys

    def load_flow(self, cache: BookCache) -> Flow[None]:
        """Read every mirrored book and the state of their feeders."""
        keys = yield from self.wanted_flow()
        keys.update(cache.books)  # a book Redis no longer holds (an empty restart) must leave the cache too
        yield from cache.reload_flow(keys)
        cache.reloads += 1
        yield from cache.feeder_refresh_flow()
