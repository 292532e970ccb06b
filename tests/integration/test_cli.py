"""The ``md`` CLI: get, watch, status, symbols, exit codes; in-process on both backends and as a subprocess.

In-process runs inject the backend's client through ``main(..., client_factory=...)``, which is how the CLI
reaches fakeredis. The subprocess test runs ``python -m md_cli`` against the private real redis-server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backends import Backend

import md_cli.commands as cli
import md_cli.render as render
from client import BookState, OrderBookSnapshot, RedisMarketDataProvider, SnapshotStatus
from client.layout import RedisLayout, encode_book, mark_down_flow, write_flow
from client.transport import run_flow
from launch.redis_server import free_port
from md_cli.main import main

LAYOUT = RedisLayout("md")
BTC = OrderBookSnapshot(
    "KRW-BTC",
    1746601573.804,
    [(137001000.0, 0.03656812), (137000000.0, 0.33543284), (136999000.0, 1.5)],
    [(137002000.0, 0.10623869), (137003000.0, 2.0)],
)
ETH = OrderBookSnapshot("KRW-ETH", 1746601574.0, [(5_000_000.0, 2.0)], [(5_001_000.0, 1.0)])
BTCUSDT = OrderBookSnapshot("BTCUSDT", 1746601575.25, [(70000.01, 0.5)], [(70000.02, 0.75)])

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MD_* variable or .env of the machine may leak into what the CLI reads."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def md(backend: Backend, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``md ARGS...`` in-process against the backend; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv), client_factory=lambda settings: backend.new_sync())
        out, err = capsys.readouterr()
        return code, out, err

    return run


def feeder_write(backend: Backend, snapshot: OrderBookSnapshot, exchange: str, feeder: str = "f1") -> None:
    """Write the way a feeder does: heartbeat-backed book plus a running feeder hash."""
    backend.sync.hset(LAYOUT.feeder_key(feeder), mapping={"state": "running", "heartbeat": repr(time.time())})
    backend.sync.pexpire(LAYOUT.feeder_key(feeder), 30_000)
    encoded = encode_book(LAYOUT, snapshot, exchange=exchange, writer=feeder, heartbeat=True)
    run_flow(backend.sync, write_flow(LAYOUT, [encoded]))


def row_of(out: str, symbol: str) -> list[str]:
    rows = [line.split() for line in out.splitlines() if f" {symbol} " in f" {line} "]
    assert len(rows) == 1, out
    return rows[0]


# ------------------------------------------------------------------------------------------------- get
def test_get_live_book_prints_header_and_ladder(backend: Backend, md: Run) -> None:
    feeder_write(backend, BTC, "upbit")
    code, out, err = md("get", "upbit", "KRW-BTC")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["upbit:KRW-BTC", "live"]
    assert "seq 1" in out and "feeder f1" in out and "age " in out
    assert "2025-05-07 07:06:13.804 UTC" in out
    assert " ms later" in out  # receipt -> Redis accepting it, both on Redis's clock (`rts`, `wts`)
    # best prices face each other on the first row of the ladder, in plain notation
    ladder = [line.split() for line in lines if "|" in line]
    assert ladder[0] == ["BID", "QTY", "BID", "|", "ASK", "ASK", "QTY"]
    assert ladder[1] == ["0.03656812", "137001000", "|", "137002000", "0.10623869"]
    assert ladder[3] == ["1.5", "136999000", "|"]  # the ask side ran out
    assert "spread 1000 (0.0730 bps)" in out
    assert "e+" not in out and "e-" not in out


def test_get_missing_book_exits_1(md: Run) -> None:
    code, out, err = md("get", "upbit", "KRW-XRP")
    assert (code, out) == (1, "")
    assert err.startswith("md: no book for upbit:KRW-XRP")


@pytest.mark.parametrize("argv", [["upbit", "KRW BTC"], ["KRW BTC"], ["up bit", "KRW-BTC"], ["a", "b", "c"]])
def test_get_invalid_name_exits_2(md: Run, argv: list[str]) -> None:
    code, out, err = md("get", *argv)
    assert (code, out) == (2, "")
    assert err.startswith("md: ") and len(err.splitlines()) == 1
    assert "invalid" in err or "takes [EXCHANGE] SYMBOL" in err


def test_get_json_is_what_was_written(backend: Backend, md: Run) -> None:
    snapshot = OrderBookSnapshot(
        BTC.symbol, BTC.timestamp, BTC.bids, BTC.asks, xid=1746601573804, recv_ts=1.5e9
    )
    RedisMarketDataProvider(redis=backend.sync, writer_id="engine-1").write_snapshot(snapshot, "upbit")
    code, out, err = md("get", "upbit", "KRW-BTC", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert {k: got[k] for k in ("exchange", "symbol", "ts", "recv_ts", "seq", "xid", "status", "feeder")} == {
        "exchange": "upbit",
        "symbol": "KRW-BTC",
        "ts": BTC.timestamp,
        "recv_ts": 1.5e9,
        "seq": 1,
        "xid": 1746601573804,
        "status": "live",
        "feeder": "engine-1",
    }
    assert got["bids"] == [list(level) for level in BTC.bids]
    assert got["asks"] == [list(level) for level in BTC.asks]
    # every book carries its stages' times: the exchange's (ts), receipt (recv_ts; rts on Redis's clock), and
    # Redis accepting the write (wts, Redis's TIME)
    assert abs(got["written_at"] - time.time()) < 5 and got["received_at"] <= got["written_at"]
    code, out, _ = md("get", "upbit", "KRW-BTC", "--json", "--depth", "1")
    assert json.loads(out)["bids"] == [[137001000.0, 0.03656812]]


def test_get_bare_symbol_and_exchange_colon_symbol(backend: Backend, md: Run) -> None:
    provider = RedisMarketDataProvider(redis=backend.sync)
    provider.write_snapshot(BTC, "upbit")
    provider.write_snapshot(BTCUSDT, "binance")
    code, out, _ = md("get", "BTCUSDT")
    assert code == 0 and out.startswith("binance:BTCUSDT  live")
    assert "70000.01" in out and "70000.02" in out and "spread 0.01 " in out
    code, out, _ = md("get", "KRW-BTC")
    assert code == 0 and out.startswith("upbit:KRW-BTC  live")
    code, out, _ = md("get", "upbit:KRW-BTC", "--depth", "1")
    assert code == 0 and "(top 1 of 3 bid and 2 ask levels" in out
    code, _, err = md("get", "KRW-DOGE")  # nowhere yet: the old convention names the exchange
    assert code == 1 and "no book for upbit:KRW-DOGE" in err
    assert "`md symbols upbit` lists the books there are" in err  # the error names the next step
    code, out, _ = md("get", "Upbit", "krw-btc")  # typed as people type it: normalised as the feeder does
    assert code == 0 and out.startswith("upbit:KRW-BTC  live")
    code, _, err = md("get", "DOGE")
    assert code == 1 and "no book for DOGE on any exchange" in err


def test_get_bare_symbol_on_two_exchanges_asks_for_the_exchange(backend: Backend, md: Run) -> None:
    provider = RedisMarketDataProvider(redis=backend.sync)
    provider.write_snapshot(BTCUSDT, "binance")
    provider.write_snapshot(BTCUSDT, "okx")
    code, _, err = md("get", "BTCUSDT")
    assert code == 2 and "binance, okx" in err


def test_get_shows_a_stale_book_with_its_status(backend: Backend, md: Run) -> None:
    feeder_write(backend, BTC, "upbit")
    assert run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")])) == 1
    code, out, _ = md("get", "upbit", "KRW-BTC")
    assert code == 0
    assert out.splitlines()[0].startswith("upbit:KRW-BTC  CONNECTION_DOWN (not live: feeder f1")
    code, out, _ = md("get", "upbit", "KRW-BTC", "--json")
    assert json.loads(out)["status"] == "connection_down"
    backend.sync.delete(LAYOUT.feeder_key("f1"))
    feeder_write(backend, ETH, "upbit", feeder="f2")
    backend.sync.delete(LAYOUT.feeder_key("f2"))
    code, out, _ = md("get", "upbit", "KRW-ETH")
    assert code == 0 and "FEEDER_DEAD" in out.splitlines()[0]


def test_get_corrupt_book_exits_1_naming_the_field(backend: Backend, md: Run) -> None:
    RedisMarketDataProvider(redis=backend.sync).write_snapshot(BTC, "upbit")
    backend.sync.hset("md:upbit:KRW-BTC", "bids", "not json")
    code, out, err = md("get", "upbit", "KRW-BTC")
    assert (code, out) == (1, "")
    assert "corrupt" in err and "'bids'" in err


def test_prefix_option_before_or_after_the_command(backend: Backend, md: Run) -> None:
    RedisMarketDataProvider(redis=backend.sync, prefix="mdx").write_snapshot(BTC, "upbit")
    assert md("get", "upbit", "KRW-BTC")[0] == 1
    assert md("--prefix", "mdx", "get", "upbit", "KRW-BTC")[0] == 0
    assert md("get", "upbit", "KRW-BTC", "--prefix", "mdx")[0] == 0


# ------------------------------------------------------------------------------------------------- watch
def test_watch_once_shows_every_book_and_a_down_one(backend: Backend, md: Run) -> None:
    feeder_write(backend, BTC, "upbit")
    feeder_write(backend, ETH, "upbit")
    feeder_write(backend, BTCUSDT, "binance", feeder="f2")
    run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-ETH")]))
    code, out, err = md("watch", "--once")
    assert code == 0, err
    lines = out.splitlines()
    assert "3 books: 2 live, 1 not live" in lines[0]
    assert lines[1].split() == ["EXCHANGE", "SYMBOL", "BID", "ASK", "SPREAD", "BPS", "AGE", "UPD/S", "STATUS"]
    assert [line.split()[:2] for line in lines[2:]] == [
        ["binance", "BTCUSDT"],
        ["upbit", "KRW-BTC"],
        ["upbit", "KRW-ETH"],
    ]
    btc = row_of(out, "KRW-BTC")
    assert btc[2:6] == ["137001000", "137002000", "1000", "0.0730"]
    assert btc[7:] == ["-", "live"]  # one sample: no rate yet
    assert row_of(out, "BTCUSDT")[2:6] == ["70000.01", "70000.02", "0.01", "0.0014"]
    eth = row_of(out, "KRW-ETH")
    assert eth[2:6] == ["5000000", "5001000", "1000", "2.00"]  # a down book keeps its row and its prices
    assert eth[-1] == "connection_down"


def test_watch_filters_by_exchange_and_symbol(backend: Backend, md: Run) -> None:
    provider = RedisMarketDataProvider(redis=backend.sync)
    for snapshot, exchange in ((BTC, "upbit"), (ETH, "upbit"), (BTCUSDT, "binance")):
        provider.write_snapshot(snapshot, exchange)
    _, out, _ = md("watch", "--once", "--exchange", "upbit")
    assert "KRW-BTC" in out and "KRW-ETH" in out and "BTCUSDT" not in out
    _, out, _ = md("watch", "--once", "KRW-ETH", "BTCUSDT", "KRW-XRP")
    assert "KRW-BTC" not in out
    assert row_of(out, "KRW-ETH")[-1] == "live" and row_of(out, "BTCUSDT")[-1] == "live"
    assert row_of(out, "KRW-XRP") == ["upbit", "KRW-XRP", "-", "-", "-", "-", "-", "-", "missing"]
    _, out, _ = md("watch", "--once", "-e", "binance", "-e", "upbit", "BTCUSDT")
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [
        ["binance", "BTCUSDT"],
        ["upbit", "BTCUSDT"],
    ]
    assert out.splitlines()[-1].split()[-1] == "missing"


def test_watch_sorts_and_keeps_only_what_is_asked(backend: Backend, md: Run) -> None:
    feeder_write(backend, BTC, "upbit")  # spread 0.073 bps
    feeder_write(backend, ETH, "upbit")  # 2.00 bps
    feeder_write(backend, BTCUSDT, "binance", feeder="f2")  # 0.0014 bps
    run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")]))

    def symbols(*argv: str) -> list[str]:
        code, out, err = md("watch", "--once", *argv)
        assert code == 0, err
        return [line.split()[1] for line in out.splitlines()[2:]]

    assert symbols() == ["BTCUSDT", "KRW-BTC", "KRW-ETH"]  # book order
    assert symbols("--sort", "spread") == ["KRW-ETH", "KRW-BTC", "BTCUSDT"]  # widest first
    assert symbols("--sort", "status") == ["KRW-BTC", "BTCUSDT", "KRW-ETH"]  # not live first, then book order
    assert symbols("--only", "not-live") == ["KRW-BTC"]
    assert symbols("--only", "live", "--sort", "spread") == ["KRW-ETH", "BTCUSDT"]
    code, out, _ = md("watch", "--once", "--json", "--only", "live")
    assert code == 0 and [b["symbol"] for b in json.loads(out)["books"]] == ["BTCUSDT", "KRW-ETH"]
    code, _, err = md("watch", "--once", "--sort", "price")
    assert code == 2 and "invalid choice: 'price'" in err


def test_watch_sort_by_age_puts_the_oldest_first() -> None:
    rows = [
        render.WatchRow(SnapshotStatus("upbit", s, BookState.LIVE, age=age), None, rate)
        for s, age, rate in (("A", 0.5, 3.0), ("B", 9.0, None), ("C", None, 1.0), ("D", 2.0, 7.0))
    ]
    assert [r.status.symbol for r in cli.arrange(rows, "age", None)] == ["B", "D", "A", "C"]
    assert [r.status.symbol for r in cli.arrange(rows, "rate", None)] == ["D", "A", "C", "B"]


def test_subscribe_waits_for_the_books_and_reports_each_one(backend: Backend, md: Run) -> None:
    code, out, _ = md("subscribe", "upbit", "krw-btc", "--wait", "0.3")
    assert code == 0 and "no feeder of upbit is running: the change applies when one starts" in out
    assert backend.sync.smembers("md:wanted:upbit") == {b"KRW-BTC"}
    backend.sync.hset("md:feeder:f1", mapping={"state": "running", "heartbeat": repr(time.time()),
                                               "exchanges": "upbit,binance"})  # fmt: skip
    backend.sync.pexpire("md:feeder:f1", 30_000)
    feeder_write(backend, BTC, "upbit")
    started = time.monotonic()
    code, out, _ = md("subscribe", "upbit", "KRW-BTC", "KRW-NOPE", "--wait", "0.5")
    assert code == 1 and time.monotonic() - started >= 0.5  # it waited for the one that never came
    assert "KRW-BTC   live, fed by f1" in out
    assert "KRW-NOPE  not live after 0.5s (missing): is it listed by upbit?" in out
    run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-BTC")]))
    code, out, _ = md("unsubscribe", "upbit", "KRW-BTC", "--wait", "2")
    assert code == 0 and "KRW-BTC  no longer served live (connection_down)" in out
    assert md("subscribe", "upbit", "KRW-BTC", "--wait", "-1")[0] == 2


def test_watch_with_no_books(md: Run) -> None:
    code, out, _ = md("watch", "--once")
    assert code == 0 and out.splitlines()[-1] == "no books"


def test_watch_counts_updates_per_second(backend: Backend) -> None:
    """Rates are smoothed over RATE_WINDOW seconds: one quiet refresh does not show 0 at once."""
    clock = [1000.0]
    provider = RedisMarketDataProvider(redis=backend.sync)
    provider.write_snapshot(BTC, "upbit")
    watch = cli.Watch(provider, [], [], clock=lambda: clock[0])
    assert [r.rate for r in watch.refresh()] == [None]
    for i in range(1, 4):
        provider.write_snapshot(OrderBookSnapshot("KRW-BTC", BTC.timestamp + i, BTC.bids, BTC.asks), "upbit")
    clock[0] += 1.0
    (row,) = watch.refresh()
    assert row.status.seq == 4 and row.rate == pytest.approx(3.0)
    clock[0] += 1.0
    (row,) = watch.refresh()  # nothing new, but the window still holds the three updates
    assert row.rate == pytest.approx(1.5)
    clock[0] += cli.RATE_WINDOW + 0.1
    (row,) = watch.refresh()  # the window moved past them
    assert row.rate == 0.0


def test_watch_reads_books_in_a_few_round_trips(backend: Backend) -> None:
    provider = RedisMarketDataProvider(redis=backend.sync)
    for i in range(300):
        provider.write_snapshot(OrderBookSnapshot(f"KRW-C{i}", 1000.0, [(1.0, 1.0)], [(2.0, 1.0)]), "upbit")
    calls = 0
    real_pipeline = backend.sync.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real_pipeline(*args, **kwargs)

    backend.sync.pipeline = counting_pipeline
    rows = cli.Watch(provider, [], []).refresh()
    assert len(rows) == 300 and all(r.status.live for r in rows)
    assert calls <= 3


def test_watch_on_a_terminal_redraws_until_ctrl_c(
    backend: Backend, md: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    RedisMarketDataProvider(redis=backend.sync).write_snapshot(BTC, "upbit")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    sleeps = iter([None, KeyboardInterrupt()])

    def fake_sleep(seconds: float) -> None:
        assert seconds == 0.25
        if isinstance(error := next(sleeps), BaseException):
            raise error

    monkeypatch.setattr(cli.time, "sleep", fake_sleep)
    code, out, _ = md("watch", "--interval", "0.25")
    assert code == 0
    # drawn on the alternate screen (entered once, left on Ctrl-C: the user's screen comes back, the
    # scrollback keeps no tables), redrawn in place on every refresh
    assert out.count("\x1b[?1049h") == 1 and out.rstrip().endswith("\x1b[?1049l")
    assert out.count("KRW-BTC") == 2 and out.count("137,001,000") == 2  # thousands separators on a terminal


def test_watch_on_a_small_terminal_keeps_the_books_that_are_down(backend: Backend) -> None:
    rows = [
        render.WatchRow(
            SnapshotStatus("upbit", f"S{i}", BookState.FEEDER_DEAD if i == 7 else BookState.LIVE), None, None
        )
        for i in range(10)
    ]
    provider = RedisMarketDataProvider(redis=backend.sync)
    lines = render.render_watch(rows, "redis://x", provider.layout.prefix, color=False, max_rows=3)
    assert [line.split()[1] for line in lines[2:5]] == ["S0", "S1", "S7"]
    assert lines[-1].startswith("... 7 live books not shown")


# ------------------------------------------------------------------------------------------------- status
def test_status_lists_feeders_as_a_table_and_exits_0_while_they_run(backend: Backend, md: Run) -> None:
    beat = time.time() - 1.5
    backend.sync.hset(
        "md:feeder:feeder-1",
        mapping={
            "state": "running",
            "heartbeat": repr(beat),
            "started": repr(beat - 100),
            "written": 12340,
            "connections_up": 2,
            "connections_total": 2,
            "missing": "KRW-NOPE,KRW-GONE",
            "last_error": "connection reset by peer",
        },
    )
    backend.sync.pexpire("md:feeder:feeder-1", 5_000)
    backend.sync.hset("md:feeder:feeder-2", mapping={"state": "offline"})
    code, out, err = md("status")
    assert code == 0, err
    head, first, second, summary = out.splitlines()
    assert head.split() == [
        "FEEDER",
        "STATE",
        "HEARTBEAT",
        "EXPIRES",
        "CONNS",
        "WRITTEN",
        "BOOKS/S",
        "MISSING",
        "HOST",
        "LAST",
        "ERROR",
    ]
    cells = first.split()
    assert cells[:2] == ["feeder-1", "running"] and cells[3] == "ago"
    assert 1.5 <= float(cells[2].rstrip("s")) < 2.5  # the heartbeat was written 1.5 s before it was read
    assert 4.0 < float(cells[4].rstrip("s")) <= 5.0
    assert cells[5:9] == ["2/2", "12,340", "123.4", "2"]  # 12,340 books in 100 s; two symbols missing
    assert first.endswith("connection reset by peer")
    assert second.split()[:2] == ["feeder-2", "offline"]
    assert summary == "2 feeders: 1 running, 0 dead"
    code, out, _ = md("status", "-v")
    counters = " ".join(line.strip() for line in out.splitlines() if line.startswith("    "))
    assert 'connections_up=2 last_error="connection reset by peer" missing=KRW-NOPE,KRW-GONE' in counters


def test_status_shows_each_stage_latency_per_feeder_and_exchange(backend: Backend, md: Run) -> None:
    """The p50/p99 per stage a feeder keeps over its recent books (`feeder.latency`), as columns of their own
    and in --json; a malformed field is left out rather than shown wrong."""
    backend.sync.hset(
        "md:feeder:feeder-1",
        mapping={
            "state": "running", "heartbeat": repr(time.time()), "started": repr(time.time() - 10),
            "latency_ms:upbit:exchange_to_recv": "p50 3.2 p99 12", "latency_ms:upbit:recv_to_written":
            "p50 0.41 p99 2.3", "latency_ms:binance:recv_to_written": "p50 0.5 p99 1.9",
            "latency_ms:okx:recv_to_written": "p50 fast p99 1",
        },
    )  # fmt: skip
    backend.sync.pexpire("md:feeder:feeder-1", 5_000)
    code, out, err = md("status")
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LATENCY (ms)"))
    assert lines[start].split()[3:] == ["EXCHANGE->RECEIVED", "p50/p99", "RECEIVED->WRITTEN", "p50/p99"]
    assert [line.split() for line in lines[start + 1 :]] == [
        ["feeder-1", "binance", "-", "0.5", "/", "1.9"],
        ["feeder-1", "upbit", "3.2", "/", "12", "0.41", "/", "2.3"],
    ]
    report = json.loads(md("status", "--json")[1])
    assert report["feeders"][0]["latency_ms"] == {
        "upbit": {
            "exchange_to_recv": {"p50": 3.2, "p99": 12.0},
            "recv_to_written": {"p50": 0.41, "p99": 2.3},
        },
        "binance": {"recv_to_written": {"p50": 0.5, "p99": 1.9}},
    }


def test_a_dead_feeder_stays_listed_with_its_last_counters_and_fails_the_check(
    backend: Backend, md: Run
) -> None:
    """The record of a killed feeder expires; the registry (md:feeders) keeps its last heartbeat's fields."""
    last = {"state": "running", "heartbeat": time.time() - 30, "started": time.time() - 130, "written": 500,
            "host": "box", "pid": 42, "instance": "abc"}  # fmt: skip
    backend.sync.hset("md:feeders", "gone-1", json.dumps(last))
    backend.sync.hset("md:feeders", "ancient", json.dumps({**last, "heartbeat": time.time() - 3 * 86400}))
    code, out, _ = md("status")
    assert code == 1  # a dead feeder: the health check fails
    rows = out.splitlines()
    assert rows[1].split()[:6] == ["gone-1", "dead", "dead", "since", rows[1].split()[4], "ago"]
    assert 30.0 <= float(rows[1].split()[4].rstrip("s")) < 32
    assert "box:42" in rows[1] and "500" in rows[1] and "ancient" not in out  # over a day: not listed
    assert "ancient" in md("status", "--all")[1]
    code, out, _ = md("status", "--json")
    report = json.loads(out)
    assert code == 1 and report["dead"] == 1 and report["running"] == 0
    (entry,) = report["feeders"]
    assert entry["id"] == "gone-1" and entry["state"] == "dead" and entry["fields"]["written"] == "500"


