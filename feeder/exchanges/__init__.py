"""Exchange protocols: pure code (no I/O) that speaks each exchange's WebSocket dialect.

- `base`: the protocol interface, the events `parse` returns, `BadFrame`, and the exchange descriptor;
- `upbit`, `binance`: one module per exchange (its protocol, its settings, its descriptor);
- `registry`: the exchanges the feeder knows.

Keeping this free of I/O lets the tests drive it with real captured frames, lets the simulator and the
feeder share one definition of each format, and keeps the decode hot path measurable on its own.
"""

from feeder.exchanges.base import (
    Ack,
    BadFrame,
    ErrorReply,
    Event,
    ExchangeDescriptor,
    ExchangeProtocol,
    ShutdownNotice,
    books_in,
)
from feeder.exchanges.binance import BinanceProtocol
from feeder.exchanges.upbit import UpbitProtocol

__all__ = [
    "Ack",
    "BadFrame",
    "BinanceProtocol",
    "ErrorReply",
    "Event",
    "ExchangeDescriptor",
    "ExchangeProtocol",
    "ShutdownNotice",
    "UpbitProtocol",
    "books_in",
]
