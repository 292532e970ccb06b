"""Which Redis to talk to, built from the settings: one standalone server, or the primary Sentinel names; a
replica for an engine's reads; TLS. Every Redis client of the product (provider, feeder, ``md``) comes from here.

redis-py's own `Sentinel` does the fail-over work: its connection pool asks the Sentinels for the primary on
every new connection and drops a connection that answers READONLY (its server was demoted). What it does not
do is notice a fail-over while an old connection still works, nor tell the feeder that the server behind its
connections changed: `follow_primary` does, and each heartbeat asks its server for its run id
(`heartbeat_flow(identify=True)`), which also catches a server changed behind one address without Sentinel.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.connection import parse_url

from client.masking import mask_url
from client.settings import ClientSettings

# What a URL says that still applies when the Sentinels name the host and port.
_URL_KEEPS = ("username", "password", "db")


def _tls_options(settings: ClientSettings, url: str) -> dict[str, Any]:
    if not url.startswith("rediss://"):
        return {}
    return _tls_files(settings)


def _tls_files(settings: ClientSettings) -> dict[str, Any]:
    """redis-py's TLS options from the MD_REDIS_TLS_* settings."""
    insecure = settings.redis_tls_insecure
    options: dict[str, Any] = {
        "ssl_cert_reqs": "none" if insecure else "required",
        "ssl_check_hostname": not insecure,
    }
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def _options(settings: ClientSettings, url: str) -> dict[str, Any]:
    timeout = settings.redis_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        **_tls_options(settings, url),
    }


def _cluster_options(settings: ClientSettings) -> dict[str, Any]:
    options = _options(settings, settings.redis_url)
    options.pop("health_check_interval")  # the cluster client checks its nodes itself
    return options


def _read_url(settings: ClientSettings, read: bool) -> str | None:
    """The replica URL when this client is for reads and one is set; None: the primary."""
    return settings.redis_read_url if read and settings.redis_read_url else None


def _sentinel_parts(settings: ClientSettings, asyncio: bool) -> tuple[Any, dict[str, Any]]:
    url = settings.redis_url
    timeout = settings.redis_timeout
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    if settings.redis_sentinel_tls:
        sentinel_kwargs.update(ssl=True, **_tls_files(settings))
    kind = redis.asyncio.sentinel.Sentinel if asyncio else redis.sentinel.Sentinel
    manager = kind(settings.sentinel_nodes(), sentinel_kwargs=sentinel_kwargs)
    parsed = parse_url(url)  # type: ignore[no-untyped-call]
    options = {k: parsed[k] for k in _URL_KEEPS if k in parsed}
    if url.startswith("rediss://"):
        options["ssl"] = True
    options.update(_options(settings, url))
    return manager, options


def sync_client(settings: ClientSettings, *, read: bool = False) -> redis.Redis:
    """A client of the primary (through Sentinel when MD_REDIS_SENTINELS is set), or, with `read`, of
    MD_REDIS_READ_URL when it is set."""
    replica = _read_url(settings, read)
    if replica is not None:
        return redis.Redis.from_url(replica, **_options(settings, replica))
    if settings.redis_sentinels:
        manager, options = _sentinel_parts(settings, asyncio=False)
        client: redis.Redis = manager.master_for(settings.redis_sentinel_service, **options)
        return client
    if settings.redis_cluster:
        cluster: redis.Redis = redis.cluster.RedisCluster.from_url(  # type: ignore[assignment]
            settings.redis_url, **_cluster_options(settings)
        )
        return cluster
    return redis.Redis.from_url(settings.redis_url, **_options(settings, settings.redis_url))


def async_client(settings: ClientSettings, *, read: bool = False) -> redis.asyncio.Redis:
    """The asyncio twin of `sync_client`."""
    replica = _read_url(settings, read)
    if replica is not None:
        return redis.asyncio.Redis.from_url(replica, **_options(settings, replica))
    if settings.redis_sentinels:
        manager, options = _sentinel_parts(settings, asyncio=True)
        client: redis.asyncio.Redis = manager.master_for(settings.redis_sentinel_service, **options)
        return client
    if settings.redis_cluster:
        cluster: redis.asyncio.Redis = redis.asyncio.cluster.RedisCluster.from_url(  # type: ignore[assignment]
            settings.redis_url, **_cluster_options(settings)
        )
        return cluster
    return redis.asyncio.Redis.from_url(settings.redis_url, **_options(settings, settings.redis_url))


def describe(settings: ClientSettings, *, read: bool = False) -> str:
    """Where clients of these settings connect, for log lines and messages: never with a password."""
    replica = _read_url(settings, read)
    if replica is not None:
        return f"{mask_url(replica)} (replica, for reads)"
    if settings.redis_sentinels:
        parts = urlsplit(settings.redis_url)
        db = parts.path.strip("/") or "0"
        over = ", Sentinels over TLS" if settings.redis_sentinel_tls else ""
        return (
            f"Sentinel service {settings.redis_sentinel_service!r} via {settings.redis_sentinels} "
            f"({parts.scheme}, db {db}{over})"
        )
    if settings.redis_cluster:
        return f"{mask_url(settings.redis_url)} (Cluster)"
    return mask_url(settings.redis_url)


async def follow_primary(client: redis.asyncio.Redis) -> tuple[str, int] | None:
    """Ask the Sentinels which server is the primary now; idle connections to an old one are dropped, so the
    next round trip goes to the new one. None for a client that is not Sentinel-managed.

    Between a fail-over and the demotion of the old primary (seconds), the old one still accepts writes that
    will be lost: asking at every heartbeat bounds that window to one heartbeat interval.
    """
    pool = getattr(client, "connection_pool", None)  # a Cluster client has none
    if not isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return None
    address: tuple[str, int] = await pool.get_master_address()  # type: ignore[no-untyped-call]
    return address


def primaries(client: redis.Redis) -> list[redis.Redis]:
    """A client per primary node: the Cluster's masters, or `client` itself. For what only runs per node
    (SCAN: each node has its own keyspace)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = [node.redis_connection for node in client.get_primaries()]
        return [node for node in nodes if node is not None]
    return [client]
