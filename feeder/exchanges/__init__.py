"""Exchange protocols: pure code (no I/O) that speaks each exchange's WebSocket dialect.

A protocol object answers three questions for the connection layer:

- where to connect (`url`) and what to send after connecting (`subscribe_frames`) for a list of symbols;
- what one received frame means (`parse`): zero or more order-book snapshots, or a typed error.

Keeping this free of I/O lets the tests drive it with real captured frames, lets the simulator and the
feeder share one definition of each format, and keeps the decode hot path measurable on its own.

`parse` raises only two kinds of exceptions, so the caller needs exactly two ``except`` clauses:

- `BadFrame`: the frame is malformed (not JSON, wrong types, non-finite numbers, invalid symbol...). The
  caller counts it and carries on; one garbage frame must not take a connection down.
- `ExchangeError`: the exchange itself replied with an error (or, as `ServerShutdown`, announced that it is
  about to close the connection). The caller decides whether to reconnect or replace the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from client.errors import InvalidSymbolError
from client.layout import validate_symbol
from client.models import OrderBookSnapshot


class BadFrame(ValueError):
    """A received frame that cannot be decoded; the message is a short reason."""


class ExchangeError(Exception):
    """An error reply from the exchange (not a decoding problem on our side).

    ``name`` is the exchange's own identifier of the error: Upbit's error name (``"INVALID_PARAM"``) or
    Binance's numeric code as a string (``"2"``), so that callers can compare it without caring which type
    the exchange used.
    """

    def __init__(self, exchange: str, name: str, message: str) -> None:
        # All three go to Exception.__init__ so that the error pickles and copies with its fields.
        super().__init__(exchange, name, message)
        self.exchange = exchange
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.exchange} error {self.name}: {self.message}"


class ServerShutdown(ExchangeError):
    """Binance's ``serverShutdown`` event: the server will close this connection soon.

    The connection layer should open a replacement connection now (before this one drops) instead of
    waiting for the close and the reconnect backoff.
    """

    def __init__(
        self,
        exchange: str = "binance",
        name: str = "serverShutdown",
        message: str = "server shutdown announced",
        event_time: float | None = None,
    ) -> None:
        super().__init__(exchange, name, message)
        self.event_time = event_time  # epoch seconds of the announcement, when the event carried one


class ExchangeProtocol(Protocol):
    """What the connection layer needs from an exchange protocol."""

    name: str
    """The exchange name used in Redis keys and on snapshots (``"upbit"``, ``"binance"``)."""

    max_symbols_per_connection: int
    """How many symbols the sharding layer may put on one connection."""

    def url(self, symbols: Sequence[str]) -> str:
        """The WebSocket URL to open for these symbols."""
        ...

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str | bytes]:
        """Frames to send right after connecting (and after every reconnect); may be empty."""
        ...

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[OrderBookSnapshot]:
        """Decode one received frame; raise `BadFrame` or `ExchangeError` (nothing else)."""
        ...

    def book_symbol(self, frame: bytes) -> str | None:
        """The symbol of the book `frame` carries, judged from its head alone (cheap), or None.

        None means "parse it now": a control frame, an error, a stream seen for the first time, anything of
        an unusual shape. A symbol lets the connection hand the frame over undecoded (the writer decodes it
        with `parse` only if no newer frame of that symbol replaced it first), and says nothing about the
        rest of the frame: `parse` still decides whether it is a valid book.
        """
        ...


# The concrete protocols import the exceptions and helpers below from this package, so they are imported last.
def remember_raw_name(cache: dict[bytes, str], raw: bytes, resolve: Callable[[str], str], limit: int) -> str:
    """`resolve` of a name seen as raw bytes, remembered under those bytes (bounded by `limit` entries).

    The fast paths look a frame's stream name or code up before decoding anything; only the first sight of a
    name decodes and resolves it (validation, routing). The bound only guards against a stream of new names.
    """
    resolved = resolve(raw.decode())
    if len(cache) >= limit:
        cache.clear()
    cache[raw] = resolved
    return resolved


def unique_symbols(symbols: Sequence[str]) -> list[str]:
    """Upper-cased, validated symbols without duplicates, in order: what a subscription may contain."""
    if isinstance(symbols, str):
        raise TypeError("symbols must be a sequence of str, not one str")
    out: list[str] = []
    seen: set[str] = set()
    for symbol in symbols:
        if not isinstance(symbol, str):
            raise InvalidSymbolError(f"symbol must be a str, not {type(symbol).__name__}")
        checked = validate_symbol(symbol.strip().upper())
        if checked not in seen:
            seen.add(checked)
            out.append(checked)
    if not out:
        raise ValueError("no symbols to subscribe to")
    return out


from feeder.exchanges.binance import BinanceProtocol  # noqa: E402
from feeder.exchanges.upbit import UpbitProtocol  # noqa: E402

__all__ = [
    "BadFrame",
    "BinanceProtocol",
    "ExchangeError",
    "ExchangeProtocol",
    "ServerShutdown",
    "UpbitProtocol",
]
