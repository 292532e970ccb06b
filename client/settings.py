"""Settings shared by the client and the feeder, read from ``MD_*`` environment variables and ``.env``.

`load_settings` turns pydantic's validation errors into a `SettingsError` whose message names the
environment variable, so a bad value stops start-up with a line an operator can act on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import SettingsError
from client.layout import split_target, validate_exchange, validate_prefix, validate_symbol

ENV_PREFIX = "MD_"
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _positive_seconds(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(value: float) -> float:
    if value < 0:
        raise ValueError("must be 0 (off) or a positive number of seconds")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _none_words(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
        return None
    return value


# Field types with their check, shared by every settings class (the feeder's and the exchanges' too).
PositiveSeconds = Annotated[float, AfterValidator(_positive_seconds)]
NonNegativeSeconds = Annotated[float, AfterValidator(_non_negative_seconds)]
OptionalSeconds = Annotated[float | None, BeforeValidator(_none_words), AfterValidator(_positive_seconds)]
"""Positive seconds, or None (unset: the words "", "none" and "off" mean None too)."""
AtLeastOne = Annotated[int, AfterValidator(_at_least_one)]


class ClientSettings(BaseSettings):
    """Everything an engine's provider needs. Each field is documented in `.env.example`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis to read from and write to; ``redis://user:pass@host:port/db``, ``rediss://`` for TLS."""
    prefix: str = "md"
    """Prefix of every key and channel."""
    max_age: OptionalSeconds = None
    """Seconds after which a book counts as stale even while its feeder is alive; unset = no limit."""
    strict: bool = False
    """Raise StaleSnapshotError/CorruptSnapshotError instead of returning None."""
    redis_timeout: PositiveSeconds = 5.0
    """Socket connect and read timeout for Redis, in seconds."""
    mode: Literal["read-through", "mirror"] = "read-through"
    """read-through: every read asks Redis; mirror: a pub/sub subscriber keeps a local copy, reads are local."""
    mirror_exchanges: str = ""
    """Mirror mode: exchanges to mirror whole (comma-separated). Empty, with no MD_MIRROR_SYMBOLS: every book."""
    mirror_symbols: str = ""
    """Mirror mode: symbols to mirror (comma-separated; EXCHANGE:SYMBOL or a bare symbol)."""

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"scheme must be one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}, got {value!r}"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"no host in {value!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError as exc:
            raise ValueError(f"bad port in {value!r}: {exc}") from None
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        validate_prefix(value)
        return value

    @field_validator("mirror_exchanges")
    @classmethod
    def _check_mirror_exchanges(cls, value: str) -> str:
        names = [x.strip().lower() for x in value.split(",") if x.strip()]
        for name in names:
            validate_exchange(name)
        return ",".join(names)

    @field_validator("mirror_symbols")
    @classmethod
    def _check_mirror_symbols(cls, value: str) -> str:
        items = [x.strip() for x in value.split(",") if x.strip()]
        for item in items:
            exchange, symbol = split_target(item)
            if exchange:
                validate_exchange(exchange)
            validate_symbol(symbol)
        return ",".join(items)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (and overrides); a bad value raises SettingsError naming it."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]) or "?"
            lines.append(f"{prefix}{name.upper()}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid setting: " + "; ".join(lines)) from None
