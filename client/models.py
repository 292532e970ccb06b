"""The order-book snapshot that engines already use, and the status of a stored book.

`OrderBookSnapshot` keeps the exact shape of the in-process provider's dataclass: engines build it with
``OrderBookSnapshot(symbol=..., timestamp=..., bids=..., asks=...)`` and compare snapshots with ``==``.
Everything this project adds (exchange, sequence number, receive time, exchange ordering id) is an optional
keyword field that takes no part in equality, so a book read back from Redis equals the book that was written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Level = tuple[float, float]


@dataclass(slots=True)
class OrderBookSnapshot:
    """One whole order book: the best level first on both sides."""

    symbol: str
    timestamp: float  # exchange event time, seconds since the epoch
    bids: list[Level]  # [(price, qty), ...] best (highest) first
    asks: list[Level]  # [(price, qty), ...] best (lowest) first
    exchange: str | None = field(default=None, kw_only=True, compare=False)
    seq: int | None = field(default=None, kw_only=True, compare=False)
    recv_ts: float | None = field(default=None, kw_only=True, compare=False)
    xid: int | None = field(default=None, kw_only=True, compare=False)
    skipped: int | None = field(default=None, kw_only=True, compare=False)
    """Update streams only: how many updates of this book the consumer did not see since its last one."""

    def best_bid(self) -> float | None:
        return self.bids[0][0] if self.bids else None

    def best_ask(self) -> float | None:
        return self.asks[0][0] if self.asks else None


class BookState(enum.Enum):
    """Why a book is, or is not, served as live."""

    LIVE = "live"
    MISSING = "missing"  # no book stored for this key
    CONNECTION_DOWN = "connection_down"  # the feeder's connection for this symbol dropped
    FEEDER_DEAD = "feeder_dead"  # the writing feeder's heartbeat is gone or it went offline
    TOO_OLD = "too_old"  # received longer ago than max_age
    CORRUPT = "corrupt"  # the stored hash cannot be decoded
    UNAVAILABLE = "unavailable"  # Redis could not be reached


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """What the provider knows about one book, without raising."""

    exchange: str
    symbol: str
    state: BookState
    age: float | None = None  # seconds since the book was written, on Redis's clock
    seq: int | None = None
    feeder: str | None = None
    detail: str = ""
    simulated: bool = False  # the book comes from the exchange simulator (the demo), not from a market
    received_at: float | None = None  # when the feeder received this version, on Redis's clock (`rts`)
    written_at: float | None = None  # when Redis accepted this version, on its clock (None: an older writer)

    @property
    def live(self) -> bool:
        return self.state is BookState.LIVE

    @property
    def stale(self) -> bool:
        """A stored book that must not be traded on (as opposed to a missing one)."""
        return self.state in (BookState.CONNECTION_DOWN, BookState.FEEDER_DEAD, BookState.TOO_OLD)
