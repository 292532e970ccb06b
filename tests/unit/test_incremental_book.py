"""The incremental book never serves a book that differs from the exchange's: a simulated exchange's true book
evolves through thousands of deltas while the stream loses, duplicates, reorders and corrupts them; every book
the component returns as live is compared with the truth at that update."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from exchange_sim.okx import checksum_of
from feeder.incremental_book import BookUpdate, Chain, IncrementalBook, RawLevel, Resync

DEPTH = 10


def crc_of_top(bids: Sequence[RawLevel], asks: Sequence[RawLevel]) -> int:
    """A checksum in OKX's manner (the simulator's own, independent of the feeder's `okx_checksum`)."""
    return checksum_of(list(bids), list(asks))


@dataclass
class TrueExchange:
    """The exchange's book (prices on a grid, bids below asks) and its update ids."""

    rng: random.Random
    chain: Chain
    with_checksum: bool
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    seq: int = 1000
    history: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for _ in range(40):
            self._change(self.bids, self._price(bid=True))
            self._change(self.asks, self._price(bid=False))

    def _price(self, *, bid: bool) -> str:
        tick = self.rng.randrange(1, 400)
        return f"{(100.0 - tick * 0.05) if bid else (100.0 + tick * 0.05):.2f}"

    def _change(self, side: dict[str, str], price: str) -> RawLevel:
        if price in side and self.rng.random() < 0.3:
            del side[price]
            return (price, "0")
        side[price] = f"{self.rng.uniform(0.001, 50):.4f}"
        return (price, side[price])

    def _sorted(self) -> tuple[list[RawLevel], list[RawLevel]]:
        bids = sorted(self.bids.items(), key=lambda kv: -float(kv[0]))
        asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))
        return bids, asks

    def _record(self) -> int | None:
        """Note the true top levels at this id; the checksum of the whole book (None without checksums)."""
        bids, asks = self._sorted()
        self.history[self.seq] = (
            [(float(p), float(s)) for p, s in bids[:DEPTH]],
            [(float(p), float(s)) for p, s in asks[:DEPTH]],
        )
        return crc_of_top(bids, asks) if self.with_checksum else None

    def _next_seq(self) -> tuple[int, int | None]:
        prev = self.seq
        if self.chain is Chain.CONSECUTIVE:
            self.seq += 1
            return self.seq, None
        if self.rng.random() < 0.002:  # a reset (maintenance): ids start lower, the link still holds
            self.seq = self.rng.randrange(1, 100)
        else:
            self.seq += self.rng.randrange(1, 4)
        return self.seq, prev

    def snapshot(self) -> BookUpdate:
        seq, _ = self._next_seq()
        checksum = self._record()
        bids, asks = self._sorted()
        return BookUpdate("BTC-USDT", 1.0, bids, asks, seq, snapshot=True, prev_seq=-1, checksum=checksum)

    def delta(self) -> BookUpdate:
        changed_bids = [
            self._change(self.bids, self._price(bid=True)) for _ in range(self.rng.randrange(1, 4))
        ]
        changed_asks = [
            self._change(self.asks, self._price(bid=False)) for _ in range(self.rng.randrange(0, 3))
        ]
        seq, prev = self._next_seq()
        checksum = self._record()
        return BookUpdate("BTC-USDT", 1.0, changed_bids, changed_asks, seq, prev_seq=prev, checksum=checksum)


FAULTS = ("drop", "duplicate", "reorder", "garble", "wrong_checksum", "corrupt_value")


def faults_for(chain: Chain, with_checksum: bool) -> tuple[str, ...]:
    """A delta whose numbers were altered but which still parses is caught only by a checksum; a garbled frame
    never reaches the book (its parser counts it as bad), so to the book it is a lost update."""
    if with_checksum:
        return FAULTS
    return tuple(f for f in FAULTS if f not in ("wrong_checksum", "corrupt_value"))


