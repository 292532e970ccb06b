"""Client library for the shared market-data cache (filled in as the package grows)."""

from client.models import BookState, OrderBookSnapshot, SnapshotStatus

__all__ = ["BookState", "OrderBookSnapshot", "SnapshotStatus"]
