"""Shared fixtures: a private redis-server, fakeredis, and the `backend` parametrisation over both.

The suites live in three folders by what they need: ``unit/`` (pure code, no server), ``integration/``
(real servers started in this process: redis-server on a free port, the simulator), ``e2e/`` (subprocesses:
md-feeder, md-sim, md, engines). Each test is marked with its folder's kind.

Tests that need Redis run twice: once on fakeredis (fast, in-process) and once on a real redis-server that
this file starts on a free port. A missing redis-server is an error, never a skip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import fakeredis
import pytest
import redis
import redis.asyncio
from support.backends import Backend
from support.tls import TlsRedis, TlsSentinelRedis

from launch.redis_server import LocalRedisServer as RedisServer
from launch.redis_topologies import RedisCluster3, ReplicatedRedis, SentinelRedis

BACKENDS = ["fakeredis", "redis"]
KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the kind of its folder, so that ``pytest -m unit`` (or integration, e2e) works."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)


def _started_server() -> RedisServer:
    try:
        server = RedisServer()
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (flushed between tests by `backend`)."""
    server = _started_server()
    yield server
    server.cleanup()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill or restart it."""
    server = _started_server()
    yield server
    server.cleanup()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        b = Backend("fakeredis", fakeredis.FakeRedis(server=server), _fake_server=server)
    else:
        real: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(real.url)
        client.flushall()
        client.script_flush()
        b = Backend("redis", client, url=real.url)
    yield b
    b.sync.close()


@pytest.fixture
def real_backend(redis_server: RedisServer) -> Iterator[Backend]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield Backend("redis", client, url=redis_server.url)
    client.close()


@pytest.fixture
async def aclient(backend: Backend) -> AsyncIterator[Any]:
    client = backend.new_async()
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Iterator[None]:
    """Every thread a test starts must be stopped by its owner before the test ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"threads left running: {left}"


# --- Topologies of the tests' own: primary + replica, Sentinel, a 3-master cluster, TLS only -------------------
# (launch/redis_topologies.py, tests/support/tls.py). Each starts on free ports and is stopped by PID in
# teardown, whatever the test did. Like `redis_server`, a fixture that cannot start what it promises FAILS.
# Measured on 2 cores: replicated ~0.1 s, sentinel ~0.2 s (its `failover()` ~11 s: Sentinel waits 8 s before it
# demotes the old primary), cluster ~2 s, TLS ~0.2 s (certificates included): all function scope.


_Started = TypeVar("_Started")


def _start_or_fail(what: str, start: Callable[[], _Started]) -> _Started:
    try:
        return start()
    except Exception as exc:
        message = f"{what} did not start: {type(exc).__name__}: {exc}"
    pytest.fail(message, pytrace=False)  # outside `except`: the report shows the message, not a chain


@pytest.fixture
def replicated_redis() -> Iterator[ReplicatedRedis]:
    """A primary and one replica, in sync when the test starts."""
    topology = _start_or_fail("primary + replica", ReplicatedRedis().start)
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def sentinel_redis() -> Iterator[SentinelRedis]:
    """Primary + replica watched by one Sentinel (quorum 1) as ``mymaster``; the replica is known to it."""
    topology = _start_or_fail("primary + replica + Sentinel", SentinelRedis().start)
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster3]:
    """Three masters, no replicas, ``cluster_state:ok`` on every node."""
    topology = _start_or_fail("3-master Redis Cluster", RedisCluster3().start)
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def tls_redis() -> Iterator[TlsRedis]:
    """A redis-server on TLS only (``rediss://``), client certificates required; `.material` has the certs."""
    server = _start_or_fail("TLS redis-server", TlsRedis.launch)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def tls_sentinel_redis() -> Iterator[TlsSentinelRedis]:
    """A TLS-only redis-server and a TLS-only Sentinel that names it (client certificates required by both)."""
    topology = _start_or_fail("TLS redis-server + TLS Sentinel", TlsSentinelRedis)
    try:
        yield topology
    finally:
        topology.cleanup()
