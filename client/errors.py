"""Errors the client raises. All derive from `MarketDataError` so an engine can catch one type."""

from __future__ import annotations

import redis.exceptions


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
    """Redis could not be reached: raised by writes, and by reads in strict mode (otherwise they return None)."""


class SettingsError(MarketDataError):
    """A bad setting; the message names the environment variable."""


class RedisCommandError(MarketDataError, redis.exceptions.ResponseError):
    """Redis refused a command; the message names the command and its key, `error` is redis-py's exception.

    Also a redis-py `ResponseError`, so that code catching Redis errors (the feeder's retry loops) keeps
    catching it.
    """

    def __init__(self, command: str, key: str | None, error: BaseException, hint: str = "") -> None:
        where = f" on {key!r}" if key else ""
        super().__init__(f"Redis refused {command}{where}: {error}{f' ({hint})' if hint else ''}")
        self.command = command
        self.key = key
        self.error = error


class MarketDataPermissionError(RedisCommandError):
    """The Redis user lacks a permission (ACL): the message names the command and key Redis refused."""


def redis_error(error: redis.exceptions.RedisError) -> MarketDataError:
    """A redis-py error that reached a caller outside any one command (e.g. AUTH at connect) as our own."""
    if isinstance(error, MarketDataError):
        return error
    kind = (
        MarketDataPermissionError
        if isinstance(error, redis.exceptions.NoPermissionError)
        else RedisCommandError
    )
    return kind("a round trip", None, error)


def redis_failure(exc: BaseException) -> str:
    """What a Redis error means, for a person: its own text, plus the fix when it is a known one.

    redis-py reports a server that wants a password as "Authentication required." (or, speaking RESP3, as
    "HELLO must be called with the client already authenticated"), and a wrong one as "invalid
    username-password pair": all three are authentication failures, which no retry mends.
    """
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, redis.exceptions.AuthenticationError) or (
        "authenticat" in lowered or "username-password" in lowered or "noauth" in lowered
    ):
        return (
            f"authentication failed ({text}): give the user and password in the URL, "
            "redis://USER:PASSWORD@host:port/db (MD_REDIS_URL), or check them"
        )
    return text
