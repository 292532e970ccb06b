"""Random-walk order books: plausible, reproducible and cheap enough for 20,000+ frames per second.

Each book keeps its price levels as integer ticks, so that bids stay strictly below asks and prices never
pick up float noise (``0.1 + 0.2``) that a real exchange would never send. One `step` moves the best price by
at most one tick and changes the size of a few levels, which is what a real book mostly does between two
100 ms snapshots; the rest of the levels are left as they are, so their pre-formatted strings (Binance sends
prices and sizes as 8-decimal strings) are reused instead of being formatted again for every frame.

A book is seeded from ``(seed, exchange, symbol)`` alone, so the same symbol gets the same walk whatever
other symbols are subscribed, and in whatever order.
"""

from __future__ import annotations

import math
import random
import time

Level = tuple[float, float]
StrLevel = tuple[str, str]

# Rough USD prices of some well-known assets, so that BTC looks like BTC; others get a random price.
_USD_PRICES: dict[str, float] = {
    "BTC": 86_000.0,
    "ETH": 3_000.0,
    "BNB": 600.0,
    "SOL": 150.0,
    "XRP": 2.2,
    "DOGE": 0.2,
    "ADA": 0.7,
    "TRX": 0.25,
    "LINK": 15.0,
    "DOT": 4.0,
    "AVAX": 25.0,
    "USDT": 1.0,
    "USDC": 1.0,
    "FDUSD": 1.0,
}
_QUOTE_IN_USD: dict[str, float] = {"KRW": 1 / 1_400.0, "EUR": 1.08, "TRY": 1 / 34.0}
_BINANCE_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY")

_SIZE_POOL = 64

# A book this deep is generated for every symbol: enough for the deepest stream the simulator serves
# (Upbit's CODE.30, Binance's depth20, Bybit's orderbook.200, OKX's 400-level books).
MIN_DEPTH = {"upbit": 30, "binance": 20, "bithumb": 30, "coinone": 30, "bybit": 200, "okx": 400}
_QUOTE_FIRST = frozenset({"upbit", "bithumb", "coinone"})  # KRW-BTC
_BASE_FIRST = frozenset({"okx"})  # BTC-USDT


def split_symbol(exchange: str, symbol: str) -> tuple[str, str]:
    """(base, quote) of a symbol in the exchange's spelling: quote first on the Korean exchanges
    (``KRW-BTC``), base first on OKX (``BTC-USDT``), glued on Binance and Bybit (``BTCUSDT``)."""
    if exchange in _QUOTE_FIRST:
        quote, _, base = symbol.partition("-")
        return base, quote
    if exchange in _BASE_FIRST:
        base, _, quote = symbol.partition("-")
        return base, quote
    for quote in _BINANCE_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, "USDT"


def _usd_price(asset: str, rng: random.Random) -> float:
    if asset in _USD_PRICES:
        return _USD_PRICES[asset]
    return 10 ** rng.uniform(-2.0, 2.5)


def _krw_tick(price: float) -> float:
    """Upbit's KRW price unit for a price (approximately the exchange's table)."""
    for floor, tick in (
        (2_000_000, 1000.0),
        (1_000_000, 500.0),
        (500_000, 100.0),
        (100_000, 50.0),
        (10_000, 10.0),
        (1_000, 1.0),
        (100, 0.1),
        (10, 0.01),
        (1, 0.001),
    ):
        if price >= floor:
            return tick
    return 0.0001


def _decimal_tick(price: float) -> float:
    """Binance-like tick: about five significant digits, between 1e-8 and 0.01."""
    return min(0.01, max(1e-8, 10.0 ** (math.floor(math.log10(price)) - 4)))


def initial_price_and_tick(exchange: str, symbol: str, rng: random.Random) -> tuple[float, float, float]:
    """A believable starting mid price and tick size in the quote currency, and the base asset's USD price."""
    base, quote = split_symbol(exchange, symbol)
    usd = _usd_price(base, rng)
    if quote in _QUOTE_IN_USD:
        quote_usd = _QUOTE_IN_USD[quote]
    elif quote in _USD_PRICES:
        quote_usd = _USD_PRICES[quote]
    else:
        quote_usd = _usd_price(quote, rng)
    price = usd / quote_usd
    if exchange in _QUOTE_FIRST and quote == "KRW":
        return price, _krw_tick(price), usd
    if exchange in _QUOTE_FIRST and quote == "BTC":
        return price, 1e-8, usd
    return price, _decimal_tick(price), usd


