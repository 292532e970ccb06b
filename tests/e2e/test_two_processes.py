"""Two providers in two OS processes share one real Redis: what one writes, the other reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support.backends import Backend

from client import OrderBookSnapshot, RedisMarketDataProvider

WRITER = textwrap.dedent(
    """
    import sys
    from client import OrderBookSnapshot, RedisMarketDataProvider
    with RedisMarketDataProvider.from_url(sys.argv[1]) as p:
        p.on_upbit_snapshot(OrderBookSnapshot("KRW-BTC", 1000.0, [(101.5, 0.25), (101.0, 3.0)], [(102.0, 1.0)]))
        p.on_upbit_snapshot(OrderBookSnapshot("KRW-ETH", 1000.0, [(5.5, 2.0)], [(5.75, 1.0)]))
        p.on_binance_snapshot(OrderBookSnapshot("BTCUSDT", 1000.25, [(70000.01, 0.5)], [(70000.02, 0.75)]))
        p.on_binance_snapshot(OrderBookSnapshot("ETHUSDT", 1000.5, [(3500.5, 10.0)], []))
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    from client import RedisMarketDataProvider
    with RedisMarketDataProvider.from_url(sys.argv[1]) as p:
        s = p.get_latest_snapshot("KRW-BTC")
        print(json.dumps({"bids": s.bids, "asks": s.asks, "ts": s.timestamp, "seq": s.seq, "len": len(p.latest_snapshots)}))
    """
)


def run(code: str, url: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_one_process_writes_another_reads(real_backend: Backend) -> None:
    assert real_backend.url is not None
    run(WRITER, real_backend.url)
    with RedisMarketDataProvider.from_url(real_backend.url) as reader:
        assert reader.get_latest_snapshot("KRW-BTC") == OrderBookSnapshot(
            "KRW-BTC", 1000.0, [(101.5, 0.25), (101.0, 3.0)], [(102.0, 1.0)]
        )
        assert reader.get_latest_snapshot("BTCUSDT") == OrderBookSnapshot(
            "BTCUSDT", 1000.25, [(70000.01, 0.5)], [(70000.02, 0.75)]
        )
        assert reader.get_latest_snapshot("ETHUSDT") == OrderBookSnapshot(
            "ETHUSDT", 1000.5, [(3500.5, 10.0)], []
        )
        assert len(reader.latest_snapshots) == 4
        # and the other way round: this process writes, a new process reads
        reader.on_upbit_snapshot(OrderBookSnapshot("KRW-BTC", 1001.0, [(103.0, 1.0)], [(104.0, 2.0)]))
    seen = json.loads(run(READER, real_backend.url))
    assert seen == {"bids": [[103.0, 1.0]], "asks": [[104.0, 2.0]], "ts": 1001.0, "seq": 2, "len": 4}
