"""The mirror's state: the mirrored books, the feeder states that judge them, and what to mirror.

`BookCache` is pure code (no I/O): it applies pub/sub messages and full re-reads, ignores anything older than
what it holds, reports ``seq`` gaps (a lost message) so the key is re-read, and hands every accepted live book
to the registered consumers. `MirrorPlan` says which channels and patterns to subscribe and builds the flows
that (re-)load the mirrored books; the subscriber (`client.mirror.subscriber`) runs them.

Consumers (`client.mirror.updates`) register from any thread while the subscriber publishes from its own:
registration takes a lock and replaces the tuple the subscriber iterates over, so publishing never sees a
list change under it and never takes the lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
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
)
from client.mirror.updates import Consumer
from client.models import OrderBookSnapshot

log = logging.getLogger("client.mirror")


@dataclass
class BookCache:
    """The mirrored books and the feeder states that judge them; fed by a subscriber, read by the provider."""

    layout: RedisLayout
    books: dict[str, StoredBook] = field(default_factory=dict)
    by_symbol: dict[str, list[str]] = field(default_factory=dict)  # symbol -> keys (bare-symbol resolution)
    feeder_states: dict[str, Any] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)  # feeders whose last known state is alive
    connected: bool = False
    unknown_feeders: set[str] = field(default_factory=set)
    consumers: tuple[Consumer, ...] = ()
    messages: int = 0
    gaps: int = 0
    reloads: int = 0
    _consumers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------------------------------ consumers
    def add_consumer(self, consumer: Consumer) -> None:
        with self._consumers_lock:
            self.consumers = (*self.consumers, consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        with self._consumers_lock:
            self.consumers = tuple(c for c in self.consumers if c is not consumer)

    # ------------------------------------------------------------------------------------------ applying
    def load(self, key: str, raw: Any) -> None:
        """Apply a full read of one key (`read_book_command`); it replaces the copy unless the copy is newer."""
        try:
            book = decode_book_fields(self.layout, key, raw)
        except CorruptSnapshotError as exc:
            log.warning("mirror: ignoring %s", exc)
            return
        if book is None:
            return
        current = self.books.get(key)
        if current is None or book.seq >= current.seq:
            self._store(key, book, current is None)

    def apply(self, channel: bytes | str, data: bytes | str) -> str | None:
        """Apply one pub/sub message; returns a key to re-read when a ``seq`` gap shows a lost message."""
        self.messages += 1
        key = channel.decode() if isinstance(channel, bytes) else channel
        try:
            head = decode_message_head(data)
        except ValueError:
            log.warning("mirror: ignoring a malformed message on %s", key)
            return None
        seq = head.seq
        current = self.books.get(key)
        if not head.live:
            if current is not None and seq >= current.seq and current.live:
                self.books[key] = replace(current, live=False)
            return None
        if current is not None and seq <= current.seq:
            return None  # already have it (or newer): e.g. a message that raced the initial load
        try:
            book = decode_message_book(self.layout, key, head)
        except ValueError:
            log.warning("mirror: ignoring a malformed book message on %s", key)
            return key
        self._store(key, book, current is None)
        self._publish(key, book.snapshot, current.seq if current is not None else None)
        if current is not None and seq > current.seq + 1:
            self.gaps += 1
            return key  # a message was lost: the message is a whole book, but re-read to be sure
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

    def _store(self, key: str, book: StoredBook, new: bool) -> None:
        self.books[key] = book
        if new:
            self.by_symbol.setdefault(book.snapshot.symbol, []).append(key)
        if book.heartbeat and book.feeder not in self.feeder_states:
            self.unknown_feeders.add(book.feeder)

    def _publish(self, key: str, snapshot: OrderBookSnapshot, previous_seq: int | None) -> None:
        for consumer in self.consumers:
            if consumer.wants(key):
                consumer.push(key, snapshot, previous_seq)

    def feeders(self) -> list[str]:
        return sorted({b.feeder for b in self.books.values() if b.heartbeat} | self.unknown_feeders)

    # ------------------------------------------------------------------------------------------ flows
    def feeder_refresh_flow(self) -> Flow[None]:
        """Read the state of every feeder the cache's books depend on."""
        feeders = self.feeders()
        if feeders:
            self.set_feeder_states((yield from feeder_states_flow(self.layout, feeders)))

    def reload_flow(self, keys: Iterable[str]) -> Flow[None]:
        """Re-read these books whole."""
        ordered = sorted(set(keys))
        raws, _ = yield from read_books_flow(self.layout, ordered)
        for key, raw in zip(ordered, raws, strict=True):
            if not isinstance(raw, Exception):
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

    def load_flow(self, cache: BookCache) -> Flow[None]:
        """Read every mirrored book and the state of their feeders."""
        keys = set(self.keys)
        if self.exchanges is not None:
            pairs = yield from indexed_books_flow(self.layout, self.exchanges or None)
            for exchange, symbol in pairs:
                with contextlib.suppress(InvalidSymbolError):
                    keys.add(self.layout.book_key(exchange, symbol))
        yield from cache.reload_flow(keys)
        cache.reloads += 1
        yield from cache.feeder_refresh_flow()