def test_status_without_feeders(backend: Backend, md: Run) -> None:
    RedisMarketDataProvider(redis=backend.sync).write_snapshot(BTC, "upbit")
    code, out, _ = md("status")
    assert (code, out) == (1, "no feeders (no md:feeder:* keys, none in md:feeders)\n")


# ------------------------------------------------------------------------------------------------- symbols
def test_symbols(backend: Backend, md: Run) -> None:
    provider = RedisMarketDataProvider(redis=backend.sync)
    assert md("symbols") == (0, "no books\n", "")
    for snapshot, exchange in ((ETH, "upbit"), (BTC, "upbit"), (BTCUSDT, "binance")):
        provider.write_snapshot(snapshot, exchange)
    code, out, _ = md("symbols")
    assert code == 0
    assert out.splitlines() == ["binance (1 books)", "    BTCUSDT", "upbit (2 books)", "    KRW-BTC KRW-ETH"]
    assert md("symbols", "upbit") == (0, "KRW-BTC\nKRW-ETH\n", "")
    code, out, err = md("symbols", "bithumb")
    assert (code, out) == (1, "")
    assert "no books on exchange 'bithumb' (exchanges with books: binance, upbit)" in err
    assert md("symbols", "UPBIT") == (0, "KRW-BTC\nKRW-ETH\n", "")  # normalised, as everywhere
    assert md("symbols", "up bit")[0] == 2


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("env", "argv", "variable"),
    [
        ({"MD_MAX_AGE": "abc"}, ["get", "KRW-BTC"], "MD_MAX_AGE"),
        ({"MD_REDIS_TIMEOUT": "0"}, ["status"], "MD_REDIS_TIMEOUT"),
        ({}, ["--redis-url", "http://localhost:6379", "symbols"], "MD_REDIS_URL"),
        ({}, ["watch", "--once", "--prefix", "md:x"], "MD_PREFIX"),
    ],
)
def test_bad_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    variable: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def must_not_connect(settings: object) -> object:
        raise AssertionError("a bad setting must stop the CLI before it connects")

    assert main(argv, client_factory=must_not_connect) == 2  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"md: invalid setting: {variable}: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["get", "KRW-BTC"], ["watch", "--once"], ["status"], ["symbols"]])
