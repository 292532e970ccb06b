"""How symbols are spread: over feeder processes (``--shard K/N``) and over connections within one.

The shard of a symbol depends only on the symbol (CRC-32 of its name), so every process computes the same
split without talking to the others, and adding a symbol to the list moves no other symbol.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence


def shard_of(symbol: str, shards: int) -> int:
    """1-based shard number of a symbol."""
    return zlib.crc32(symbol.encode()) % shards + 1


def take_shard(symbols: Sequence[str], k: int, n: int) -> list[str]:
    """The symbols that shard K of N feeds, in their original order."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= K <= N")
    return [s for s in symbols if shard_of(s, n) == k]


def split_for_connections(symbols: Sequence[str], per_connection: int) -> list[list[str]]:
    """As few connections as the per-connection limit allows, filled evenly (not 1024 + 1)."""
    if per_connection < 1:
        raise ValueError("per_connection must be at least 1")
    if not symbols:
        return []
    count = -(-len(symbols) // per_connection)
    size = -(-len(symbols) // count)
    return [list(symbols[i : i + size]) for i in range(0, len(symbols), size)]
