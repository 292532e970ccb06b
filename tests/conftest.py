"""Shared fixtures: a private redis-server, fakeredis, and the `backend` parametrisation over both.

Tests that need Redis run twice: once on fakeredis (fast, in-process) and once on a real redis-server that
this file starts on a free port. A missing redis-server is an error, never a skip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from launch.redis_server import LocalRedisServer as RedisServer

BACKENDS = ["fakeredis", "redis"]


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


@dataclass
class Backend:
    """A Redis for one test: sync client plus a factory of asyncio clients on the same data."""

    name: str
    sync: Any
    url: str | None = None
    _fake_server: Any = None
    _async_clients: list[Any] = field(default_factory=list)

    def new_sync(self) -> Any:
        if self._fake_server is not None:
            return fakeredis.FakeRedis(server=self._fake_server)
        return redis.Redis.from_url(self.url)

    def new_async(self) -> Any:
        if self._fake_server is not None:
            client = fakeredis.FakeAsyncRedis(server=self._fake_server)
        else:
            client = redis.asyncio.Redis.from_url(self.url)
        self._async_clients.append(client)
        return client


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
