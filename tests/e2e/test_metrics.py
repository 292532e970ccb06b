"""A running feeder's /metrics and /healthz (MD_METRICS_PORT): scraped, parsed with prometheus_client's own
parser, checked against every metric the dashboard and the alert rules in deploy/ name."""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support.feeder_process import FeederProcess
from support.feeder_rig import poll

from client import RedisMarketDataProvider
from exchange_sim import ExchangeSimulator
from launch.child import clean_environment, feeder_command
from launch.redis_server import LocalRedisServer as RedisServer
from launch.redis_server import free_port

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = clean_environment({"MD_METRICS_PORT": str(port)})
    return subprocess.run(
        [*feeder_command(), "--healthcheck"], env=env, capture_output=True, text=True, timeout=30
    )


def named_in_deploy() -> set[str]:
    """Every md_* metric the Grafana dashboard and the Prometheus rules use."""
    text = (DEPLOY / "grafana-dashboard.json").read_text() + (DEPLOY / "prometheus-rules.yaml").read_text()
    return set(re.findall(r"\bmd_[a-z0-9_]+", text)) - {"md_feeder"}  # the job label's value


async def test_metrics_name_everything_the_dashboard_and_rules_use_and_health_follows_the_feeder(
    fresh_redis_server: RedisServer,
) -> None:
    port = free_port()
    async with ExchangeSimulator(rate=20.0) as sim:
        feeder = FeederProcess(
            {
                "MD_REDIS_URL": fresh_redis_server.url,
                "MD_UPBIT_URL": sim.upbit_url,
                "MD_BINANCE_URL": sim.binance_url,
                "MD_UPBIT_SYMBOLS": "KRW-BTC,KRW-ETH",
                "MD_BINANCE_SYMBOLS": "BTCUSDT",
                "MD_FEEDER_ID": "metrics-test",
                "MD_METRICS_PORT": str(port),
                "MD_HEALTH_GRACE": "1",
                "MD_RECONNECT_MAX_DELAY": "5",  # keep the stopped exchange down long enough to be seen
            }
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with RedisMarketDataProvider.from_url(fresh_redis_server.url) as provider:

                async def live() -> bool:
                    books = await provider.aget_latest_snapshots(["KRW-BTC", "KRW-ETH"], exchange="upbit")
                    return all(b is not None for b in books.values())

                await poll(live, 20, f"books not live\n{feeder.log()[-2000:]}")

            async def written() -> bool:
                status, text = await asyncio.to_thread(get, f"{base}/metrics")
                return status == 200 and re.search(r"^md_books_written_total [1-9]", text, re.M) is not None

            await poll(written, 10, "no books counted as written in /metrics")
            status, text = await asyncio.to_thread(get, f"{base}/metrics")
            families = list(text_string_to_metric_families(text))
            samples = {s.name for f in families for s in f.samples}
            names = {f.name for f in families} | samples
            wanted = named_in_deploy()
            assert len(wanted) >= 10, wanted  # the files do name metrics: the check below checks something
            assert wanted <= names, f"named in deploy/ but not exported: {sorted(wanted - names)}"
            labels = {
                k
                for f in families
                if f.name.startswith("md_") and f.name != "md_oldest_book_age_seconds"
                for s in f.samples
                for k in s.labels
            }
            assert labels <= {"exchange", "connection", "le", "quantile"}  # bounded: never per symbol

            def values(name: str, *labels: str) -> dict[tuple[str, ...], float]:
                return {
                    tuple(s.labels[k] for k in labels): s.value
                    for f in families
                    if f.name == name
                    for s in f.samples
                }

            # per symbol, but only the few oldest of each exchange (tests/unit/test_metrics_ages.py)
            oldest = values("md_oldest_book_age_seconds", "exchange", "symbol")
            assert set(oldest) == {("upbit", "KRW-BTC"), ("upbit", "KRW-ETH"), ("binance", "BTCUSDT")}
            assert all(0 <= age < 10 for age in oldest.values())
            assert values("md_books_held", "exchange") == {("upbit",): 2.0, ("binance",): 1.0}
            ups = {name: up for (name,), up in values("md_connection_up", "connection").items()}
            assert ups == {"upbit-1": 1.0, "binance-1": 1.0}
            latency = [s for f in families if f.name == "md_receive_to_written_seconds" for s in f.samples]
            assert any(s.name.endswith("_count") and s.value > 0 for s in latency)
            assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
            # the same stages, as p50/p99 over the recent books, in the status record (md status -v)
            record = redis.Redis.from_url(fresh_redis_server.url)

            def stages() -> dict[str, str]:
                raw = record.hgetall("md:feeder:metrics-test")
                return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"latency_ms:")}

            await poll(lambda: _async(len(stages()) >= 3), 5, "no latency in the status record")
            found = stages()
            record.close()
            assert {"latency_ms:upbit:recv_to_written", "latency_ms:upbit:exchange_to_recv",
                    "latency_ms:binance:recv_to_written"} <= set(found)  # fmt: skip
            p50, p99 = (
                float(x)
                for x in re.fullmatch(
                    r"p50 (\S+) p99 (\S+)", found["latency_ms:upbit:recv_to_written"]
                ).groups()
            )  # type: ignore[union-attr]
            assert 0 <= p50 <= p99 < 1000  # milliseconds
            assert (await asyncio.to_thread(healthcheck, port)).returncode == 0  # the image's HEALTHCHECK

            # a connection down past MD_HEALTH_GRACE makes the feeder unhealthy, and says which
            await sim.binance.stop()

            async def unhealthy() -> bool:
                status, body = await asyncio.to_thread(get, f"{base}/healthz")
                return status == 503 and "binance-1: down" in body

            await poll(unhealthy, 15, "healthz stayed 200 with Binance down")
            check = await asyncio.to_thread(healthcheck, port)
            assert check.returncode == 1 and "binance-1: down" in check.stderr
        finally:
            log = feeder.log()
            feeder.cleanup()
        assert "metrics on http://127.0.0.1:" in log
        assert "event loop: asyncio" in log  # the default MD_EVENT_LOOP, uvloop installed or not


async def _async(value: bool) -> bool:
    return value
