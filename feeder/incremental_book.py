"""Incremental order books kept in step with an exchange's stream: pure code, no I/O, no clock.

Bybit and OKX send a book's snapshot, then deltas: levels whose size changed (size 0: the level is gone). A
local copy is only as good as the chain of deltas applied to it: one lost, duplicated, reordered or corrupted
update and the copy drifts from the exchange's book while still looking like a book. `IncrementalBook` keeps
one symbol's copy and refuses to vouch for it the moment the chain breaks:

- a **snapshot** replaces the copy; once verified (checksum when the exchange sends one, not crossed) the book
  is live and `apply` returns its top levels;
- a **delta** is applied only while live and only when it continues the chain (`Chain`); the last one again
  (a duplicate) is ignored; anything else (a gap, an update out of order) and any delta after which the
  checksum disagrees or the book is crossed makes the book not live at once: `apply` returns `Resync`, the
  connection layer marks the book down and asks for a new snapshot, and deltas are ignored until a verified
  snapshot arrives.

A snapshot that starts a new sequence (Bybit's ``u=1`` after a service restart, OKX resetting ``seqId`` at
maintenance) is simply a snapshot: it replaces the copy whatever its ordering id. Whenever an applied update's
id is below the highest this book ever applied (a new snapshot's, or an OKX reset update's, whose link still
holds), `restarted` is set: the stored book's id in Redis must then stop guarding (the protocol emits
`SequenceRestart` before the book).
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from client.models import OrderBookSnapshot

RawLevel = tuple[str, str]
"""A level as the exchange wrote it: (price text, size text). The text is kept for checksums, which are
defined over the exchange's own spelling of the numbers."""

Checksum = Callable[[Sequence[RawLevel], Sequence[RawLevel]], int]
"""The exchange's checksum of a book, from its bids and asks (best first) as raw levels."""


class Chain(enum.Enum):
    """How an exchange chains its updates."""

    CONSECUTIVE = "consecutive"
    """Each update's id is the previous one's plus 1 (Bybit's ``u``)."""
    LINKED = "linked"
    """Each update names the id of the one before it (OKX's ``prevSeqId`` → ``seqId``); ids may go down at a
    reset, the link still holds."""


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """One decoded snapshot or delta of one symbol's book."""

    symbol: str
    timestamp: float  # exchange event time, epoch seconds
    bids: Sequence[RawLevel]
    asks: Sequence[RawLevel]
    seq: int  # the exchange's ordering id of this update (Bybit ``u``, OKX ``seqId``)
    snapshot: bool = False
    prev_seq: int | None = None  # LINKED chains: the id this update follows
    checksum: int | None = None  # None (or 0, which OKX sends since it deprecated the checksum): absent


@dataclass(frozen=True, slots=True)
class Resync:
    """The local book no longer matches the exchange's: it is not live; ask for a new snapshot."""

    symbol: str
    reason: str


