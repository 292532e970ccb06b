"""`md subscribe` / `md unsubscribe`: running feeders follow them within a second, on their open connections
(Binance SUBSCRIBE/UNSUBSCRIBE, Upbit a new request on the same connection): no connection is replaced; a removed
book stops being served live; a feeder started later starts from its configuration plus the changes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from support.feeder_process import FeederProcess
from support.feeder_rig import poll

from client import BookState, RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.redis_server import LocalRedisServer as RedisServer
from md_cli.main import main as md_main

pytestmark = pytest.mark.e2e


async def test_feeders_follow_md_subscribe_without_replacing_connections(
    fresh_redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_redis_server.url
    async with ExchangeSimulator(rate=10.0) as sim:
        env = {"MD_REDIS_URL": url, "MD_UPBIT_URL": sim.upbit_url, "MD_BINANCE_URL": sim.binance_url}
        feeder = FeederProcess({**env, "MD_FEEDER_ID": "runtime-1", "MD_UPBIT_SYMBOLS": "KRW-BTC,KRW-ETH",
                                "MD_BINANCE_SYMBOLS": "BTCUSDT"})  # fmt: skip
        later: FeederProcess | None = None
        raw = redis.asyncio.Redis.from_url(url)
        try:
            async with RedisMarketDataProvider.from_url(url) as provider:

                async def live(exchange: str, *symbols: str) -> bool:
                    books = await provider.aget_latest_snapshots(list(symbols), exchange=exchange)
                    return all(b is not None for b in books.values())

                await poll(
                    lambda: live("upbit", "KRW-BTC", "KRW-ETH"), 20, f"not live\n{feeder.log()[-2000:]}"
                )
                await poll(lambda: live("binance", "BTCUSDT"), 20, "Binance not live")
                upbit_ids, binance_ids = sim.connection_ids("upbit"), sim.connection_ids("binance")
                opened = {x: sim.counters(x)["connections_opened"] for x in ("upbit", "binance")}

                def md(*argv: str) -> int:
                    return md_main(["--redis-url", url, *argv])

                assert await asyncio.to_thread(md, "subscribe", "binance", "ethusdt", "BTCUSDT") == 0
                assert "binance: subscribed ETHUSDT, BTCUSDT" in capsys.readouterr().out
                took = await poll(
                    lambda: live("binance", "ETHUSDT"), 5, f"ETHUSDT not fed\n{feeder.log()[-2000:]}"
                )
                assert took < 2.0  # applied within a second, plus the first book's trip
                assert await asyncio.to_thread(md, "subscribe", "upbit", "KRW-XRP") == 0
                assert "KRW-XRP  live, fed by runtime-1" in capsys.readouterr().out  # it waited and says so
                await poll(lambda: live("upbit", "KRW-XRP"), 5, "KRW-XRP not fed")
                # a symbol the exchange does not list is reported back, not silently accepted
                sim.upbit.unlisted.add("KRW-NOPE")
                assert await asyncio.to_thread(md, "subscribe", "upbit", "KRW-NOPE", "--wait", "1.5") == 1
                assert (
                    "KRW-NOPE  not live after 1.5s (missing): is it listed by upbit?"
                    in capsys.readouterr().out
                )
                assert await asyncio.to_thread(md, "unsubscribe", "upbit", "KRW-NOPE", "--wait", "0") == 0
                assert await asyncio.to_thread(md, "unsubscribe", "upbit", "KRW-ETH") == 0

                async def eth_down() -> bool:
                    ((status, _),) = await provider.ainspect_books([("upbit", "KRW-ETH")])
                    return status.state is BookState.CONNECTION_DOWN

                await poll(eth_down, 5, "an unsubscribed book is still served live")
                assert await live("upbit", "KRW-BTC", "KRW-XRP") and await live(
                    "binance", "BTCUSDT", "ETHUSDT"
                )
                # the same connections did it all: none was replaced or added
                assert (sim.connection_ids("upbit"), sim.connection_ids("binance")) == (
                    upbit_ids,
                    binance_ids,
                )
                assert {x: sim.counters(x)["connections_opened"] for x in ("upbit", "binance")} == opened
                assert (
                    sim.upbit.subscriber_count("KRW-ETH") == 0
                    and sim.binance.subscriber_count("ETHUSDT") == 1
                )

                assert await raw.smembers("md:wanted:upbit") == {b"KRW-XRP"}
                assert await raw.smembers("md:unwanted:upbit") == {b"KRW-ETH", b"KRW-NOPE"}
                # a feeder started later: its own symbols, plus those added, minus those removed at run time
                later = FeederProcess({**env, "MD_FEEDER_ID": "runtime-2", "MD_EXCHANGES": "upbit",
                                       "MD_UPBIT_SYMBOLS": "KRW-SOL,KRW-ETH"})  # fmt: skip

                async def twin() -> bool:
                    counts = [sim.upbit.subscriber_count(s) for s in ("KRW-XRP", "KRW-SOL", "KRW-ETH")]
                    return counts == [2, 1, 0]  # added to both, its own, removed from both

                await poll(twin, 20, f"the later feeder did not take the changes\n{later.log()[-2000:]}")
        finally:
            logs = feeder.log() + (later.log() if later else "")
            feeder.cleanup()
            if later is not None:
                later.cleanup()
            await raw.aclose()
        assert "Traceback" not in logs and "subscription changed at run time" in logs
