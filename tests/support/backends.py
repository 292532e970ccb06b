"""`Backend`: the Redis one test runs against, fakeredis or a private real redis-server (see conftest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fakeredis
import redis
import redis.asyncio


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
