"""End to end for the exchanges beyond Upbit and Binance: simulator (in this process, speaking each exchange's
protocol) -> md-feeder (subprocess) -> a private redis-server -> a provider here.

Every exchange: the books in Redis equal the simulator's truth (its top ``MD_<EXCHANGE>_DEPTH`` levels, with
the exchange's own ordering id as ``xid``). The incremental ones (Bybit, OKX) also run with the simulator
injecting sequence gaps, duplicated, reordered and corrupted deltas, wrong checksums and sequence restarts:
every book a reader is served as live must equal the exchange's book at that id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio
from support.feeder_process import FeederProcess
from support.feeder_rig import poll
from websockets.asyncio.client import connect

from client import OrderBookSnapshot, RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.redis_server import LocalRedisServer as RedisServer
from md_cli.main import main as md_main

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Case:
    exchange: str
    symbols: list[str]
    depth: int  # MD_<EXCHANGE>_DEPTH: levels a side written


CASES = [
    Case("bithumb", ["KRW-BTC", "KRW-ETH", "KRW-XRP"], 10),
    Case("coinone", ["KRW-BTC", "KRW-ETH", "KRW-XRP"], 10),
    Case("bybit", ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 20),
    Case("okx", ["BTC-USDT", "ETH-USDT", "SOL-USDT"], 20),
]


def feeder_for(sim: ExchangeSimulator, redis_url: str, case: Case, **env: str) -> FeederProcess:
    name = case.exchange.upper()
    return FeederProcess(
        {
            "MD_REDIS_URL": redis_url,
            "MD_EXCHANGES": case.exchange,
            "MD_FEEDER_ID": f"e2e-{case.exchange}",
            f"MD_{name}_URL": sim.url(case.exchange),
            f"MD_{name}_SYMBOLS": ",".join(case.symbols),
            f"MD_{name}_DEPTH": str(case.depth),
            **env,
        }
    )


def top(book: OrderBookSnapshot | Any, depth: int) -> tuple[Any, Any]:
    return list(book.bids[:depth]), list(book.asks[:depth])


@pytest.fixture
async def provider(fresh_redis_server: RedisServer) -> AsyncIterator[RedisMarketDataProvider]:
    async with RedisMarketDataProvider.from_url(fresh_redis_server.url) as provider:
        yield provider


@pytest.mark.parametrize("case", CASES, ids=[c.exchange for c in CASES])
async def test_books_in_redis_equal_the_exchange_simulator(
    case: Case, fresh_redis_server: RedisServer, provider: RedisMarketDataProvider
) -> None:
    ports: dict[str, Any] = {"upbit_port": None, "binance_port": None, f"{case.exchange}_port": 0}
    async with ExchangeSimulator(rate=20.0, **ports) as sim:
        feeder = feeder_for(sim, fresh_redis_server.url, case)
        try:

            async def live() -> bool:
                books = await provider.aget_latest_snapshots(case.symbols, exchange=case.exchange)
                return all(b is not None for b in books.values())

            await poll(live, 20, f"{case.exchange} books not live\n{feeder.log()[-3000:]}")
            sim.set_rate(0.0)  # freeze: the last books sent are the truth

            async def equal() -> bool:
                truth = sim.last_sent
                books = await provider.aget_latest_snapshots(case.symbols, exchange=case.exchange)
                for symbol, book in books.items():
                    want = truth.get((case.exchange, symbol))
                    if book is None or want is None or book.xid != want.xid:
                        return False
                    if top(book, case.depth) != top(want, case.depth):
                        return False
                return True

            await poll(equal, 10, f"{case.exchange} books in Redis differ from the simulator's")
            books = await provider.aget_latest_snapshots(case.symbols, exchange=case.exchange)
            for book in books.values():
                assert book is not None and book.exchange == case.exchange
                assert 1 <= len(book.bids) <= case.depth and 1 <= len(book.asks) <= case.depth
                assert book.bids[0][0] < book.asks[0][0]
        finally:
            log = feeder.log()
            feeder.cleanup()
        assert "Traceback" not in log


FAULTS = ("gap", "duplicate", "reorder", "corrupt", "checksum", "restart")


@pytest.mark.parametrize("case", [c for c in CASES if c.exchange in ("bybit", "okx")], ids=["bybit", "okx"])
async def test_no_desynced_book_is_served_as_live_under_injected_delta_faults(
    case: Case, fresh_redis_server: RedisServer, provider: RedisMarketDataProvider
) -> None:
    symbols = case.symbols
    ports: dict[str, Any] = {"upbit_port": None, "binance_port": None, f"{case.exchange}_port": 0}
    options = {"okx": {"checksum": True}} if case.exchange == "okx" else {}
    async with ExchangeSimulator(rate=300.0, options=options, **ports) as sim:
        server: Any = sim.server(case.exchange)
        # a fault in every tenth update is far beyond any exchange's real rate: lift OKX's resync budget (3 a
        # minute, for its request limit), or the test would measure reconnects instead of desyncs
        feeder = feeder_for(sim, fresh_redis_server.url, case, MD_RESYNCS_PER_MINUTE="600")
        try:

            async def live() -> bool:
                books = await provider.aget_latest_snapshots(symbols, exchange=case.exchange)
                return all(b is not None for b in books.values())

            await poll(live, 20, f"books not live before the faults\n{feeder.log()[-3000:]}")
            kinds = FAULTS if case.exchange == "okx" else tuple(k for k in FAULTS if k != "checksum")
            server.set_delta_faults(rate=0.1, kinds=kinds, seed=12)
            served = checked = 0
            wrong: list[str] = []
            injected = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60.0
            while injected < 1000 and loop.time() < deadline:
                books = await provider.aget_latest_snapshots(symbols, exchange=case.exchange)
                for symbol, book in books.items():
                    if book is None:
                        continue
                    served += 1
                    assert book.xid is not None
                    truth = server.truth_at(symbol, book.xid)
                    if truth is None:
                        continue  # older than the history kept (a quiet book); not judged
                    checked += 1
                    if top(book, case.depth) != top(truth, case.depth):
                        wrong.append(f"{symbol} xid {book.xid}")
                injected = server.counters["delta_faults"]
                await asyncio.sleep(0.01)
            assert injected >= 1000, f"only {injected} faults were injected: {server.counters}"
            assert all(server.counters[f"delta_{kind}"] > 0 for kind in kinds), server.counters
            assert wrong == [], f"{len(wrong)} desynced books served as live: {wrong[:5]}"
            assert checked > 200, f"only {checked} of {served} live books could be checked"
            print(
                f"{case.exchange}: {injected} faults, {checked} live books checked against the truth, 0 wrong"
            )
            server.set_delta_faults(rate=0.0)

            # resynchronised, not given up: every book is live again and equal to the truth once faults stop
            async def resynced() -> bool:
                books = await provider.aget_latest_snapshots(symbols, exchange=case.exchange)
                for symbol, book in books.items():
                    want = server.truth_at(symbol, book.xid) if book is not None else None
                    if book is None or want is None or top(book, case.depth) != top(want, case.depth):
                        return False
                return True

            await poll(resynced, 20, f"books did not come back after the faults\n{feeder.log()[-3000:]}")
        finally:
            log = feeder.log()
            feeder.cleanup()
        assert "Traceback" not in log
        assert "asking for a new snapshot" in log  # the feeder did resynchronise


async def test_a_symbol_the_exchange_does_not_list_is_reported_missing(
    fresh_redis_server: RedisServer, provider: RedisMarketDataProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    """Upbit answers an unknown code with nothing at all: after MD_MISSING_AFTER the feeder logs it and lists
    it as `missing` in its status (and so in `md status`); the other codes are unaffected."""
    async with ExchangeSimulator(rate=5.0, binance_port=None) as sim:
        sim.upbit.unlisted.add("KRW-NOPE")
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": fresh_redis_server.url,
                "MD_EXCHANGES": "upbit",
                "MD_FEEDER_ID": "e2e-missing",
                "MD_UPBIT_URL": sim.upbit_url,
                "MD_UPBIT_SYMBOLS": "KRW-BTC,KRW-NOPE,KRW-ETH",
                "MD_MISSING_AFTER": "1",
            }
        )
        raw = redis.asyncio.Redis.from_url(fresh_redis_server.url)
        try:

            async def reported() -> bool:
                return await raw.hget("md:feeder:e2e-missing", "missing") == b"KRW-NOPE"

            await poll(reported, 15, f"KRW-NOPE not reported missing\n{feeder.log()[-2000:]}")
            books = await provider.aget_latest_snapshots(["KRW-BTC", "KRW-ETH", "KRW-NOPE"], exchange="upbit")
            assert books["KRW-BTC"] is not None and books["KRW-ETH"] is not None
            assert books["KRW-NOPE"] is None
            assert await asyncio.to_thread(md_main, ["--redis-url", fresh_redis_server.url, "status"]) == 0
            table = capsys.readouterr().out.splitlines()
            assert table[0].split()[7] == "MISSING" and table[1].split()[:2] == ["e2e-missing", "running"]
            assert table[1].split()[8] == "1"  # one missing symbol
            await asyncio.to_thread(md_main, ["--redis-url", fresh_redis_server.url, "status", "--json"])
            (entry,) = json.loads(capsys.readouterr().out)["feeders"]
            assert entry["fields"]["missing"] == "KRW-NOPE"
            await poll(lambda: _async("no book for KRW-NOPE" in feeder.log()), 5, "the log does not name it")
        finally:
            log = feeder.log()
            feeder.cleanup()
            await raw.aclose()
        assert "KRW-BTC" not in log.split("no book for", 1)[1].split("\n", 1)[0]


async def _async(value: bool) -> bool:
    return value


async def test_the_feeder_s_keepalive_messages_hold_quiet_connections_open(
    fresh_redis_server: RedisServer, provider: RedisMarketDataProvider
) -> None:
    """OKX, Bybit and Coinone close connections idle too long unless the client sends their keep-alive
    message (`ping`, `{"op":"ping"}`, `{"request_type":"PING"}`); WebSocket pings do not count here. With the
    cut shortened to 1 s and books that never change, the feeder's connections stay open and its books live."""
    names = ("okx", "bybit", "coinone")
    cases = [c for c in CASES if c.exchange in names]
    ports: dict[str, Any] = {"upbit_port": None, "binance_port": None, **{f"{n}_port": 0 for n in names}}
    options = {name: {"idle_timeout": 1.0} for name in names}
    async with ExchangeSimulator(rate=0.0, options=options, **ports) as sim:
        env = {f"MD_{c.exchange.upper()}_{k}": v for c in cases for k, v in (
            ("URL", sim.url(c.exchange)), ("SYMBOLS", ",".join(c.symbols)), ("DEPTH", str(c.depth)))}  # fmt: skip
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": fresh_redis_server.url,
                "MD_EXCHANGES": ",".join(names),
                "MD_FEEDER_ID": "e2e-keepalive",
                "MD_SILENCE_TIMEOUT": "3600",  # no stall rule: the books do not change at all
                **env,
            }
        )
        try:

            async def live() -> bool:
                for case in cases:
                    books = await provider.aget_latest_snapshots(case.symbols, exchange=case.exchange)
                    if not all(b is not None for b in books.values()):
                        return False
                return True

            await poll(live, 20, f"books not live\n{feeder.log()[-3000:]}")
            opened = {n: sim.counters(n)["connections_opened"] for n in names}
            await asyncio.sleep(3.0)  # three idle cuts long: the point is what did not happen meanwhile
            assert {n: sim.counters(n)["idle_closes"] for n in names} == dict.fromkeys(names, 0)
            assert {n: sim.counters(n)["connections_opened"] for n in names} == opened
            assert await live()
            # the cut is real: a client that subscribes and then says nothing is closed
            async with connect(sim.url("okx")) as silent:
                await silent.send('{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}')

                async def cut() -> bool:
                    return bool(sim.counters("okx")["idle_closes"] == 1)

                await poll(cut, 5, "a silent OKX client was not cut")
        finally:
            log = feeder.log()
            feeder.cleanup()
        assert "Traceback" not in log
