"""An ACL user with only md:* keys and channels reads and writes books on a real redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import RedisMarketDataProvider


def test_acl_user_against_real_redis(real_backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from client import OrderBookSnapshot

    monkeypatch.chdir(tmp_path)
    real_backend.sync.acl_setuser("engine", enabled=True, passwords=["+s3cret"], keys=["md:*"], channels=["md:*"],
                                  commands=["+@all"])  # fmt: skip
    try:
        url = real_backend.url.replace("redis://", "redis://engine:s3cret@")
        with RedisMarketDataProvider.from_url(url) as p:
            p.on_upbit_snapshot(OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], []))
            assert p.get_latest_snapshot("KRW-BTC") == OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], [])
    finally:
        real_backend.sync.acl_deluser("engine")
