"""Feeder settings and how symbols are spread over processes and connections."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from client import SettingsError, load_settings
from feeder.settings import FeederSettings
from feeder.sharding import shard_of, split_for_connections, take_shard

SYMBOLS = [f"KRW-C{i:04d}" for i in range(2000)]


def test_shards_partition_the_list_deterministically() -> None:
    parts = [take_shard(SYMBOLS, k, 4) for k in range(1, 5)]
    assert sorted(s for p in parts for s in p) == sorted(SYMBOLS)
    assert all(350 < len(p) < 650 for p in parts)  # roughly even
    assert take_shard(SYMBOLS, 2, 4) == take_shard(list(SYMBOLS), 2, 4)
    # adding a symbol moves no other symbol
    assert set(take_shard([*SYMBOLS, "KRW-NEW"], 3, 4)) - {"KRW-NEW"} == set(parts[2])
    assert shard_of("KRW-BTC", 1) == 1
    with pytest.raises(ValueError, match="1 <= K <= N"):
        take_shard(SYMBOLS, 0, 2)


def test_connections_are_filled_evenly_within_the_limit() -> None:
    chunks = split_for_connections(SYMBOLS[:1025], 1024)
    assert [len(c) for c in chunks] == [513, 512]
    assert split_for_connections(SYMBOLS[:1024], 1024) == [SYMBOLS[:1024]]
    assert split_for_connections([], 10) == []
    assert sum(len(c) for c in split_for_connections(SYMBOLS, 100)) == 2000
    assert len(split_for_connections(SYMBOLS, 100)) == 20


def test_feeder_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MD_UPBIT_SYMBOLS", " krw-btc, KRW-ETH ,KRW-BTC")
    monkeypatch.setenv("MD_EXCHANGES", "Binance,upbit")
    s = load_settings(FeederSettings)
    assert s.symbols_of("upbit") == ["KRW-BTC", "KRW-ETH"]
    assert s.exchange_list == ["binance", "upbit"]
    assert s.shard_pair == (1, 1)
    assert s.feeder_id.endswith("-binance-upbit")


def test_the_default_feeder_id_is_the_same_in_every_process_of_the_same_service(tmp_path: Any) -> None:
    """Was `<host>-<pid>`: a restarted feeder came back as a stranger, and the books it had held read as held
    by a dead feeder. Two processes (two pids) must compute the same id; a shard is part of it."""
    code = (
        "from client import load_settings; from feeder.settings import FeederSettings; "
        "print(load_settings(FeederSettings).feeder_id)"
    )

    def default_id(**env: str) -> str:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
        done = subprocess.run(
            [sys.executable, "-c", code], env={**environment, **env}, cwd=tmp_path,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    first, second = default_id(MD_EXCHANGES="upbit"), default_id(MD_EXCHANGES="upbit")
    assert first == second and first.endswith("-upbit")
    assert str(os.getpid()) not in first.split("-")
    assert default_id(MD_EXCHANGES="upbit", MD_SHARD="2/4") == f"{first}-2of4"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MD_SHARD", "3/2"),
        ("MD_SHARD", "half"),
        ("MD_EXCHANGES", "kraken"),
        ("MD_UPBIT_SYMBOLS", "KRW-BTC,bad symbol!"),
        ("MD_BINANCE_URL", "http://x"),
        ("MD_BINANCE_SYMBOLS_PER_CONNECTION", "2000"),
        ("MD_BINANCE_DEPTH", "15"),
        ("MD_HEARTBEAT_TTL", "0.5"),
        ("MD_FEEDER_ID", "a b"),
        ("MD_PING_TIMEOUT", "-1"),
    ],
)
def test_bad_feeder_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, var: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var if var != "MD_HEARTBEAT_TTL" else "HEARTBEAT_TTL"):
        load_settings(FeederSettings)


def _connection_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, **env: str) -> dict[str, Any]:
    import fakeredis

    from feeder.app import Feeder

    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    feeder = Feeder(load_settings(FeederSettings), client=fakeredis.FakeAsyncRedis())
    return {conn.protocol.name: conn.settings for conn in feeder.connections}


def test_each_exchange_gets_its_own_keepalive_and_stall_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Binance pings every 20 s and drops a client silent for 60 s; Upbit closes one idle for ~120 s. A short
    common ping timeout made a busy machine reconnect for nothing; stalls are the watchdog's job."""
    by_exchange = _connection_settings(monkeypatch, tmp_path)
    upbit, binance = by_exchange["upbit"], by_exchange["binance"]
    assert (upbit.ping_interval, upbit.ping_timeout) == (10.0, 10.0)
    assert (binance.ping_interval, binance.ping_timeout) == (20.0, 20.0)
    assert binance.stall.fixed == pytest.approx(0.3) and binance.stall.floor == 0.5  # 3 x 100 ms, >= 0.5 s
    assert upbit.stall.adaptive and upbit.stall.fixed is None and upbit.stall.floor == 1.0


def test_ping_and_silence_settings_override_the_exchange_rules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    by_exchange = _connection_settings(
        monkeypatch, tmp_path, MD_PING_INTERVAL="3", MD_PING_TIMEOUT="4", MD_SILENCE_TIMEOUT="2"
    )
    for settings in by_exchange.values():
        assert (settings.ping_interval, settings.ping_timeout) == (3.0, 4.0)
        assert settings.stall.fixed == 2.0 and not settings.stall.adaptive
