"""Client library for the shared market-data cache: what trading engines import.

from client import RedisMarketDataProvider
provider = RedisMarketDataProvider.from_url("redis://127.0.0.1:6379/0")
book = provider.get_latest_snapshot("KRW-BTC")   # None when missing or not live
"""

from client.errors import (
    AmbiguousSymbolError,
    CorruptSnapshotError,
    InvalidSnapshotError,
    InvalidSymbolError,
    MarketDataError,
    MarketDataPermissionError,
    MarketDataUnavailableError,
    RedisCommandError,
    SettingsError,
    StaleSnapshotError,
)
from client.models import BookState, OrderBookSnapshot, SnapshotStatus
from client.provider import MarketDataProvider, RedisMarketDataProvider
from client.settings import ClientSettings, load_settings

__all__ = [
    "AmbiguousSymbolError",
    "BookState",
    "ClientSettings",
    "CorruptSnapshotError",
    "InvalidSnapshotError",
    "InvalidSymbolError",
    "MarketDataError",
    "MarketDataPermissionError",
    "MarketDataProvider",
    "MarketDataUnavailableError",
    "OrderBookSnapshot",
    "RedisCommandError",
    "RedisMarketDataProvider",
    "SettingsError",
    "SnapshotStatus",
    "StaleSnapshotError",
    "load_settings",
]