def test_unreachable_redis_exits_3_with_the_url_masked(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    url = f"redis://reader:s3cret@127.0.0.1:{free_port()}/0"
    assert main(["--redis-url", url, *argv]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"md: cannot reach Redis at redis://reader:***@{url.split('@')[1]}: ")
    assert "s3cret" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["watch", "--interval", "0"]) == 2
    assert main(["get", "KRW-BTC", "--depth", "-1"]) == 2
    assert "usage: md" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "get" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- provider
def test_inspect_books_returns_stale_books_with_their_status(backend: Backend) -> None:
    feeder_write(backend, BTC, "upbit")
    feeder_write(backend, ETH, "upbit")
    run_flow(backend.sync, mark_down_flow(LAYOUT, "f1", [("upbit", "KRW-ETH")]))
    provider = RedisMarketDataProvider(redis=backend.sync, strict=True)  # strict must not raise here
    assert provider.inspect_books([]) == []
    results = provider.inspect_books([("upbit", "KRW-BTC"), (None, "KRW-ETH"), ("upbit", "KRW-XRP")])
    assert [(s.exchange, s.symbol, s.state) for s, _ in results] == [
        ("upbit", "KRW-BTC", BookState.LIVE),
        ("upbit", "KRW-ETH", BookState.CONNECTION_DOWN),
        ("upbit", "KRW-XRP", BookState.MISSING),
    ]
    assert [book for _, book in results] == [BTC, ETH, None]
    assert results[1][1] is not None and results[1][1].seq == 1


