"""The Redis layout: the only module that builds key and channel names (filled in below)."""

from __future__ import annotations

import re

from client.errors import InvalidSymbolError

MAX_SYMBOL_LENGTH = 64
_SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9._-]*")
_EXCHANGE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")


def validate_symbol(symbol: object) -> str:
    """Return the symbol unchanged, or raise InvalidSymbolError before it can become part of a key."""
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a str, not {type(symbol).__name__}")
    if not symbol or len(symbol) > MAX_SYMBOL_LENGTH or not _SYMBOL_RE.fullmatch(symbol):
        shown = symbol if len(symbol) <= 80 else symbol[:77] + "..."
        raise InvalidSymbolError(
            f"invalid symbol {shown!r}: expected 1-{MAX_SYMBOL_LENGTH} characters of [A-Z0-9._-], "
            "starting with a letter or digit"
        )
    return symbol


def validate_exchange(exchange: object) -> str:
    if not isinstance(exchange, str) or not exchange or len(exchange) > 32 or not _EXCHANGE_RE.fullmatch(exchange):
        raise InvalidSymbolError(f"invalid exchange name {exchange!r}: expected lower-case [a-z0-9_-], 1-32 chars")
    return exchange
