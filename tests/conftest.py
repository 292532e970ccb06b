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
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
from support.backends import Backend

from launch.redis_server import LocalRedisServer as RedisServer

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