async def test_ainspect_books(backend: Backend) -> None:
    feeder_write(backend, BTC, "upbit")
    client = backend.new_async()
    provider = RedisMarketDataProvider(async_redis=client)
    ((status, book),) = await provider.ainspect_books([(None, "KRW-BTC")])
    assert status.state is BookState.LIVE and status.feeder == "f1" and book == BTC
    assert await provider.ainspect_books([]) == []
    await client.aclose()


def test_every_read_command_speaks_json(backend: Backend, md: Run) -> None:
    feeder_write(backend, BTC, "upbit")
    code, out, _ = md("symbols", "--json")
    assert (code, json.loads(out)) == (0, {"upbit": ["KRW-BTC"]})
    assert md("symbols", "binance", "--json")[0] == 1
    code, out, _ = md("watch", "--once", "--json")
    (line,) = out.splitlines()
    report = json.loads(line)
    (book,) = report["books"]
    assert code == 0 and book["exchange"] == "upbit" and book["symbol"] == "KRW-BTC" and book["live"] is True
    assert book["bid"] == BTC.bids[0][0] and book["ask"] == BTC.asks[0][0]
    code, out, _ = md("status", "--json")
    assert code == 0 and json.loads(out)["running"] == 1


def test_status_symbols_shows_every_book_by_feeder_with_its_rate(
    backend: Backend, md: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    feeder_write(backend, BTC, "upbit")
    feeder_write(backend, BTCUSDT, "binance", feeder="f2")
    backend.sync.hset("md:binance:BTCUSDT", "live", "0")  # its connection dropped

    def three_more_versions(seconds: float) -> None:  # between the two reads, BTC gets 3 new versions
        for i in range(1, 4):
            feeder_write(
                backend, OrderBookSnapshot("KRW-BTC", BTC.timestamp + i, BTC.bids, BTC.asks), "upbit"
            )

    monkeypatch.setattr(cli.time, "sleep", three_more_versions)
    code, out, _ = md("status", "--symbols")
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["FEEDER", "EXCHANGE", "SYMBOL", "UPD/S", "AGE", "STATE"]
    btc = next(line for line in table if "KRW-BTC" in line).split()
    assert btc[:3] == ["f1", "upbit", "KRW-BTC"] and float(btc[3]) > 0 and btc[-1] == "live"
    usdt = next(line for line in table if "BTCUSDT" in line)
    assert usdt.split()[:3] == ["f2", "binance", "BTCUSDT"] and "connection_down" in usdt
