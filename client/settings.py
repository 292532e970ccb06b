"""Settings shared by the client and the feeder, read from ``MD_*`` environment variables and ``.env``.

`load_settings` turns pydantic's validation errors into a `SettingsError` whose message names the
environment variable, so a bad value stops start-up with a line an operator can act on.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.errors import SettingsError
from client.layout import split_target, validate_exchange, validate_prefix, validate_symbol
from client.masking import mask_url

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


def _port_or_none(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise ValueError("expected a port number from 0 to 65535, or nothing (off)")
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
NonNegativeInt = Annotated[int, Field(ge=0)]
OptionalPort = Annotated[int | None, BeforeValidator(_none_words), AfterValidator(_port_or_none)]


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
    redis_read_url: str = ""
    """Engines: a replica to read from (both modes); writes (legacy callbacks) still go to the primary."""
    redis_sentinels: str = ""
    """Sentinels (``host:port,…``): the primary is the one they name for the service; MD_REDIS_URL then gives
    only the scheme, user, password and db."""
    redis_sentinel_service: str = "mymaster"
    """The Sentinel service (master name)."""
    redis_sentinel_password: SecretStr | None = None
    """Password of the Sentinels themselves (``requirepass`` of the sentinel processes), if any."""
    redis_sentinel_tls: bool = False
    """Reach the Sentinels over TLS too, with the MD_REDIS_TLS_* files (Sentinels with ``tls-port``)."""
    redis_cluster: bool = False
    """Redis Cluster: MD_REDIS_URL names any node; clients learn the others (and follow resharding)."""
    redis_tls_ca_file: str = ""
    """TLS (``rediss://``): CA certificate file to verify the server with; empty = the system's CAs."""
    redis_tls_cert_file: str = ""
    """TLS: client certificate file, for a server that requires client certificates."""
    redis_tls_key_file: str = ""
    """TLS: the client certificate's private key file."""
    redis_tls_insecure: bool = False
    """TLS: true = do not verify the server's certificate or host name (tests only: it defeats TLS)."""

    def __repr_args__(self) -> Any:
        """Settings are printed in logs and tracebacks: never with a password in them."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name in _URL_FIELDS and isinstance(value, str) else value

    @field_validator("redis_read_url")
    @classmethod
    def _check_read_url(cls, value: str) -> str:
        return _checked_url(value) if value else value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        nodes = [x.strip() for x in value.split(",") if x.strip()]
        for node in nodes:
            try:
                _host_port(node)
            except ValueError:
                raise ValueError(f"expected host:port[,host:port...], got {node!r}") from None
        return ",".join(nodes)

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _check_file(cls, value: str) -> str:
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file: {value!r}")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        tls = self.redis_tls_ca_file or self.redis_tls_cert_file or self.redis_tls_key_file
        if tls and not self.redis_url.startswith("rediss://"):
            raise ValueError(
                "MD_REDIS_TLS_* files are set but MD_REDIS_URL is not rediss:// (TLS): set both or neither"
            )
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError(
                "MD_REDIS_CLUSTER and MD_REDIS_SENTINELS exclude each other: a Cluster fails over itself"
            )
        if self.redis_sentinel_tls and not (self.redis_sentinels and self.redis_url.startswith("rediss://")):
            raise ValueError(
                "MD_REDIS_SENTINEL_TLS needs MD_REDIS_SENTINELS and a rediss:// MD_REDIS_URL (the servers the "
                "Sentinels name are reached over TLS as well)"
            )
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("MD_REDIS_TLS_CERT_FILE and MD_REDIS_TLS_KEY_FILE go together")
        return self

    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """The Sentinels as (host, port); empty: no Sentinel (MD_REDIS_URL is the primary itself)."""
        return [_host_port(node) for node in self.redis_sentinels.split(",") if node]

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        return _checked_url(value)

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


def _checked_url(value: str) -> str:
    """`value` if it is a Redis URL. The error does not quote it: `load_settings` adds the URL, masked."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        del exc  # its text may quote a piece of the password (a ':' in it read as a port)
        raise ValueError("the port must be a number from 1 to 65535") from None
    if parts.scheme not in _REDIS_SCHEMES:
        *others, last = [s + "://" for s in _REDIS_SCHEMES]
        raise ValueError(f"must start with {', '.join(others)} or {last}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host")
    del port
    return value


def _host_port(node: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:26379`` for IPv6) as a pair; ValueError when it is not one."""
    parts = urlsplit(f"//{node}")
    if not parts.hostname or parts.port is None or parts.port == 0 or parts.path or parts.username:
        raise ValueError(node)
    return parts.hostname, parts.port


# Fields whose values may hold a password: masked wherever settings or their errors are printed.
_URL_FIELDS = ("redis_url", "redis_read_url")
_SECRET_FIELDS = ("redis_sentinel_password",)

S = TypeVar("S", bound=BaseSettings)


def _readable(message: str) -> str:
    """pydantic's message without its "Value error, " prefix: the rule, once."""
    for head in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(head)
    return message


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (and overrides); a bad value raises SettingsError naming it."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]) or "?"
            message = _readable(str(error["msg"]))
            shown = error.get("input")
            if name in _URL_FIELDS and isinstance(shown, str):
                shown = mask_url(shown)
            elif name in _SECRET_FIELDS or not error["loc"]:  # a whole-model check: its input is every field
                lines.append(f"{prefix}{name.upper()}: {message}" if error["loc"] else message)
                continue
            lines.append(f"{prefix}{name.upper()}: {message} (got {shown!r})")
        raise SettingsError("invalid setting: " + "; ".join(lines)) from None
