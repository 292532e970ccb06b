"""Secrets are never printed: a Redis password, in any form a URL can carry it or as the Sentinels' password,
appears in no log line, no ``md`` output, no exception message, no ``repr`` of settings and no status hash.

Was: ``?password=`` was printed in the feeder's start line and in provider warnings, a password containing
``@`` was half masked, a URL typo printed the whole URL with its password, ``repr(ClientSettings)`` showed it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import pytest
import redis
from support.feeder_process import FeederProcess, wait_until

from client import ClientSettings, RedisMarketDataProvider, SettingsError, load_settings
from client.topology import describe
from exchange_sim import ExchangeSimulator
from launch.child import clean_environment

SECRET = "s3cr@t:p/w"  # an @, a : and a / inside: the characters that break naive masking
ENCODED = quote(SECRET, safe="")


def forms(host_port: str) -> list[str]:
    """Every way a URL can carry the password."""
    return [
        f"redis://feeder:{ENCODED}@{host_port}/0",
        f"redis://:{ENCODED}@{host_port}/0",
        f"redis://feeder@{host_port}/0?password={ENCODED}",
    ]


def typo(host_port: str) -> str:
    """The password not percent-encoded, as people type it: not a valid URL (its ':' reads as a port)."""
    return f"redis://feeder:{SECRET}@{host_port}/0"


def assert_clean(text: str, where: str) -> None:
    for secret in (SECRET, ENCODED, "s3cr@t", "p/w"):
        assert secret not in text, f"the password ({secret!r}) appears in {where}:\n{text[-2000:]}"


def test_a_url_with_an_unencoded_password_is_refused_without_printing_it() -> None:
    with pytest.raises(SettingsError, match="MD_REDIS_URL") as caught:
        load_settings(ClientSettings, redis_url=typo("127.0.0.1:1"))
    assert_clean(str(caught.value), "a settings error")


@pytest.mark.parametrize("url", forms("127.0.0.1:1"))
def test_settings_their_repr_their_errors_and_descriptions_hide_the_password(url: str) -> None:
    settings = load_settings(ClientSettings, redis_url=url, redis_sentinel_password=SECRET)
    assert_clean(repr(settings), "repr(settings)")
    assert_clean(str(settings), "str(settings)")
    assert_clean(describe(settings), "describe(settings)")
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.get_secret_value() == SECRET  # kept, only not shown
    for bad in (url.replace("127.0.0.1:1", "127.0.0.1:99999"), url.replace("redis://", "redis:/")):
        with pytest.raises(SettingsError) as caught:
            load_settings(ClientSettings, redis_url=bad)
        assert_clean(str(caught.value), "a settings error")
    with pytest.raises(SettingsError) as caught:
        load_settings(ClientSettings, redis_url=url, redis_read_url=url.replace("redis://", "ftp://"))
    assert "MD_REDIS_READ_URL" in str(caught.value)
    assert_clean(str(caught.value), "a settings error")


def test_an_unreachable_redis_is_reported_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for url in forms("127.0.0.1:1"):
        settings = load_settings(ClientSettings, redis_url=url, redis_timeout=0.5)
        provider = RedisMarketDataProvider(settings=settings)
        with caplog.at_level(logging.WARNING):
            provider.start()
            assert provider.get_latest_snapshot("KRW-BTC", "upbit") is None
        provider.stop()
    assert "unavailable" in caplog.text or "does not answer" in caplog.text, caplog.text
    assert_clean(caplog.text, "provider warnings")


def _acl_user(client: redis.Redis) -> None:
    client.acl_setuser("feeder", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
                       commands=["+@all"])  # fmt: skip


def test_md_prints_no_password_when_it_works_or_fails(redis_server: Any) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    _acl_user(admin)
    host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
    try:
        for url in [
            *forms(host_port),
            *forms("127.0.0.1:1"),
            typo(host_port),
            f"redis://feeder:{ENCODED}@:x/0",
        ]:
            for command in (["status"], ["symbols"], ["get", "KRW-BTC"]):
                done = subprocess.run(
                    [sys.executable, "-m", "md_cli", "--redis-url", url, *command],
                    env=clean_environment(), capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert "Traceback" not in done.stderr, done.stderr
                assert_clean(done.stdout + done.stderr, f"md {' '.join(command)} with {url[:12]}…")
    finally:
        admin.acl_deluser("feeder")
        admin.close()


async def test_the_feeder_logs_and_status_hold_no_password(redis_server: Any) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    _acl_user(admin)
    host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
    feeders: list[FeederProcess] = []
    try:
        async with ExchangeSimulator(rate=5.0) as sim:
            for i, url in enumerate(forms(host_port)):
                feeder = FeederProcess(
                    {
                        "MD_REDIS_URL": url,
                        "MD_FEEDER_ID": f"secret-{i}",
                        "MD_UPBIT_URL": sim.upbit_url,
                        "MD_BINANCE_URL": sim.binance_url,
                        "MD_UPBIT_SYMBOLS": "KRW-BTC",
                        "MD_BINANCE_SYMBOLS": "BTCUSDT",
                        "MD_SIMULATED": "true",
                    }
                )
                feeders.append(feeder)
                key = f"md:feeder:secret-{i}"
                wait_until(
                    lambda key=key: admin.exists(key), 20, message=f"no record from {key}\n{feeder.log()}"
                )
                record = admin.hgetall(key)
                assert_clean(repr(record), f"the status hash {key}")
                assert "feeder secret" in feeder.log()
            mistyped = FeederProcess({"MD_REDIS_URL": typo(host_port), "MD_FEEDER_ID": "secret-typo"})
            feeders.append(mistyped)
            assert mistyped.wait(30) != 0, "a feeder with an invalid URL must not start"
            assert "MD_REDIS_URL" in mistyped.log()
            for feeder in feeders:
                feeder.stop()
                assert_clean(feeder.log(), "the feeder's log")
    finally:
        for feeder in feeders:
            feeder.cleanup()
        admin.acl_deluser("feeder")
        admin.close()
