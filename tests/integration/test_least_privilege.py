"""Least privilege, tested: the ACL lines docs/operations.md gives are the ones these tests run with.

A feeder user can run only the commands the feeder sends (and the scripts' commands) on ``md:*`` keys and
channels; an engine user reads and subscribes but cannot write or publish, so it cannot forge a book; an
operator user adds what ``md status`` needs. Redis's ``ACL LOG`` must show no refusal for any of them after a
full run: a command the code sends but the line forgot would show there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import redis
from support.acl_users import USERS
from support.feeder_process import FeederProcess
from support.feeder_rig import poll

from client import ClientSettings, MarketDataPermissionError, OrderBookSnapshot, RedisMarketDataProvider
from client import load_settings as load
from exchange_sim import ExchangeSimulator
from launch.child import clean_environment

UPBIT = ["KRW-BTC", "KRW-ETH"]
BINANCE = ["BTCUSDT", "ETHUSDT"]


@pytest.fixture
def acl_server(fresh_redis_server: Any) -> Any:
    admin = redis.Redis.from_url(fresh_redis_server.url)
    for user, rules in USERS.items():
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw-" + user, *rules.split())
    admin.execute_command("ACL", "LOG", "RESET")
    yield fresh_redis_server, admin
    admin.close()


def url_of(server: Any, user: str) -> str:
    return str(server.url).replace("redis://", f"redis://{user}:pw-{user}@")


def refusals(admin: redis.Redis) -> list[tuple[str, str, str]]:
    """(user, reason, command or key) of every refusal Redis logged."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return [(text(e["username"]), text(e["reason"]), text(e["object"])) for e in admin.acl_log()]


async def test_feeder_engines_and_md_work_with_least_privilege_users(acl_server: Any) -> None:
    server, admin = acl_server
    async with ExchangeSimulator(rate=10.0) as sim:
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": url_of(server, "md-feeder"),
                "MD_FEEDER_ID": "acl-feeder",
                "MD_UPBIT_URL": sim.upbit_url,
                "MD_BINANCE_URL": sim.binance_url,
                "MD_UPBIT_SYMBOLS": ",".join(UPBIT),
                "MD_BINANCE_SYMBOLS": ",".join(BINANCE),
                "MD_SIMULATED": "true",
            }
        )
        engines: list[RedisMarketDataProvider] = []
        try:
            for mode in ("read-through", "mirror"):
                settings = load(ClientSettings, redis_url=url_of(server, "md-engine"), mode=mode)
                engine = RedisMarketDataProvider(settings=settings)
                await engine.astart()
                engines.append(engine)

            async def all_live() -> bool:
                for engine in engines:
                    for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
                        books = await engine.aget_latest_snapshots(symbols, exchange=exchange)
                        if any(b is None for b in books.values()):
                            return False
                return True

            try:
                await poll(all_live, 20, "books not live for the engine users")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{feeder.log()[-3000:]}\nACL LOG: {refusals(admin)}") from None
            # the scripts are gone (as after a restart): the feeder runs them with EVAL, which its line allows
            written = int(admin.hget("md:feeder:acl-feeder", "written") or 0)
            admin.script_flush()

            async def writing_again() -> bool:
                return int(admin.hget("md:feeder:acl-feeder", "written") or 0) > written + 10

            await poll(writing_again, 10, f"no writes after SCRIPT FLUSH\n{feeder.log()[-3000:]}")
            sim.set_rate(0.0)
            truth = sim.last_sent

            async def equal() -> bool:
                for engine in engines:
                    for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
                        books = await engine.aget_latest_snapshots(symbols, exchange=exchange)
                        for symbol in symbols:
                            book, want = books[symbol], truth[(exchange, symbol)]
                            if book is None or (book.xid, book.bids) != (want.xid, want.bids):
                                return False
                return True

            await poll(equal, 10, "the engines' books differ from the simulator's last")

            # an engine cannot write a book, nor forge one on a channel
            with pytest.raises(MarketDataPermissionError, match="EVALSHA write_book") as caught:
                await engines[0].awrite_snapshot(OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], []), "upbit")
            assert "md:upbit:KRW-BTC" in str(caught.value)
            forger = redis.Redis.from_url(url_of(server, "md-engine"))
            with pytest.raises(redis.exceptions.NoPermissionError):
                forger.publish("md:upbit:KRW-BTC", b'{"seq":1000000000000}')
            forger.close()

            for command in (["status"], ["get", "KRW-BTC"], ["symbols"]):
                done = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "md_cli", "--redis-url", url_of(server, "md-operator"), *command],
                    env=clean_environment(), capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert "acl-feeder" in done.stdout or "KRW-BTC" in done.stdout or command == ["symbols"]
        finally:
            for engine in engines:
                await engine.astop()
            feeder.stop()
            log = feeder.log()
            feeder.cleanup()
    assert "Traceback" not in log, log[-3000:]
    # the refusals provoked above (the engine's write and publish), and not one other
    logged = refusals(admin)
    provoked = {("md-engine", "command", c) for c in ("evalsha", "sadd", "set", "publish")}  # write + indexes
    assert {r for r in logged if r[0] == "md-engine"} == provoked, logged
    assert [r for r in logged if r[0] != "md-engine"] == [], logged