@pytest.mark.parametrize(
    ("chain", "with_checksum"),
    [(Chain.CONSECUTIVE, False), (Chain.LINKED, True), (Chain.LINKED, False)],
    ids=["bybit-like", "okx-like", "okx-like-checksum-0"],
)
def test_no_book_that_differs_from_the_exchange_is_served_as_live(chain: Chain, with_checksum: bool) -> None:
    rng = random.Random(f"{chain.value}-{with_checksum}")
    exchange = TrueExchange(rng, chain, with_checksum)
    book = IncrementalBook("okx", "BTC-USDT", chain=chain, depth=DEPTH, checksum=crc_of_top)
    kinds = faults_for(chain, with_checksum)
    injected = {kind: 0 for kind in kinds}
    served = wrong = resyncs = 0
    held: BookUpdate | None = None  # a delta held back, delivered after the next one (reordered)
    want_snapshot = True

    def deliver(update: BookUpdate) -> None:
        nonlocal served, wrong, resyncs, want_snapshot
        result = book.apply(update)
        if isinstance(result, Resync):
            resyncs += 1
            want_snapshot = True
        elif result is None:
            # ignored only as the last update again, or while waiting for a snapshot: never a silent stop
            assert not book.live or (update.seq, update.prev_seq) == (book.seq, book._prev), update
        else:
            served += 1
            assert book.live
            if (result.bids, result.asks) != exchange.history[update.seq]:
                wrong += 1

    for _ in range(20_000):
        if want_snapshot:  # the connection layer resubscribed: the exchange sends a snapshot
            want_snapshot = False
            held = None
            deliver(exchange.snapshot())
            continue
        update = exchange.delta()
        fault = rng.choice(kinds) if rng.random() < 0.08 else None
        if fault is not None:
            injected[fault] += 1
        if fault in ("drop", "garble"):
            pass
        elif fault == "duplicate":
            deliver(update)
            deliver(update)
        elif fault == "reorder":
            held = update
            continue
        elif fault == "wrong_checksum":
            assert update.checksum is not None
            deliver(BookUpdate(update.symbol, 1.0, update.bids, update.asks, update.seq,
                               prev_seq=update.prev_seq, checksum=update.checksum ^ 0x5A5A))  # fmt: skip
        elif fault == "corrupt_value":
            side = list(update.bids) or [("99.00", "1.0000")]
            price, size = side[0]
            bad = (price, f"{float(size) + 1.2345:.4f}")
            deliver(BookUpdate(update.symbol, 1.0, [bad, *side[1:]], update.asks, update.seq,
                               prev_seq=update.prev_seq, checksum=update.checksum))  # fmt: skip
        else:
            deliver(update)
        if held is not None and fault != "reorder":
            deliver(held)
            held = None

    assert sum(injected.values()) >= 1000 and all(injected.values()), injected
    assert wrong == 0, f"{wrong} of {served} books served as live differed from the exchange's"
    assert served > 10_000, f"only {served} books served: the book is hardly ever live"  # it does recover
    assert resyncs >= sum(injected[k] for k in ("drop", "garble", "reorder")) * 0.9


def test_a_snapshot_that_starts_a_new_sequence_replaces_the_book() -> None:
    """Bybit's u=1 after a service restart: a lower id, but a snapshot, so not frozen behind the old id."""
    book = IncrementalBook("bybit", "BTCUSDT", chain=Chain.CONSECUTIVE, depth=5)
    first = book.apply(BookUpdate("BTCUSDT", 1.0, [("100", "1")], [("101", "1")], 5_000, snapshot=True))
    assert first is not None and not isinstance(first, Resync) and first.xid == 5_000
    restarted = book.apply(BookUpdate("BTCUSDT", 2.0, [("99", "2")], [("102", "3")], 1, snapshot=True))
    assert restarted is not None and not isinstance(restarted, Resync)
    assert (restarted.bids, restarted.asks, restarted.xid) == ([(99.0, 2.0)], [(102.0, 3.0)], 1)
    following = book.apply(BookUpdate("BTCUSDT", 3.0, [("99", "0"), ("98", "4")], [], 2))
    assert following is not None and not isinstance(following, Resync)
    assert following.bids == [(98.0, 4.0)]


@pytest.mark.parametrize(
    ("level", "why"),
    [(("nan", "1"), "out of range"), (("100", "-1"), "out of range"), (("x", "1"), "not two numbers"),
     (("1e999", "1"), "out of range")],
)  # fmt: skip
def test_a_malformed_level_breaks_the_book_until_the_next_snapshot(level: RawLevel, why: str) -> None:
    book = IncrementalBook("okx", "BTC-USDT", chain=Chain.LINKED, depth=5)
    book.apply(BookUpdate("BTC-USDT", 1.0, [("100", "1")], [("101", "1")], 10, snapshot=True, prev_seq=-1))
    result = book.apply(BookUpdate("BTC-USDT", 2.0, [level], [], 11, prev_seq=10))
    assert isinstance(result, Resync) and why in result.reason and not book.live
    assert book.apply(BookUpdate("BTC-USDT", 3.0, [("100", "2")], [], 12, prev_seq=11)) is None
