"""Connection pacing: sliding-window logs that never let more opens into any window than the exchange allows,
shared through Redis by every feeder of a host, with this process's own log as the fallback."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
from support.acl_users import FEEDER_ACL

from client.layout import RedisLayout
from feeder.pacing import OpenRateLimiter, SharedOpenLimiter
from launch.redis_server import LocalRedisServer as RedisServer


def most_in_any_window(stamps: list[float], window: float) -> int:
    """The most stamps inside any half-open window of `window` seconds, wherever it starts."""
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, t in enumerate(stamps):
        while t - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_the_local_log_never_exceeds_its_limit_in_any_window() -> None:
    limiter = OpenRateLimiter(rate=20.0, burst=4)  # 4 per 0.2 s
    stamps: list[float] = []

    async def opener() -> None:
        for _ in range(4):
            await limiter.acquire()
            stamps.append(time.monotonic())

    await asyncio.gather(*(opener() for _ in range(4)))  # a reconnect storm: 16 opens at once
    assert len(stamps) == 16
    assert most_in_any_window(stamps, 0.2 - 0.005) <= 4
    assert stamps[-1] - stamps[0] >= 0.6 - 0.02  # 16 opens, 4 per 0.2 s: at least three more windows
    # the token bucket it replaced (rate 20, burst 4) would have let 4 + 0.2 * 20 = 8 into the first window
    assert most_in_any_window(stamps, 0.2 - 0.005) < 8


async def test_feeders_of_one_host_share_one_budget_through_redis(redis_server: RedisServer) -> None:
    """Three feeder processes' limiters (three clients) against one host log: together they keep the limit,
    counted on Redis's clock; another host has its own budget."""
    clients = [redis.asyncio.Redis.from_url(redis_server.url) for _ in range(4)]
    layout = RedisLayout(prefix="pace-test")
    try:
        await clients[0].delete(layout.pacing_key("upbit", "host-a"), layout.pacing_key("upbit", "host-b"))
        limiters = [
            SharedOpenLimiter(c, layout, "upbit", "host-a", OpenRateLimiter(rate=10.0, burst=3))
            for c in clients[:3]
        ]  # 3 per 0.3 s for the whole host
        stamps: list[float] = []

        async def feeder(limiter: SharedOpenLimiter) -> None:
            for _ in range(4):
                await limiter.acquire()
                stamps.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(feeder(limiter) for limiter in limiters))
        assert len(stamps) == 12
        # alone, each process's own log would let 3 x 3 = 9 into the first window
        assert most_in_any_window(stamps, 0.3 - 0.02) <= 3
        assert time.monotonic() - started >= 0.9 - 0.05
        assert await clients[0].zcard(layout.pacing_key("upbit", "host-a")) <= 3

        other = SharedOpenLimiter(clients[3], layout, "upbit", "host-b", OpenRateLimiter(rate=10.0, burst=3))
        t0 = time.monotonic()
        for _ in range(3):
            await other.acquire()
        assert time.monotonic() - t0 < 0.25  # host-b's budget is its own
    finally:
        for c in clients:
            await c.aclose()


async def test_pacing_falls_back_to_the_local_log_when_redis_is_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.asyncio.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    try:
        limiter = SharedOpenLimiter(
            client, RedisLayout(), "okx", "host-a", OpenRateLimiter(rate=10.0, burst=2)
        )
        stamps = []
        for _ in range(4):
            await limiter.acquire()
            stamps.append(time.monotonic())
        assert most_in_any_window(stamps, 0.2 - 0.01) <= 2
        assert "falls back to this process's own log" in caplog.text
    finally:
        await client.aclose()


async def test_the_feeder_acl_lets_the_pacing_script_run(fresh_redis_server: RedisServer) -> None:
    admin = redis.asyncio.Redis.from_url(fresh_redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "md-feeder", "reset", "on", ">pw", *FEEDER_ACL.split())
    user = redis.asyncio.Redis(port=fresh_redis_server.port, username="md-feeder", password="pw")
    try:
        limiter = SharedOpenLimiter(user, RedisLayout(), "upbit", "h", OpenRateLimiter(rate=5.0, burst=5))
        await limiter.acquire()
        assert await admin.zcard("md:pacing:upbit:h") == 1  # counted in Redis, not by the fallback
    finally:
        await user.aclose()
        await admin.aclose()
