"""`ExchangeConnection` in this process against the simulator, with a real writer on fakeredis.

What the end-to-end tests show through a feeder process, seen here from inside: books reach the writer and
equal what the simulator sent, a dropped connection marks its books down at once and comes back, a shutdown
notice is a handover (no mark-down), an error reply is counted, and frames websockets has queued are taken
from its queue (the fast path) instead of one ``recv`` each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from websockets.asyncio.client import ClientConnection

from client import BookState, RedisMarketDataProvider
from client.layout import RedisLayout
from exchange_sim import ExchangeSimulator
from feeder.connection import ConnectionSettings, ExchangeConnection, StallPolicy
from feeder.exchanges import BinanceProtocol, ExchangeProtocol, UpbitProtocol
from feeder.exchanges.binance import DESCRIPTOR as BINANCE_DESCRIPTOR
from feeder.exchanges.bybit import BybitProtocol
from feeder.pacing import OpenRateLimiter
from feeder.settings import FeederSettings
from feeder.status import FeederStatus
from feeder.writer import SnapshotWriter

UPBIT = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
BINANCE = ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
SETTINGS = ConnectionSettings(connect_timeout=5.0, reconnect_max_delay=0.2, handover_timeout=5.0)
# Upbit's rule as the feeder sets it (feeder.exchanges): 20 mean gaps of silence, never less than 1 s
UPBIT_STALL = ConnectionSettings(
    connect_timeout=5.0,
    reconnect_max_delay=0.2,
    handover_timeout=5.0,
    stall=StallPolicy(floor=1.0, adaptive=True, gaps=20.0),
)


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (not within {timeout}s)")
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    sim: ExchangeSimulator
    writer: SnapshotWriter
    provider: RedisMarketDataProvider
    tasks: list[asyncio.Task[Any]]

    def connect(
        self,
        protocol: ExchangeProtocol,
        symbols: list[str],
        limiter: OpenRateLimiter | None = None,
        settings: ConnectionSettings = SETTINGS,
    ) -> ExchangeConnection:
        limiter = limiter or OpenRateLimiter(100.0, 10)
        conn = ExchangeConnection(
            protocol, symbols, self.writer, settings, limiter, name=f"{protocol.name}-1"
        )
        self.tasks.append(asyncio.create_task(conn.run(), name=conn.name))
        return conn

    async def states(self, exchange: str, symbols: list[str]) -> list[BookState]:
        results = await self.provider.ainspect_books([(exchange, s) for s in symbols])
        return [status.state for status, _ in results]

    async def wait_live(self, exchange: str, symbols: list[str]) -> None:
        async def live() -> bool:
            return all(s is BookState.LIVE for s in await self.states(exchange, symbols))

        await poll(live, 10, f"{exchange} books not live")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    layout = RedisLayout()
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    writer = SnapshotWriter(client, layout, "conn-test")
    status = FeederStatus(client, layout, "conn-test", dict, ttl=60.0)
    assert await status.beat()  # the feeder is alive: its books are judged by their connection alone
    provider = RedisMarketDataProvider(async_redis=fakeredis.FakeAsyncRedis(server=server))
    async with ExchangeSimulator(rate=20.0, ping_interval=None) as sim:
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(writer.run(), name="writer")]
        r = Rig(sim, writer, provider, tasks)
        try:
            yield r
        finally:
            for task in r.tasks:
                task.cancel()
            await asyncio.gather(*r.tasks, return_exceptions=True)
            await provider.astop()
            await client.aclose()


async def test_books_reach_the_writer_and_equal_what_the_simulator_sent(rig: Rig) -> None:
    upbit = rig.connect(UpbitProtocol(url=rig.sim.upbit_url, ticket="t"), UPBIT)
    binance = rig.connect(BinanceProtocol(url=rig.sim.binance_url), BINANCE)
    await rig.wait_live("upbit", UPBIT)
    await rig.wait_live("binance", BINANCE)
    assert upbit.up and binance.up
    rig.sim.set_rate(0.0)  # freeze: the last frames sent are the truth
    truth = rig.sim.last_sent

    async def equal() -> bool:
        for exchange, symbols in (("upbit", UPBIT), ("binance", BINANCE)):
            stored = await rig.provider.aget_latest_snapshots(symbols, exchange=exchange)
            for symbol in symbols:
                book, expected = stored[symbol], truth[(exchange, symbol)]
                if book is None or (book.xid, book.bids, book.asks) != (
                    expected.xid,
                    expected.bids,
                    expected.asks,
                ):
                    return False
        return await rig.writer.flush(1)

    await poll(equal, 10, "stored books differ from the simulator's last frames")
    assert upbit.stats.bad_frames == binance.stats.bad_frames == 0
    assert upbit.stats.books >= len(UPBIT) and binance.stats.frames >= len(BINANCE)


async def test_a_drop_marks_every_book_down_at_once_then_the_connection_comes_back(rig: Rig) -> None:
    # the reconnect waits ~1.5 s for its token, so the marked-down books can be seen before they revive
    conn = rig.connect(BinanceProtocol(url=rig.sim.binance_url), BINANCE, OpenRateLimiter(0.66, 1))
    await rig.wait_live("binance", BINANCE)
    assert await rig.sim.drop("binance") == 1

    async def down() -> bool:
        return all(s is BookState.CONNECTION_DOWN for s in await rig.states("binance", BINANCE))

    await poll(down, 5, "books not marked down after the drop")
    assert rig.writer.stats.marked_down == len(BINANCE)
    await rig.wait_live("binance", BINANCE)
    assert conn.stats.reconnects == 1 and conn.up


async def test_a_shutdown_notice_is_a_handover_without_a_mark_down(rig: Rig) -> None:
    conn = rig.connect(BinanceProtocol(url=rig.sim.binance_url), BINANCE)
    await rig.wait_live("binance", BINANCE)
    first = rig.sim.connection_ids("binance")
    assert rig.sim.binance.announce_shutdown() == 1

    async def replaced() -> bool:
        ids = rig.sim.connection_ids("binance")
        return conn.stats.rotations == 1 and len(ids) == 1 and ids != first

    await poll(replaced, 10, "no handover after the shutdown notice")
    assert rig.writer.stats.marked_down == 0 and conn.stats.reconnects == 0
    await rig.wait_live("binance", BINANCE)


async def test_an_error_reply_is_counted_and_kept_as_the_last_error(rig: Rig) -> None:
    conn = rig.connect(BinanceProtocol(url=rig.sim.binance_url), BINANCE)
    await rig.wait_live("binance", BINANCE)
    await rig.sim.send_error("binance", code=2, message="Invalid request: test")

    async def counted() -> bool:
        return conn.stats.exchange_errors == 1

    await poll(counted, 5, "error reply not counted")
    assert conn.stats.last_error == "binance error 2: Invalid request: test"
    assert conn.stats.bad_frames == 0


async def test_queued_frames_are_taken_from_websockets_queue_not_one_recv_each(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path of `feeder.websocket_queue`: if it silently fell back, every frame would cost a recv."""
    calls = 0
    real_recv = ClientConnection.recv

    async def counting_recv(self: ClientConnection, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_recv(self, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "recv", counting_recv)
    rig.sim.set_rate(0.0)
    capture = "tests/data/recordings/upbit-2021-04-17.ws.txt"
    rig.sim.set_replay("upbit", capture, speed=None)  # as fast as the client reads: frames queue up
    conn = rig.connect(UpbitProtocol(url=rig.sim.upbit_url, ticket="t"), ["KRW-BTC"])

    async def all_read() -> bool:
        return conn.stats.frames >= 449

    await poll(all_read, 20, "the replayed capture was not read")
    assert conn.stats.bad_frames == 0
    assert calls < conn.stats.frames / 2, f"{calls} recv calls for {conn.stats.frames} frames: no fast path"
    # and the frames were cut out of the byte stream by feeder.websocket_queue, not by websockets' parser
    fast = conn._reading.fast_frames if conn._reading is not None else None
    assert fast is not None and fast.frames >= 449, f"data frames parsed by the fast path: {fast}"


async def test_books_of_symbols_never_subscribed_are_dropped_not_written(rig: Rig) -> None:
    """Was: a flood of frames for codes the feeder never subscribed was written into Redis (26,000 keys in 8 s,
    the pending buffer and RSS growing, the other exchange starved)."""
    conn = rig.connect(UpbitProtocol(url=rig.sim.upbit_url, ticket="t"), ["KRW-BTC"])
    await rig.wait_live("upbit", ["KRW-BTC"])
    rig.sim.set_rate(0.0)
    frame = (
        '{"type":"orderbook","code":"KRW-X%03d","timestamp":1700000000000,"total_ask_size":1.0,'
        '"total_bid_size":1.0,"orderbook_units":[{"ask_price":2.0,"bid_price":1.0,"ask_size":1.0,"bid_size":1.0}],'
        '"stream_type":"REALTIME","level":0}'
    )
    for i in range(200):
        await rig.sim.send_garbage("upbit", (frame % i).encode())

    async def dropped() -> bool:
        return conn.stats.unexpected >= 200

    await poll(dropped, 5, "books of unsubscribed codes were not counted")
    assert await rig.writer.flush(1)
    assert [b for b in await rig.provider.aall_books() if b[1].startswith("KRW-X")] == []
    assert rig.writer.pending == 0


async def test_a_busy_upbit_connection_that_goes_silent_for_a_second_is_stalled_even_just_after_a_reconnect(
    rig: Rig,
) -> None:
    """Upbit pushes only on change, so its rule is learned from the connection's own arrivals: 3 codes at 20
    updates/s each is a frame every ~17 ms, and a second of silence there is a stall. Was (chaos run): a
    connection was judged only after 2 s of warm-up and 5 s of history, from scratch after every reconnect."""
    conn = rig.connect(UpbitProtocol(url=rig.sim.upbit_url, ticket="t"), UPBIT, settings=UPBIT_STALL)
    await rig.wait_live("upbit", UPBIT)
    opened = time.monotonic()

    async def learned() -> bool:
        return conn.stall_limit is not None

    await poll(learned, 5, "no stall limit learned from a busy connection")
    assert time.monotonic() - opened < 1.5, "a busy connection must be judged within a second or so"
    assert conn.stall_limit == 1.0, f"20 gaps of ~17 ms is under the 1 s floor, got {conn.stall_limit}"

    for attempt in range(2):  # the second stall comes right after the reconnect the first one caused
        newest = max(rig.sim.connection_ids("upbit"))  # the stalled one before may still be closing
        marked = rig.writer.stats.marked_down

        async def down(marked: int = marked) -> bool:  # the books are down until the replacement delivers
            return rig.writer.stats.marked_down >= marked + len(UPBIT)

        assert await rig.sim.stall("upbit", seconds=30, connection=newest) == 1
        stalled = time.monotonic()
        await poll(down, 5, f"stall {attempt + 1} not detected")
        took = time.monotonic() - stalled
        assert took < 2.0, f"stall {attempt + 1}: books read as live for {took:.2f}s"
        down_at = time.monotonic()
        await rig.wait_live("upbit", UPBIT)
        back = time.monotonic() - down_at
        assert back < 1.0, f"replaced after {back:.2f}s: a stalled connection is dropped, not closed politely"

    assert conn.stats.reconnects == 2


async def test_a_quiet_upbit_connection_is_not_taken_for_a_stalled_one(rig: Rig) -> None:
    """Codes that rarely change send nothing for long stretches: that silence is the market, not a stall."""
    rig.sim.set_rate(0.0)  # the opening snapshots, then nothing
    conn = rig.connect(UpbitProtocol(url=rig.sim.upbit_url, ticket="t"), UPBIT, settings=UPBIT_STALL)
    await rig.wait_live("upbit", UPBIT)
    frames = conn.stats.frames
    deadline = time.monotonic() + 3.0  # three times the floor, with nothing arriving
    while time.monotonic() < deadline:
        assert all(s is BookState.LIVE for s in await rig.states("upbit", UPBIT)), "a quiet book went down"
        await asyncio.sleep(0.1)
    assert conn.stats.frames == frames, "the simulator was not quiet: the test shows nothing"
    assert conn.stats.reconnects == 0 and conn.up
    assert conn.stall_limit is None


async def test_a_pong_later_than_the_ping_timeout_marks_the_books_down_and_reconnects(rig: Rig) -> None:
    """The keep-alive pings, the last line behind the stall watchdog (here off): a server that stops
    answering is given up after the ping timeout, its books marked down at once."""
    no_watchdog = ConnectionSettings(
        connect_timeout=5.0,
        reconnect_max_delay=0.2,
        handover_timeout=5.0,
        ping_interval=0.3,
        ping_timeout=0.3,
    )
    assert no_watchdog.stall.fixed is None and not no_watchdog.stall.adaptive
    conn = rig.connect(BinanceProtocol(url=rig.sim.binance_url), BINANCE, settings=no_watchdog)
    await rig.wait_live("binance", BINANCE)
    marked = rig.writer.stats.marked_down
    assert await rig.sim.stall("binance", seconds=30) == 1
    stalled = time.monotonic()

    async def down() -> bool:
        return rig.writer.stats.marked_down >= marked + len(BINANCE)

    await poll(down, 5, "a connection whose pongs stopped was not given up")
    # at most a ping interval, the ping timeout and the 0.5 s close timeout (it was 2 s: 2.6 s in all)
    assert time.monotonic() - stalled < 2.0
    await rig.wait_live("binance", BINANCE)
    assert conn.stats.reconnects == 1
    assert "ping" in conn.stats.last_error.lower(), conn.stats.last_error


async def test_a_dead_endpoint_is_left_for_the_next_one(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Binance's own URL failing to connect (here: nothing listens): after two failures the connection tries
    the next endpoint (on Binance: port 443, then data-stream.binance.vision), here the simulator."""
    protocol = BinanceProtocol(url="ws://127.0.0.1:1", fallbacks=[rig.sim.binance_url])
    conn = rig.connect(protocol, BINANCE)
    await rig.wait_live("binance", BINANCE)
    assert conn.url.startswith(rig.sim.binance_url) and conn.urls[0].startswith("ws://127.0.0.1:1/")
    assert "trying the next endpoint" in caplog.text


def test_binance_fallbacks_apply_only_to_binance_s_own_hosts() -> None:
    def fallbacks(url: str) -> list[str]:
        settings = FeederSettings(binance_url=url, binance_symbols="BTCUSDT", redis_url="redis://127.0.0.1:1")
        return BINANCE_DESCRIPTOR.build(settings).fallback_urls(["BTCUSDT"])

    official = fallbacks("wss://stream.binance.com:9443")
    assert official == [
        "wss://stream.binance.com:443/stream?streams=btcusdt@depth20@100ms",
        "wss://data-stream.binance.vision:443/stream?streams=btcusdt@depth20@100ms",
    ]
    assert fallbacks("ws://127.0.0.1:8766") == []  # the simulator, or a proxy: Binance is never reached


async def test_past_its_resync_budget_a_connection_is_replaced_and_every_book_stays_right(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Broken chains are resynchronised on the open connection up to the budget (OKX: 3 a minute, within its
    request limit); past it the connection is replaced. Either way, no broken book is served."""
    layout = RedisLayout()
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    writer = SnapshotWriter(client, layout, "resync-test")
    status = FeederStatus(client, layout, "resync-test", dict, ttl=60.0)
    assert await status.beat()
    settings = ConnectionSettings(connect_timeout=5.0, reconnect_max_delay=0.2, resyncs_per_minute=2)
    async with ExchangeSimulator(upbit_port=None, binance_port=None, bybit_port=0, rate=200.0) as sim:
        bybit: Any = sim.server("bybit")
        conn = ExchangeConnection(
            BybitProtocol(url=sim.url("bybit")), ["BTCUSDT"], writer, settings, OpenRateLimiter(100.0, 10),
            name="bybit-1",
        )  # fmt: skip
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(conn.run())]
        try:
            await poll(lambda: _true(conn.stats.books > 5), 10, "no Bybit books")
            bybit.set_delta_faults(rate=0.2, kinds=("gap",), seed=3)
            await poll(lambda: _true(conn.stats.reconnects >= 1), 10, "never replaced past the budget")
            assert conn.stats.resyncs >= 3
            assert "replacing the connection" in caplog.text
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value
