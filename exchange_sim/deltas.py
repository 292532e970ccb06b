"""Snapshot-and-delta streams of the simulator's incremental exchanges (Bybit, OKX), and their delta faults.

`DeltaServer` is the part that Bybit's and OKX's servers share: for every stream (one symbol at one depth,
shared by all the connections subscribed to it, as on the exchange) it keeps the **view** last published (the
top `depth` levels as the exchange's strings) and the stream's own update id. A subscription gets a snapshot
of the current view; every update of the book then sends one delta: the levels whose size changed, the levels
that entered the top `depth`, and those that left it (size ``"0"``). A step that changes nothing inside the
top `depth` sends nothing (or the exchange's keep-chain message: `idle_frames`).

**Truth.** Every id a stream reaches is recorded with the exchange's true top-`depth` book (floats, exactly
as a client decodes the strings): `record` (the symbol's last book, as every server does) and a bounded
history ``id -> Truth`` per stream, `truth_at`, so that a test can check every book a client served against
the exchange's book at that id. Faults never change the truth: it is always the exchange's real book.

**Faults** (`set_delta_faults`, off by default, seeded): each update is hit with probability `rate` by one of
the enabled kinds that applies to it:

- ``gap``: the update is not sent (the id and the truth still advance);
- ``duplicate``: the update is sent twice;
- ``reorder``: the update is held back and sent after the next one (two consecutive updates swapped);
- ``corrupt``: one level of the update has a malformed size (``"1.2.3"``, ``"nan"``, ``"-1"``...); with
  checksums on (OKX), half of them instead carry a plausible but wrong size of a top-25 level, which only the
  checksum reveals;
- ``checksum``: a correct update with a wrong checksum (only where the server sends real checksums);
- ``restart``: the exchange restarts the stream's ids (Bybit: a snapshot with ``u=1``; OKX: an update whose
  ``seqId`` is below its ``prevSeqId`` and still links). At most one per `restart_gap` updates of a stream, so
  that a restarted sequence cannot reach an id of the previous one still in the truth history while a client
  may still be reading it.

Snapshot-only streams (Bybit's depth 1) get no faults. A client that asks again (unsubscribe + subscribe) gets
a fresh snapshot of the current view. Counters: ``delta_faults`` (all) and ``delta_<kind>``.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.http11 import Request, Response

from exchange_sim.books import RandomWalkBook, StrLevel
from exchange_sim.replay import CapturedFrame, Truth
from exchange_sim.server import ExchangeServer
from exchange_sim.session import Session, Subscription
from exchange_sim.transport import SimConnection

FAULT_KINDS = ("gap", "duplicate", "reorder", "corrupt", "checksum", "restart")
_MALFORMED_SIZES = ("1.2.3", "nan", "-1", "", "1e999", "abc")


@dataclass(eq=False)
class DeltaSubscription(Subscription):
    """A book stream of one symbol at one depth (Bybit ``orderbook.50.BTCUSDT``, OKX ``books`` of an instId)."""

    depth: int = 0


class DeltaStream:
    """One published stream: the view last sent, its id, a frame held back by a reorder fault."""

    __slots__ = ("asks", "bids", "depth", "held", "seq", "since_restart", "snapshot_only", "symbol")

    def __init__(self, symbol: str, depth: int, seq: int, *, snapshot_only: bool, since_restart: int) -> None:
        self.symbol = symbol
        self.depth = depth
        self.seq = seq
        self.snapshot_only = snapshot_only
        self.since_restart = since_restart
        self.bids: dict[str, str] = {}  # price text -> size text of the view last published
        self.asks: dict[str, str] = {}
        self.held: bytes | None = None


def side_changes(view: dict[str, str], top: list[StrLevel]) -> list[StrLevel]:
    """The levels of `top` that differ from `view` (new or resized), then those gone from it (size "0");
    `view` becomes `top`."""
    changed = [level for level in top if view.get(level[0]) != level[1]]
    if not changed and len(top) == len(view):
        return changed  # every price of top is in view with its size, and no other: nothing changed
    new = dict(top)
    changed += [(price, "0") for price in view if price not in new]
    view.clear()
    view.update(new)
    return changed


class DeltaServer(ExchangeServer[DeltaSubscription]):
    """An exchange server of snapshot + delta streams; see the module docstring. Subclasses format frames."""

    bytes_as_text = True
    server_pings = False
    restart_is_snapshot: ClassVar[bool]  # Bybit: a restart is a snapshot (u=1); OKX: a linking update

    def __init__(self, *, history: int = 5000, restart_gap: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if history < 1:
            raise ValueError("history must be >= 1")
        self.history_size = history
        self.restart_gap = restart_gap
        self.streams: dict[tuple[str, int], DeltaStream] = {}
        self._history: dict[tuple[str, int], dict[int, Truth]] = {}
        self._last_depth: dict[str, int] = {}
        self._id_rng = random.Random(f"{self.seed}:{self.name}:ids")
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = ()
        self._fault_rng = random.Random(f"{self.seed}:{self.name}:delta-faults")
        self.counters["delta_faults"] = 0
        for kind in FAULT_KINDS:
            self.counters[f"delta_{kind}"] = 0

    # -- exchange hooks -------------------------------------------------------------------------------

    @abstractmethod
    def first_id(self, rng: random.Random) -> int:
        """The id of a new stream."""

    @abstractmethod
    def next_id(self, seq: int, rng: random.Random) -> int:
        """The id after `seq`."""

    @abstractmethod
    def restart_id(self, seq: int, rng: random.Random) -> int:
        """The id a restarted sequence starts with (below `seq`)."""

    @abstractmethod
    def book_frame(
        self,
        stream: DeltaStream,
        book: RandomWalkBook,
        bids: list[StrLevel],
        asks: list[StrLevel],
        *,
        snapshot: bool,
        seq: int,
        prev: int,
        checksum: int,
    ) -> bytes:
        """One snapshot or delta frame of `stream` (`prev`: the id it follows, -1 for a snapshot)."""

    def snapshot_only(self, depth: int) -> bool:
        """Streams whose every push is a whole book (Bybit's depth 1)."""
        return False

    def book_checksum(self, stream: DeltaStream, book: RandomWalkBook) -> int:
        """The checksum of the stream's current view (0: none)."""
        return 0

    def idle_frames(self, stream: DeltaStream, book: RandomWalkBook) -> list[bytes]:
        """What a step that changed nothing in the view sends (OKX: the empty keep-chain update)."""
        return []

    # -- faults ---------------------------------------------------------------------------------------

    def set_delta_faults(
        self, rate: float = 0.0, kinds: Iterable[str] = FAULT_KINDS, *, seed: int | None = None
    ) -> None:
        """Hit each update with probability `rate` (0 turns faults off) by one of `kinds` that applies."""
        kinds = tuple(kinds)
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown delta fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        self.fault_rate = float(rate)
        self.fault_kinds = kinds
        if seed is not None:
            self._fault_rng = random.Random(f"{seed}:{self.name}:delta-faults")

    def fault_applies(self, kind: str, stream: DeltaStream) -> bool:
        if kind == "checksum":
            return False  # only a server that sends checksums (OKX with checksums on) overrides this
        if kind == "restart":
            return stream.since_restart >= self.restart_gap
        return True

    def _draw_fault(self, stream: DeltaStream) -> str | None:
        if not self.fault_rate or stream.snapshot_only:
            return None
        rng = self._fault_rng
        if rng.random() >= self.fault_rate:
            return None
        kinds = [k for k in self.fault_kinds if self.fault_applies(k, stream)]
        if not kinds:
            return None
        kind = kinds[int(rng.random() * len(kinds))]
        self.counters["delta_faults"] += 1
        self.counters[f"delta_{kind}"] += 1
        return kind

    # -- truth ----------------------------------------------------------------------------------------

    def truth_at(self, symbol: str, xid: int, depth: int | None = None) -> Truth | None:
        """The exchange's top-`depth` book of `symbol` when its stream reached id `xid` (None: unknown, or
        older than the history kept). `depth` None: the stream of that symbol updated last."""
        if depth is None:
            depth = self._last_depth.get(symbol)
            if depth is None:
                return None
        history = self._history.get((symbol, depth))
        return None if history is None else history.get(xid)

    def _remember(self, stream: DeltaStream, book: RandomWalkBook) -> None:
        depth = stream.depth
        bids, asks = book.bids[:depth], book.asks[:depth]
        timestamp = book.timestamp_ms / 1000
        truth = Truth(bids, asks, stream.seq, timestamp)
        key = (stream.symbol, depth)
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = {}
        history.pop(stream.seq, None)  # a restarted sequence reaches an old id again: the newest wins
        history[stream.seq] = truth
        if len(history) > self.history_size:
            del history[next(iter(history))]
        self._last_depth[stream.symbol] = depth
        self.record(stream.symbol, bids, asks, stream.seq, timestamp)

    # -- encoding -------------------------------------------------------------------------------------

    def _stream(self, sub: DeltaSubscription, book: RandomWalkBook) -> DeltaStream:
        key = (sub.symbol, sub.depth)
        stream = self.streams.get(key)
        if stream is None:
            stream = DeltaStream(
                sub.symbol,
                sub.depth,
                self.first_id(self._id_rng),
                snapshot_only=self.snapshot_only(sub.depth),
                since_restart=self.restart_gap,
            )
            side_changes(stream.bids, book.bid_strs[: sub.depth])
            side_changes(stream.asks, book.ask_strs[: sub.depth])
            self.streams[key] = stream
            self._remember(stream, book)
        return stream

    def encode(
        self, session: Session[DeltaSubscription], sub: DeltaSubscription, book: RandomWalkBook, initial: bool
    ) -> bytes | list[bytes]:
        stream = self._stream(sub, book)
        depth = stream.depth
        bids = side_changes(stream.bids, book.bid_strs[:depth])
        asks = side_changes(stream.asks, book.ask_strs[:depth])
        changed = bool(bids or asks)
        if initial or stream.snapshot_only:
            if changed:  # the book moved while nobody received this stream: its id moves on all the same
                stream.seq = self.next_id(stream.seq, self._id_rng)
                self._remember(stream, book)
            elif not initial:
                return []
            return self._snapshot(stream, book, stream.seq)
        if not changed:
            out = self.idle_frames(stream, book)
            if stream.held is not None:
                out.append(stream.held)
                stream.held = None
            return out
        held, stream.held = stream.held, None
        kind = None if held is not None else self._draw_fault(stream)
        prev = stream.seq
        if kind == "restart":
            stream.seq = self.restart_id(prev, self._id_rng)
            stream.since_restart = 0
        else:
            stream.seq = self.next_id(prev, self._id_rng)
            stream.since_restart += 1
        self._remember(stream, book)
        if kind == "restart" and self.restart_is_snapshot:
            out = [self._snapshot(stream, book, stream.seq)]
        else:
            checksum = self.book_checksum(stream, book)
            if kind == "corrupt":
                bids, asks = self._corrupt(stream, book, bids, asks, checksum != 0)
            elif kind == "checksum":
                checksum = checksum - 1 if checksum != 1 else 2
            frame = self.book_frame(
                stream, book, bids, asks, snapshot=False, seq=stream.seq, prev=prev, checksum=checksum
            )
            if kind == "gap":
                out = []
            elif kind == "duplicate":
                out = [frame, frame]
            elif kind == "reorder":
                stream.held = frame
                out = []
            else:
                out = [frame]
        if held is not None:
            out.append(held)
        return out

    def _snapshot(self, stream: DeltaStream, book: RandomWalkBook, seq: int) -> bytes:
        depth = stream.depth
        return self.book_frame(
            stream,
            book,
            book.bid_strs[:depth],
            book.ask_strs[:depth],
            snapshot=True,
            seq=seq,
            prev=-1,
            checksum=self.book_checksum(stream, book),
        )

    def _corrupt(
        self,
        stream: DeltaStream,
        book: RandomWalkBook,
        bids: list[StrLevel],
        asks: list[StrLevel],
        checksummed: bool,
    ) -> tuple[list[StrLevel], list[StrLevel]]:
        """The update's levels with one size garbled (or, checksummed, one top-25 size plausibly wrong)."""
        rng = self._fault_rng
        bids, asks = list(bids), list(asks)
        if checksummed and rng.random() < 0.5:
            use_bids = rng.random() < 0.5
            top = (book.bid_strs if use_bids else book.ask_strs)[: min(25, stream.depth)]
            price, size = top[int(rng.random() * len(top))]
            wrong = f"{float(size) * 1.5 + 0.001:.8f}"
            side = bids if use_bids else asks
            side[:] = [level for level in side if level[0] != price]
            side.append((price, wrong))
            return bids, asks
        side = bids if (bids and (not asks or rng.random() < 0.5)) else asks
        i = int(rng.random() * len(side))
        side[i] = (side[i][0], _MALFORMED_SIZES[int(rng.random() * len(_MALFORMED_SIZES))])
        return bids, asks

    # -- the rest of the server -----------------------------------------------------------------------

    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        if request.path.partition("?")[0].rstrip("/") != self.ws_path:
            return ws.respond(404, "Not Found\n")
        return None

    def replay_truth(self, frame: CapturedFrame) -> tuple[str, Truth] | None:
        return None  # a replayed delta carries no whole book
