"""The legacy ``latest_snapshots`` dict of the in-process provider, as a read-only view of Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from client.errors import AmbiguousSymbolError
from client.freshness import Judged
from client.models import BookState, OrderBookSnapshot
from client.resolver import Target

Lookup = Callable[[Sequence[Target]], list[Judged]]


class LatestSnapshots(Mapping[str, OrderBookSnapshot]):
    """Symbol -> live book, backed by Redis (through the provider's `lookup`, mirror-aware).

    ``in``, ``[]`` and ``get`` read one book; iteration, ``len`` and ``dict(...)`` read every indexed book in
    one batch. A symbol with books on two exchanges cannot be one dict key: it is left out of iteration and
    ``[]`` raises AmbiguousSymbolError.
    """

    def __init__(self, lookup: Lookup, all_books: Callable[[], list[tuple[str, str]]]) -> None:
        self._lookup = lookup
        self._all_books = all_books

    def __getitem__(self, symbol: str) -> OrderBookSnapshot:
        status, snapshot = self._lookup([(None, symbol)])[0]
        if status.state is not BookState.LIVE or snapshot is None:
            raise KeyError(symbol)
        return snapshot

    def __contains__(self, symbol: object) -> bool:
        if not isinstance(symbol, str):
            return False
        try:
            self[symbol]
        except (KeyError, AmbiguousSymbolError):
            return False
        return True

    def _live(self) -> dict[str, OrderBookSnapshot]:
        books = self._all_books()
        counts: dict[str, int] = {}
        for _, symbol in books:
            counts[symbol] = counts.get(symbol, 0) + 1
        targets: list[Target] = [(ex, s) for ex, s in books if counts[s] == 1]
        results = self._lookup(targets)
        return {
            s: snap
            for (_, s), (status, snap) in zip(targets, results, strict=True)
            if status.state is BookState.LIVE and snap is not None
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return f"LatestSnapshots({self._live()!r})"