class RandomWalkBook:
    """One symbol's book: levels best first, bids < asks, a mid price that walks one tick at a time.

    ``bids``/``asks`` hold ``(price, size)`` floats exactly as a client decodes them from the frame (so they
    can serve as the truth a test compares against); ``bid_strs``/``ask_strs`` hold the same levels as
    8-decimal strings when ``with_strings`` is set (Binance). `step` mutates the lists in place: whoever keeps
    levels beyond the current frame (the truth record) takes a slice, which copies the list but shares the
    immutable tuples.
    """

    __slots__ = (
        "_ask_ticks",
        "_bid_ticks",
        "_dec",
        "_rng",
        "_size_scale",
        "_sizes",
        "_tick",
        "ask_strs",
        "asks",
        "bid_strs",
        "bids",
        "depth",
        "move_probability",
        "symbol",
        "timestamp_ms",
        "update_id",
        "with_strings",
    )

    def __init__(
        self,
        exchange: str,
        symbol: str,
        *,
        depth: int,
        seed: int = 0,
        with_strings: bool = False,
        price: float | None = None,
        tick: float | None = None,
        move_probability: float = 0.3,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.symbol = symbol
        self.depth = depth
        self.with_strings = with_strings
        self.move_probability = move_probability
        # A str seed is hashed with SHA-512 by `random`, so it is stable across runs and processes.
        self._rng = random.Random(f"{seed}:{exchange}:{symbol}")
        start, default_tick, base_usd = initial_price_and_tick(exchange, symbol, self._rng)
        self._tick = tick if tick is not None else default_tick
        if price is not None:
            start = price
        self._dec = min(8, max(0, round(-math.log10(self._tick)))) if self._tick < 1 else 0
        # Sizes of a few thousand dollars' worth, in units of the base asset.
        self._size_scale = 2_000.0 / base_usd * self._rng.uniform(0.3, 3.0)
        self._sizes = self._make_sizes()
        mid = max(depth * 3 + 2, round(start / self._tick))
        self._bid_ticks: list[int] = []
        self._ask_ticks: list[int] = []
        t = mid - 1
        for _ in range(depth):
            self._bid_ticks.append(t)
            t -= 1 if self._rng.random() < 0.8 else 2
        t = mid + (0 if self._rng.random() < 0.6 else 1)
        for _ in range(depth):
            self._ask_ticks.append(t)
            t += 1 if self._rng.random() < 0.8 else 2
        self.bids: list[Level] = []
        self.asks: list[Level] = []
        self.bid_strs: list[StrLevel] = []
        self.ask_strs: list[StrLevel] = []
        for tk in self._bid_ticks:
            self._append(self.bids, self.bid_strs, tk)
        for tk in self._ask_ticks:
            self._append(self.asks, self.ask_strs, tk)
        self.update_id = self._rng.randrange(10**9, 10**11)
        self.timestamp_ms = int(time.time() * 1000)

    # -- level construction ------------------------------------------------------------------------------

    def _make_sizes(self) -> list[tuple[float, str]]:
        """A pool of exponentially distributed sizes (most small, a few large, never zero).

        Drawing from a pool instead of formatting a fresh random size for every changed level is most of what
        makes `step` cheap; with 64 sizes per symbol the books still look varied.
        """
        pool = []
        for _ in range(_SIZE_POOL):
            text = f"{max(1e-8, self._rng.expovariate(1.0) * self._size_scale):.8f}"
            pool.append((float(text), text))
        return pool

    def _level(self, tk: int, size: tuple[float, str]) -> tuple[Level, StrLevel | None]:
        price = round(tk * self._tick, self._dec)
        if not self.with_strings:
            return (price, size[0]), None
        ps = f"{price:.8f}"
        # The truth is what a client parses back from the strings, bit for bit.
        return (float(ps), size[0]), (ps, size[1])

    def _size(self) -> tuple[float, str]:
        return self._sizes[int(self._rng.random() * _SIZE_POOL)]

    def _append(self, levels: list[Level], strs: list[StrLevel], tk: int) -> None:
        lv, st = self._level(tk, self._size())
        levels.append(lv)
        if st is not None:
            strs.append(st)

    # -- the walk ------------------------------------------------------------------------------------------

    def step(self, now_ms: int | None = None) -> None:
        """Advance the book by one update: maybe move the best price a tick, and resize a few levels."""
        rng = self._rng.random
        bids, asks, bid_strs, ask_strs = self.bids, self.asks, self.bid_strs, self.ask_strs
        bt, at = self._bid_ticks, self._ask_ticks
        u = rng()
        if u < self.move_probability / 2:  # price up
            if at[0] - bt[0] > 1:  # room inside the spread: a new best bid one tick higher
                self._insert_best(bids, bid_strs, bt, bt[0] + 1)
            else:  # the best ask is taken out; a new level appears at the far end
                self._consume_best(asks, ask_strs, at, at[-1] + (1 if rng() < 0.8 else 2))
        elif u < self.move_probability:  # price down
            if at[0] - bt[0] > 1:
                self._insert_best(asks, ask_strs, at, at[0] - 1)
            elif bt[-1] > 3:
                self._consume_best(bids, bid_strs, bt, bt[-1] - (1 if rng() < 0.8 else 2))
        sizes, strings = self._sizes, self.with_strings
        for _ in range(1 + int(rng() * 3)):
            # Levels near the top change more often than deep ones; the price of a level stays.
            i = int(rng() * rng() * self.depth)
            size = sizes[int(rng() * _SIZE_POOL)]
            if rng() < 0.5:
                bids[i] = (bids[i][0], size[0])
                if strings:
                    bid_strs[i] = (bid_strs[i][0], size[1])
            else:
                asks[i] = (asks[i][0], size[0])
                if strings:
                    ask_strs[i] = (ask_strs[i][0], size[1])
        self.update_id += 1 + int(rng() * 8)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        # Upbit timestamps order frames: never let them go backwards, even if the wall clock does.
        self.timestamp_ms = max(self.timestamp_ms, now)

    def _insert_best(self, levels: list[Level], strs: list[StrLevel], ticks: list[int], tk: int) -> None:
        lv, st = self._level(tk, self._size())
        ticks.insert(0, tk)
        ticks.pop()
        levels.insert(0, lv)
        levels.pop()
        if st is not None:
            strs.insert(0, st)
            strs.pop()

    def _consume_best(self, levels: list[Level], strs: list[StrLevel], ticks: list[int], far: int) -> None:
        lv, st = self._level(far, self._size())
        ticks.pop(0)
        ticks.append(far)
        levels.pop(0)
        levels.append(lv)
        if st is not None:
            strs.pop(0)
            strs.append(st)

    def best_bid(self) -> float:
        return self.bids[0][0]

    def best_ask(self) -> float:
        return self.asks[0][0]
