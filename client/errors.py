"""Errors the client raises. All derive from `MarketDataError` so an engine can catch one type."""

from __future__ import annotations


class MarketDataError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidSymbolError(MarketDataError, ValueError):
    """A symbol or exchange name that must not become part of a Redis key."""


class InvalidSnapshotError(MarketDataError, ValueError):
    """A snapshot that cannot be stored: non-finite prices, negative sizes, wrong types."""


class AmbiguousSymbolError(MarketDataError, LookupError):
    """A bare symbol that more than one exchange carries; pass ``exchange=`` to choose."""


class StaleSnapshotError(MarketDataError):
    """Strict mode: a stored book exists but must not be served as live (the status says why)."""

    def __init__(self, status: object, message: str) -> None:
        super().__init__(message)
        self.status = status


class CorruptSnapshotError(MarketDataError):
    """A stored hash that cannot be decoded (edited by hand, or written by something else)."""

    def __init__(self, key: str, field: str, reason: str) -> None:
        super().__init__(f"corrupt book at {key!r}, field {field!r}: {reason}")
        self.key = key
        self.field = field
        self.reason = reason


class MarketDataUnavailableError(MarketDataError):
    """Strict mode: Redis could not be reached, so no book can be vouched for."""


class SettingsError(MarketDataError):
    """A bad setting; the message names the environment variable."""
