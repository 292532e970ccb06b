"""No silent death: an error nothing handles, in the feeder's writer or a connection, or in a mirror's
subscriber, is logged with its traceback and either retried (the mirror, its books unavailable meanwhile) or
ends the feeder with exit status 1 and its books not live.

Was: a writer task that died (e.g. a cluster client's own exception class, not a RedisError) left the
heartbeat saying ``running`` while 0 books were written; a mirror thread that died was never restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import fakeredis
import pytest
from support.book_helpers import book, feeder_write, set_feeder_state

import client.mirror.cache
from client import BookState, RedisMarketDataProvider, load_settings
from exchange_sim import ExchangeSimulator
from feeder.app import Feeder
from feeder.settings import FeederSettings
from feeder.writer import SnapshotWriter


async def test_a_writer_that_dies_stops_the_feeder_with_status_1_and_its_books_go_not_live(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    real_run = SnapshotWriter.run
    written = asyncio.Event()

    async def dying_run(self: SnapshotWriter) -> None:
        task = asyncio.create_task(real_run(self))
        while self.stats.written == 0:  # noqa: ASYNC110 - a counter nothing signals; first book, then fail
            await asyncio.sleep(0.01)
        written.set()
        task.cancel()
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SnapshotWriter, "run", dying_run)
    async with ExchangeSimulator(rate=10.0) as sim:
        settings = load_settings(
            FeederSettings,
            redis_url="redis://127.0.0.1:1/0",  # not used: the fakeredis client is passed in
            feeder_id="dying",
            exchanges="upbit",
            upbit_symbols="KRW-BTC",
            upbit_url=sim.upbit_url,
            heartbeat_interval=0.1,
        )
        feeder = Feeder(settings, client=client)
        stop = asyncio.Event()
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(feeder.run(stop), 20)  # returns by itself: nobody set stop
    assert written.is_set(), "the fault was not injected: the writer never wrote"
    assert feeder.exit_code == 1
    assert "task writer ended unexpectedly" in caplog.text and "a bug in the writer" in caplog.text
    assert any(r.exc_info for r in caplog.records), "logged without its traceback"
    reader = RedisMarketDataProvider(redis=fakeredis.FakeRedis(server=server))
    assert reader.snapshot_status("KRW-BTC", "upbit").state is BookState.FEEDER_DEAD  # offline: not live
    await client.aclose()


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
async def test_an_unexpected_error_in_the_mirror_is_logged_and_retried_books_unavailable_meanwhile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    server = fakeredis.FakeServer()
    admin = fakeredis.FakeRedis(server=server)
    set_feeder_state(admin, "f1")
    feeder_write(admin, book(xid=1), "f1")
    real_apply = client.mirror.cache.BookCache.apply
    failures = {"left": 1}
    states: list[BookState] = []

    def failing_apply(self: Any, channel: Any, data: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ValueError("a bug in apply")
        return real_apply(self, channel, data)

    monkeypatch.setattr(client.mirror.cache.BookCache, "apply", failing_apply)
    if mode == "sync":
        provider = RedisMarketDataProvider(redis=fakeredis.FakeRedis(server=server), mode="mirror")
        provider.start()
    else:
        provider = RedisMarketDataProvider(async_redis=fakeredis.FakeAsyncRedis(server=server), mode="mirror")
        await provider.astart()
    try:
        first = (
            provider.get_latest_snapshot("KRW-BTC")
            if mode == "sync"
            else await provider.aget_latest_snapshot("KRW-BTC")
        )
        assert first is not None
        with caplog.at_level(logging.ERROR):
            feeder_write(admin, book(tag=2, xid=2), "f1")  # its message hits the bug
            deadline = time.monotonic() + 5
            while True:
                if mode == "sync":
                    states.append(provider.snapshot_status("KRW-BTC", "upbit").state)
                    current = provider.get_latest_snapshot("KRW-BTC")
                else:
                    states.append((await provider.asnapshot_status("KRW-BTC", "upbit")).state)
                    current = await provider.aget_latest_snapshot("KRW-BTC")
                if current is not None and current.xid == 2:
                    break
                assert time.monotonic() < deadline, f"the mirror did not recover: {states[-5:]}"
                await asyncio.sleep(0.01)
        assert failures["left"] == 0, "the fault was not injected"
        assert "mirror: unexpected error" in caplog.text and "a bug in apply" in caplog.text
        assert provider._cache.errors == 1
        assert BookState.UNAVAILABLE in states, "the frozen copy must not be served while the mirror recovers"
    finally:
        if mode == "sync":
            provider.stop()
        else:
            await provider.astop()