class IncrementalBook:
    """One symbol's book from snapshots and deltas; see the module docstring."""

    def __init__(
        self, exchange: str, symbol: str, *, chain: Chain, depth: int, checksum: Checksum | None = None
    ) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.chain = chain
        self.depth = depth  # levels per side written out
        self._checksum = checksum
        self.live = False
        self.seq: int | None = None
        self.restarted = False  # the last update applied went below `_high`: the exchange restarted its ids
        self._high: int | None = None  # the highest id ever applied (kept across resets)
        self._prev: int | None = None  # LINKED: the prev_seq of the last update applied
        self._bids = _Side(descending=True)
        self._asks = _Side(descending=False)

    def apply(self, update: BookUpdate) -> OrderBookSnapshot | Resync | None:
        """Apply one update: the verified book's top `depth` levels, `Resync` when the chain or a check
        failed (the book is not live from now), or None (ignored: a duplicate, or waiting for a snapshot)."""
        self.restarted = False
        try:
            if update.snapshot:
                self._bids.replace(update.bids)
                self._asks.replace(update.asks)
                self.seq, self._prev = update.seq, update.prev_seq
                self.live = True
                return self._verified(update)
            if not self.live or self.seq is None:
                return None
            follows = self._follows(update)
            if follows is None:
                return None  # already applied
            if not follows:
                return self._lost(f"update {update.seq} does not follow {self.seq}")
            self._bids.apply(update.bids)
            self._asks.apply(update.asks)
        except BadLevel as exc:  # part of it may be applied: the copy is unknown now
            return self._lost(f"update {update.seq}: {exc}")
        self.seq, self._prev = update.seq, update.prev_seq
        return self._verified(update)

    def reset(self, reason: str) -> Resync:
        """The connection dropped or was resubscribed: nothing is known until the next snapshot."""
        return self._lost(reason)

    # --------------------------------------------------------------------------------------------- checks
    def _follows(self, update: BookUpdate) -> bool | None:
        """True: the next update; None: the last one again (a duplicate); False: anything else.

        Only the very last update counts as a duplicate: an older id may be a duplicate, or the exchange may
        have restarted its ids; ignoring it would leave the book live but frozen, so it is a break too.
        """
        last = self.seq
        assert last is not None
        if self.chain is Chain.CONSECUTIVE:
            if update.seq == last + 1:
                return True
            return None if update.seq == last else False
        if update.prev_seq == last:
            return True
        return None if (update.seq, update.prev_seq) == (last, self._prev) else False

    def _verified(self, update: BookUpdate) -> OrderBookSnapshot | Resync:
        high = self._high
        if high is None or update.seq >= high:
            self._high = update.seq
        else:
            self.restarted = True
            self._high = update.seq
        if self._checksum is not None and update.checksum:
            got = self._checksum(self._bids.raw(25), self._asks.raw(25))
            if got != update.checksum:
                return self._lost(f"checksum {got} != {update.checksum} after update {update.seq}")
        best_bid, best_ask = self._bids.best(), self._asks.best()
        if best_bid is not None and best_ask is not None and best_bid >= best_ask:
            return self._lost(f"crossed book after update {update.seq}: bid {best_bid} >= ask {best_ask}")
        return OrderBookSnapshot(
            self.symbol,
            update.timestamp,
            self._bids.top(self.depth),
            self._asks.top(self.depth),
            exchange=self.exchange,
            xid=update.seq,
        )

    def _lost(self, reason: str) -> Resync:
        self.live = False
        self.seq = None
        self._bids.replace(())
        self._asks.replace(())
        return Resync(self.symbol, reason)


_INF = float("inf")


class BadLevel(ValueError):
    """A level whose price or size is not a finite number, or not positive (a size may be 0: delete)."""


class _Side:
    """One side of a book, best first: three aligned lists, kept sorted by `bisect` on the signed prices.

    The `(price, size)` pairs are kept ready in order, so the top levels written after every update are one
    slice (C speed) instead of a loop over a dictionary; an update finds its level in ``O(log n)`` and an
    insertion or deletion moves the pointers after it (a ``memmove``: cheap for books of a few hundred levels).
    The raw text is kept for checksums, which are defined over the exchange's own spelling."""

    __slots__ = ("_keys", "_pairs", "_raws", "_sign")

    def __init__(self, *, descending: bool) -> None:
        self._sign = -1.0 if descending else 1.0  # keys sort ascending; bids are kept as negated prices
        self._keys: list[float] = []
        self._pairs: list[tuple[float, float]] = []
        self._raws: list[RawLevel] = []

    def replace(self, levels: Sequence[RawLevel]) -> None:
        self._keys.clear()
        self._pairs.clear()
        self._raws.clear()
        self.apply(levels)

    def apply(self, levels: Sequence[RawLevel]) -> None:
        keys, pairs, raws, sign = self._keys, self._pairs, self._raws, self._sign
        for raw in levels:
            try:
                price, size = float(raw[0]), float(raw[1])
            except (ValueError, TypeError, IndexError):
                raise BadLevel(f"level {raw!r:.60} is not two numbers") from None
            if not (0.0 < price < _INF and 0.0 <= size < _INF):  # NaN fails every comparison
                raise BadLevel(f"level {raw!r:.60} is out of range")
            key = sign * price
            i = bisect_left(keys, key)
            found = i < len(keys) and keys[i] == key
            if size == 0.0:
                if found:
                    del keys[i], pairs[i], raws[i]
            elif found:
                pairs[i] = (price, size)
                raws[i] = raw
            else:
                keys.insert(i, key)
                pairs.insert(i, (price, size))
                raws.insert(i, raw)

    def best(self) -> float | None:
        return self._pairs[0][0] if self._pairs else None

    def top(self, n: int) -> list[tuple[float, float]]:
        return self._pairs[:n]

    def raw(self, n: int) -> list[RawLevel]:
        return self._raws[:n]
