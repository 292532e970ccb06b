"""Property: encode -> atomic write -> read -> decode returns an equal snapshot for any valid book."""

from __future__ import annotations

import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider

prices = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
levels = st.lists(st.tuples(prices, sizes), max_size=30)
books = st.builds(
    OrderBookSnapshot,
    symbol=st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,63}", fullmatch=True),
    # not ahead of Redis's clock: a time-based ordering id from the future is refused (test_provider_rules)
    timestamp=st.floats(min_value=0, max_value=time.time()),
    bids=levels,
    asks=levels,
)
exchanges = st.sampled_from(["upbit", "binance", "okx", "x-1"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snapshot=books, exchange=exchanges)
def test_write_read_roundtrip(backend: Backend, snapshot: OrderBookSnapshot, exchange: str) -> None:
    backend.sync.delete(f"md:{exchange}:{snapshot.symbol}")
    provider = RedisMarketDataProvider(redis=backend.sync)
    assert provider.write_snapshot(snapshot, exchange)
    got = provider.get_latest_snapshot(snapshot.symbol, exchange=exchange)
    assert got == snapshot
    assert got is not None and got.exchange == exchange and got.seq == 1
    assert all(isinstance(p, float) and isinstance(q, float) for p, q in got.bids + got.asks)
    assert math.copysign(1, got.timestamp) == math.copysign(1, float(snapshot.timestamp))
