"""Feeder settings and how symbols are spread over processes and connections."""

from __future__ import annotations

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
    assert s.feeder_id  # host-pid by default


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
