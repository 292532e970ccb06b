"""End to end: simulator (in this process) -> md-feeder (subprocess) -> real redis-server -> provider here.

Timings are shortened through settings (see feeder_process.FAST); every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
from support.feeder_rig import Rig, poll

from client import BookState, OrderBookSnapshot

pytestmark = pytest.mark.e2e

UPBIT = [f"KRW-T{i:03d}" for i in range(220)]
BINANCE = [f"T{i:03d}USDT" for i in range(220)]


def same_book(stored: OrderBookSnapshot | None, truth: OrderBookSnapshot) -> bool:
    return (
        stored is not None
        and stored.xid == truth.xid
        and stored.bids == truth.bids
        and stored.asks == truth.asks
    )


async def test_redis_holds_what_the_simulator_sent_for_440_symbols(rig: Rig) -> None:
    rig.start_feeder(UPBIT, BINANCE)
    try:
        await poll(lambda: rig.all_live("upbit", UPBIT), 20, "not every Upbit book arrived")
        await poll(lambda: rig.all_live("binance", BINANCE), 20, "not every Binance book arrived")
    except AssertionError:
        raise AssertionError(rig.fail_log()) from None

    async def all_up() -> bool:  # the status hash is refreshed by the next heartbeat
        status = await rig.status()
        return status["connections_up"] == "4"

    await poll(all_up, 3, "not every connection reported up")
    assert (await rig.status())[
        "connections_total"
    ] == "4"  # 220 Upbit codes at 100 per connection = 3, Binance 1
    rig.sim.set_rate(0.0)  # freeze: the last frames sent are the truth

    async def equal() -> bool:
        truth = rig.sim.last_sent
        for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
            stored = await rig.provider.aget_latest_snapshots(symbols, exchange=exchange)
            if not all(same_book(stored[s], truth[(exchange, s)]) for s in symbols):
                return False
        return True

    await poll(equal, 10, "Redis books differ from the simulator's last frames")

    async def counted() -> bool:  # the status hash is refreshed by the next heartbeat
        return int((await rig.status())["written"]) >= 440

    await poll(counted, 3, "feeder status does not count the books it wrote")
    assert (await rig.status())["bad"] == "0"


async def test_dropped_connection_is_down_at_once_then_back_within_2s(rig: Rig) -> None:
    rig.start_feeder(["KRW-BTC", "KRW-ETH"], ["BTCUSDT"])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC", "KRW-ETH"]), 20, "books did not arrive")
    pubsub = rig.raw.pubsub()
    await pubsub.subscribe("md:upbit:KRW-BTC")
    before = await rig.provider.aget_latest_snapshot("KRW-BTC")
    assert before is not None and before.xid is not None
    opened = rig.sim.counters("upbit")["connections_opened"]
    dropped_at = time.monotonic()
    assert await rig.sim.drop("upbit") == 1

    went_down = came_back = None
    deadline = time.monotonic() + 5
    while came_back is None and time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg is None:
            continue
        data = orjson.loads(msg["data"])
        if data["live"] is False:
            went_down = time.monotonic() - dropped_at
        elif went_down is not None and data["xid"] > before.xid:
            came_back = time.monotonic() - dropped_at
    await pubsub.aclose()
    assert went_down is not None, "no live=false message after the drop"
    assert came_back is not None and came_back < 2.0, f"fresh data took {came_back}s\n{rig.fail_log()}"
    assert rig.sim.counters("upbit")["connections_opened"] == opened + 1
    after = await rig.provider.aget_latest_snapshot("KRW-ETH")  # re-subscribed: the other code is fresh too
    assert after is not None

    async def counted() -> bool:  # the status hash is refreshed by the next heartbeat
        status = await rig.status()
        return int(status["reconnects"]) >= 1 and status["connections_up"] == "2"

    await poll(counted, 3, "feeder status does not show the reconnect")


async def test_down_symbols_read_as_not_live_while_exchange_unreachable(rig: Rig) -> None:
    rig.start_feeder(["KRW-BTC"], [])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC"]), 20, "book did not arrive")
    await rig.sim.upbit.stop()  # the exchange goes away entirely
    await poll(
        lambda: _state_is(rig, "KRW-BTC", BookState.CONNECTION_DOWN),
        3,
        "book still live with its exchange gone",
    )
    assert await rig.provider.aget_latest_snapshot("KRW-BTC") is None

    async def reported_down() -> bool:  # the status hash is refreshed by the next heartbeat
        status = await rig.status()
        return status["connections_up"] == "0" and status["state"] == "running"

    await poll(reported_down, 3, "feeder status does not show the connection down")


async def _state_is(rig: Rig, symbol: str, state: BookState) -> bool:
    return (await rig.provider.asnapshot_status(symbol)).state is state


async def test_stalled_connection_is_detected_and_replaced(rig: Rig) -> None:
    rig.start_feeder([], ["BTCUSDT", "ETHUSDT"])
    await poll(lambda: rig.all_live("binance", ["BTCUSDT", "ETHUSDT"]), 20, "books did not arrive")
    opened = rig.sim.counters("binance")["connections_opened"]
    assert await rig.sim.stall("binance", seconds=30) == 1
    stalled_xid = (await rig.provider.aget_latest_snapshot("BTCUSDT")).xid  # type: ignore[union-attr]

    async def replaced_and_fresh() -> bool:
        book = await rig.provider.aget_latest_snapshot("BTCUSDT")
        return (
            rig.sim.counters("binance")["connections_opened"] > opened
            and book is not None
            and book.xid is not None
            and stalled_xid is not None
            and book.xid > stalled_xid
        )

    took = await poll(replaced_and_fresh, 5, f"stall not detected\n{rig.fail_log()}")
    # 0.5 s to see the stall, then at once a new connection: no closing handshake with a server that reads
    # nothing (that waited 2 s for the close timeout)
    assert took < 2.0
    assert "stalled: no frame for" in rig.feeders[0].log()  # Binance pushes every 100 ms: silence is a signal


async def test_books_of_a_stalled_binance_connection_read_as_not_live_within_a_second(rig: Rig) -> None:
    """Was: after the simulator stalled Binance, the books read as live for ~7 s (until a 5 s ping timed out)."""
    rig.start_feeder([], ["BTCUSDT", "ETHUSDT"], MD_PING_INTERVAL="20", MD_PING_TIMEOUT="20")
    await poll(lambda: rig.all_live("binance", ["BTCUSDT", "ETHUSDT"]), 20, "books did not arrive")
    rig.sim.set_rate(0.0)  # quiet, but Binance keeps pushing the unchanged books every 100 ms
    await asyncio.sleep(1.0)
    assert await rig.all_live("binance", ["BTCUSDT", "ETHUSDT"]), "a quiet Binance book is not a stalled one"
    # the books are down only until the replacement delivers (a few ms): watched on their channels
    pubsub = rig.raw.pubsub()
    await pubsub.subscribe("md:binance:BTCUSDT", "md:binance:ETHUSDT")
    assert await rig.sim.stall("binance", seconds=30) == 1
    stalled = time.monotonic()
    down: dict[str, float] = {}
    while len(down) < 2 and time.monotonic() < stalled + 3:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None and orjson.loads(msg["data"])["live"] is False:
            down.setdefault(msg["channel"].decode(), time.monotonic() - stalled)
    await pubsub.aclose()
    assert len(down) == 2, f"stalled books stayed live: {down}\n{rig.fail_log()}"
    assert max(down.values()) < 1.0, down
    await poll(lambda: rig.all_live("binance", ["BTCUSDT", "ETHUSDT"]), 3, "no replacement after the stall")


async def test_garbage_and_error_frames_are_counted_and_skipped(rig: Rig) -> None:
    rig.start_feeder(["KRW-BTC", "KRW-ETH"], ["BTCUSDT", "ETHUSDT"])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC", "KRW-ETH"]), 20, "upbit books did not arrive")
    await poll(lambda: rig.all_live("binance", ["BTCUSDT", "ETHUSDT"]), 20, "binance books did not arrive")
    opened = rig.sim.counters("upbit")["connections_opened"]
    await rig.sim.send_garbage("upbit", symbol="KRW-BTC")
    await rig.sim.send_garbage("binance")
    await rig.sim.send_error("binance", code=2, message="Invalid request: test")

    async def counted() -> bool:
        status = await rig.status()
        return int(status.get("bad", 0)) >= 2 and int(status.get("exchange_errors", 0)) >= 1

    await poll(counted, 5, "bad frames / errors not counted")
    # the other symbols on those connections keep flowing, without a reconnect
    eth = await rig.provider.aget_latest_snapshot("KRW-ETH")
    usdt = await rig.provider.aget_latest_snapshot("ETHUSDT")
    assert eth is not None and usdt is not None

    async def flowing() -> bool:
        e2 = await rig.provider.aget_latest_snapshot("KRW-ETH")
        u2 = await rig.provider.aget_latest_snapshot("ETHUSDT")
        return bool(e2 and u2 and e2.xid > eth.xid and u2.xid > usdt.xid)  # type: ignore[operator]

    await poll(flowing, 5, "books stopped flowing after a bad frame")
    assert rig.sim.counters("upbit")["connections_opened"] == opened
    assert "malformed frame" in rig.feeders[0].log()


async def test_feeder_survives_redis_restart_and_books_return_within_2s(rig: Rig) -> None:
    feeder = rig.start_feeder(["KRW-BTC", "KRW-ETH"], ["BTCUSDT"])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC", "KRW-ETH"]), 20, "books did not arrive")
    rig.server.kill()
    await asyncio.sleep(0.5)  # the outage itself (not synchronisation): the feeder keeps receiving meanwhile
    rig.server.start()  # back, empty, with no scripts loaded
    took = await poll(lambda: _all_three(rig), 5, f"books not back after Redis restart\n{rig.fail_log()}")
    assert took < 2.0, f"books took {took:.2f}s to come back"
    assert feeder.process.poll() is None, "feeder died with Redis"
    assert "Redis" in feeder.log()


async def _all_three(rig: Rig) -> bool:
    try:
        return await rig.all_live("upbit", ["KRW-BTC", "KRW-ETH"]) and await rig.all_live(
            "binance", ["BTCUSDT"]
        )
    except Exception:
        return False


async def test_binance_rotation_leaves_no_gap(rig: Rig) -> None:
    rig.sim.set_rate(10.0)
    rig.start_feeder([], ["BTCUSDT"], MD_BINANCE_MAX_LIFETIME="1.5")
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 20, "book did not arrive")
    pubsub = rig.raw.pubsub()
    await pubsub.subscribe("md:binance:BTCUSDT")
    opened = rig.sim.counters("binance")["connections_opened"]
    last = time.monotonic()
    worst_gap = 0.0
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if msg is None:
            continue
        data = orjson.loads(msg["data"])
        assert data["live"] is True, "the book went down during a planned rotation"
        now = time.monotonic()
        worst_gap = max(worst_gap, now - last)
        last = now
    await pubsub.aclose()
    rotations = rig.sim.counters("binance")["connections_opened"] - opened
    assert rotations >= 2, f"expected rotations every 1.5s, saw {rotations}\n{rig.fail_log()}"
    assert worst_gap < 0.6, f"{worst_gap:.3f}s without an update during rotations"

    async def counted() -> bool:
        return int((await rig.status())["rotations"]) >= 2

    await poll(counted, 3, "feeder status does not count the rotations")


async def test_server_shutdown_announcement_triggers_early_replacement(rig: Rig) -> None:
    rig.start_feeder([], ["BTCUSDT"])
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 20, "book did not arrive")
    opened = rig.sim.counters("binance")["connections_opened"]
    await rig.sim.announce_shutdown("binance")

    async def replaced() -> bool:
        return int((await rig.status()).get("rotations", 0)) >= 1

    await poll(replaced, 5, f"no replacement after serverShutdown\n{rig.fail_log()}")
    assert rig.sim.counters("binance")["connections_opened"] == opened + 1
    assert rig.sim.counters("binance")["connections_current"] == 1  # the old one was closed
    assert await rig.provider.aget_latest_snapshot("BTCUSDT") is not None


async def test_sigterm_exits_0_quickly_and_marks_offline(rig: Rig) -> None:
    feeder = rig.start_feeder(["KRW-BTC"], ["BTCUSDT"])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC"]), 20, "book did not arrive")
    start = time.monotonic()
    feeder.signal(signal.SIGTERM)
    code = await asyncio.to_thread(feeder.wait, 5)
    assert code == 0, feeder.log()
    assert time.monotonic() - start < 5
    status = await rig.status()
    assert status["state"] == "offline"
    assert (await rig.provider.asnapshot_status("KRW-BTC")).state is BookState.FEEDER_DEAD
    assert await rig.provider.aget_latest_snapshot("BTCUSDT") is None
    assert "stopped" in feeder.log()


async def test_killed_feeder_books_go_stale_within_heartbeat_ttl(rig: Rig) -> None:
    feeder = rig.start_feeder(["KRW-BTC"], [])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC"]), 20, "book did not arrive")
    feeder.signal(signal.SIGKILL)
    await asyncio.to_thread(feeder.wait, 5)
    took = await poll(
        lambda: _state_is(rig, "KRW-BTC", BookState.FEEDER_DEAD), 3, "book still live after its feeder died"
    )
    assert took <= 1.0 + 0.5  # MD_HEARTBEAT_TTL=1.0 plus polling slack


async def test_quiet_symbol_on_live_connection_stays_live(rig: Rig) -> None:
    rig.start_feeder(["KRW-BTC"], [])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC"]), 20, "book did not arrive")
    rig.sim.set_rate(0.0)  # the market goes quiet: Upbit sends nothing
    await asyncio.sleep(1.5)  # longer than the heartbeat TTL: silence must not make it stale
    status = await rig.provider.asnapshot_status("KRW-BTC")
    assert status.state is BookState.LIVE, status


async def test_two_shards_split_the_list(rig: Rig) -> None:
    symbols = UPBIT[:40]
    rig.start_feeder(symbols, [], MD_SHARD="1/2", MD_FEEDER_ID="shard-1")
    rig.start_feeder(symbols, [], MD_SHARD="2/2", MD_FEEDER_ID="shard-2")
    await poll(lambda: rig.all_live("upbit", symbols), 20, "not every book arrived from two shards")
    one = int((await rig.status("shard-1"))["symbols"])
    two = int((await rig.status("shard-2"))["symbols"])
    assert one + two == 40 and one > 0 and two > 0
    feeders: dict[Any, set[str]] = {}
    for s in symbols:
        feeders.setdefault((await rig.raw.hget(f"md:upbit:{s}", "feeder")), set()).add(s)
    assert set(feeders) == {b"shard-1", b"shard-2"}


async def test_a_frame_that_looks_like_a_book_but_is_malformed_is_counted_and_never_written(rig: Rig) -> None:
    """Frames of known symbols reach the writer undecoded; one that fails to decode there is a bad frame: counted,
    logged, not written (its huge ordering id would otherwise block every later book), and the symbol's next
    frames are written as usual."""
    rig.start_feeder(["KRW-BTC"], ["BTCUSDT"])
    await poll(lambda: rig.all_live("upbit", ["KRW-BTC"]), 20, "upbit book did not arrive")
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 20, "binance book did not arrive")
    # No newer frame may supersede a malformed one before the writer decodes it (it would then never be
    # decoded, hence not counted): the market pauses while they are sent.
    rig.sim.set_rate(0.0)
    await rig.sim.send_garbage(
        "binance",
        '{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":99999999999999,'
        '"bids":[["1.0","oops"]],"asks":[]}}',
    )
    await rig.sim.send_garbage(
        "upbit",
        b'{"type":"orderbook","code":"KRW-BTC","timestamp":999999999999999,"total_ask_size":1.0,'
        b'"total_bid_size":1.0,"orderbook_units":[{"ask_price":"x","bid_price":1.0,"ask_size":1.0,"bid_size":1.0}]}',
    )

    async def counted() -> bool:
        return int((await rig.status()).get("bad", 0)) >= 2

    await poll(counted, 5, f"malformed book frames not counted\n{rig.fail_log()}")
    rig.sim.set_rate(5.0)
    btc = await rig.provider.aget_latest_snapshot("KRW-BTC")
    usdt = await rig.provider.aget_latest_snapshot("BTCUSDT")
    assert btc is not None and usdt is not None
    assert btc.xid is not None and btc.xid < 999999999999999
    assert usdt.xid is not None and usdt.xid < 99999999999999

    async def flowing() -> bool:
        b2 = await rig.provider.aget_latest_snapshot("KRW-BTC")
        u2 = await rig.provider.aget_latest_snapshot("BTCUSDT")
        return bool(b2 and u2 and b2.xid > btc.xid and u2.xid > usdt.xid)  # type: ignore[operator]

    await poll(flowing, 5, "the symbol's later books were not written after a malformed one")
    assert "malformed frame" in rig.feeders[0].log()
