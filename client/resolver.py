"""Bare symbols: which exchange an engine means by ``get_latest_snapshot("KRW-BTC")``.

The answer comes from the ``<prefix>:symbols:<exchange>`` indexes (a symbol carried by two exchanges is
ambiguous and must be asked for with ``exchange=``) and is cached for `RESOLVE_TTL` seconds. A symbol that no
index holds falls back to the engines' old naming convention (`guess_exchange`), so a book that does not
exist yet is reported as missing on the right exchange.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from client.errors import AmbiguousSymbolError, MarketDataError
from client.layout import Flow, RedisLayout, carriers_flow, validate_exchange, validate_symbol

RESOLVE_TTL = 30.0  # seconds a bare symbol's exchange is cached
Target = tuple[str | None, str]  # (exchange, or None for a bare symbol; symbol)


def guess_exchange(symbol: str) -> str | None:
    """The engines' old convention, used only when Redis has no book of the symbol on any exchange."""
    if "-" in symbol:
        return "upbit"
    if symbol.endswith("USDT"):
        return "binance"
    return None


def ambiguous(symbol: str, exchanges: Sequence[str]) -> AmbiguousSymbolError:
    return AmbiguousSymbolError(
        f"symbol {symbol!r} has books on several exchanges ({', '.join(exchanges)}): pass exchange= to choose"
    )


class SymbolResolver:
    """Resolves targets to exchanges; remembers what the indexes said for `RESOLVE_TTL` seconds."""

    def __init__(self, layout: RedisLayout, ttl: float = RESOLVE_TTL) -> None:
        self.layout = layout
        self.ttl = ttl
        self._resolved: dict[str, tuple[str, float]] = {}

    def resolve_flow(self, targets: Sequence[Target]) -> Flow[list[str | None]]:
        """Exchange of each target: given, cached, found in the indexes, or guessed by the old convention."""
        now = time.monotonic()
        resolved: list[str | None] = []
        unknown: list[str] = []
        for exchange, symbol in targets:
            validate_symbol(symbol)
            if exchange is not None:
                resolved.append(validate_exchange(exchange))
                continue
            cached = self._resolved.get(symbol)
            if cached is not None and cached[1] > now:
                resolved.append(cached[0])
            else:
                resolved.append(None)
                unknown.append(symbol)
        if not unknown:
            return resolved
        carriers = yield from carriers_flow(self.layout, unknown)
        for symbol, found in carriers.items():
            if len(found) > 1:
                raise ambiguous(symbol, found)
            if found:
                self._resolved[symbol] = (found[0], now + self.ttl)
        return [
            ex if ex is not None else (carriers[s][0] if carriers[s] else guess_exchange(s))
            for ex, (_, s) in zip(resolved, targets, strict=True)
        ]

    @staticmethod
    def offline(targets: Sequence[Target]) -> list[str | None]:
        """What the names alone say, while Redis cannot be asked."""
        return [ex or guess_exchange(s) for ex, s in targets]

    def keys(self, targets: Sequence[Target], exchanges: Sequence[str | None]) -> set[str]:
        """The book keys of resolved targets; MarketDataError for a symbol whose exchange nothing tells."""
        keys = set()
        for (_, symbol), exchange in zip(targets, exchanges, strict=True):
            if exchange is None:
                raise MarketDataError(f"cannot tell the exchange of {symbol!r}: pass exchange=")
            keys.add(self.layout.book_key(exchange, symbol))
        return keys
