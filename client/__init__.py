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


def _version() -> str:
    """The installed package's version (``md-cache``), or ``0+unknown`` when running from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("md-cache")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

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
    "__version__",
    "load_settings",
]
