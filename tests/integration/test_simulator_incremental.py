"""The Bybit and OKX simulators against the feeder's own protocols, over real WebSockets on 127.0.0.1.

Every frame received is fed to `BybitProtocol` / `OkxProtocol` exactly as the feeder would, and every book the
protocol serves is compared with the exchange's true book at that update id (`truth_at`): without faults,
and with thousands of updates lost, duplicated, reordered, corrupted, mis-checksummed and restarted, not one
served book may differ. After each `Resync` the client asks again (`resync_frames`), as the feeder does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client.models import OrderBookSnapshot
from exchange_sim.bybit import BybitServer
from exchange_sim.deltas import FAULT_KINDS, DeltaServer
from exchange_sim.okx import OkxServer
from feeder.exchanges import Ack, ErrorReply
from feeder.exchanges.base import SequenceRestart, ShutdownNotice
from feeder.exchanges.bybit import BybitProtocol
from feeder.exchanges.okx import OkxProtocol
from feeder.incremental_book import Resync

DEPTH = 20
SYMBOLS = {"bybit": ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"], "okx": ["BTC-USDT", "ETH-USDT", "SOL-USDT"]}
Protocol = BybitProtocol | OkxProtocol


def make_server(exchange: str, **kwargs: Any) -> DeltaServer:
    kwargs.setdefault("tick_interval", 0.005)
    return BybitServer(**kwargs) if exchange == "bybit" else OkxServer(**kwargs)


def make_protocol(exchange: str, server: DeltaServer) -> Protocol:
    if exchange == "bybit":
        return BybitProtocol(depth=DEPTH, url=server.url)
    return OkxProtocol(depth=DEPTH, url=server.url)


@pytest.fixture
async def servers() -> AsyncIterator[list[DeltaServer]]:
    started: list[DeltaServer] = []
    yield started
    for server in started:
        await server.stop()


async def started(servers: list[DeltaServer], exchange: str, **kwargs: Any) -> DeltaServer:
    server = make_server(exchange, **kwargs)
    await server.start()
    servers.append(server)
    return server


@dataclass
class Client:
    """A feeder-like client: every frame to the protocol, every book checked against the truth."""

    server: DeltaServer
    protocol: Protocol
    ws: ClientConnection
    books: int = 0
    wrong: list[str] = field(default_factory=list)
    resyncs: int = 0
    restarts: int = 0
    acks: list[Ack] = field(default_factory=list)
    errors: list[ErrorReply] = field(default_factory=list)
    last: dict[str, OrderBookSnapshot] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # resynced, no book since

    async def read(self, *, seconds: float | None = None, quiet: float | None = None) -> None:
        """Handle frames for `seconds`, or until none arrived for `quiet` seconds."""
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        while True:
            timeout = quiet if end is None else end - loop.time()
            if timeout is None or timeout <= 0:
                return
            try:
                async with asyncio.timeout(timeout):
                    frame = await self.ws.recv()
            except TimeoutError:
                return
            await self.handle(frame)

    async def handle(self, frame: str | bytes) -> None:
        for event in self.protocol.parse(frame, time.time()):
            if type(event) is OrderBookSnapshot:
                self.books += 1
                self.check(event)
                self.last[event.symbol] = event
                self.waiting.discard(event.symbol)
            elif type(event) is Resync:
                self.resyncs += 1
                self.waiting.add(event.symbol)
                for request in self.protocol.resync_frames(event.symbol):
                    await self.ws.send(request)
            elif type(event) is SequenceRestart:
                self.restarts += 1
            elif type(event) is Ack:
                self.acks.append(event)
            elif type(event) is ErrorReply:
                self.errors.append(event)

    def check(self, book: OrderBookSnapshot) -> None:
        assert book.xid is not None
        truth = self.server.truth_at(book.symbol, book.xid)
        if truth is None:
            self.wrong.append(f"{book.symbol} {book.xid}: no truth")
        elif (book.bids, book.asks) != (truth.bids[:DEPTH], truth.asks[:DEPTH]):
            self.wrong.append(f"{book.symbol} {book.xid}: differs from the exchange's book")
        assert len(book.bids) == len(book.asks) == DEPTH


async def frames_until_closed(ws: ClientConnection, timeout: float = 3.0) -> list[str | bytes]:
    """Every frame received until the server closes the connection (within `timeout`)."""
    frames: list[str | bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                frames.append(await ws.recv())
            except ConnectionClosed:
                return frames


async def subscribed_client(server: DeltaServer, exchange: str, symbols: list[str]) -> Client:
    protocol = make_protocol(exchange, server)
    ws = await connect(protocol.url(symbols), max_queue=None)
    for frame in protocol.subscribe_frames(symbols):
        await ws.send(frame)
    return Client(server, protocol, ws)


def assert_converged(client: Client, symbols: list[str]) -> None:
    """Every symbol's last served book is the exchange's current one."""
    assert not client.waiting, f"books never live again after a resync: {client.waiting}"
    for symbol in symbols:
        truth = client.server.truth[symbol]
        book = client.last[symbol]
        assert book.xid == truth.xid
        assert (book.bids, book.asks) == (truth.bids[:DEPTH], truth.asks[:DEPTH])


@pytest.mark.parametrize(
    ("exchange", "options"),
    [("bybit", {}), ("okx", {}), ("okx", {"checksum": True})],
    ids=["bybit", "okx", "okx-checksum"],
)
async def test_served_books_are_the_exchanges_books(
    servers: list[DeltaServer], exchange: str, options: dict[str, Any]
) -> None:
    server = await started(servers, exchange, rate=200.0, seed=3, **options)
    symbols = SYMBOLS[exchange]
    client = await subscribed_client(server, exchange, symbols)
    await client.read(seconds=0.7)
    server.set_rate(0)
    await client.read(quiet=0.3)
    await client.ws.close()
    assert client.books > 100 * len(symbols)
    assert client.wrong == []
    assert client.resyncs == client.restarts == 0
    assert len(client.acks) == (len(symbols) if exchange == "okx" else 1)  # OKX acks per channel
    assert_converged(client, symbols)


@pytest.mark.parametrize(
    ("exchange", "options"), [("bybit", {}), ("okx", {"checksum": True})], ids=["bybit", "okx-checksum"]
)
async def test_faults_never_make_a_served_book_wrong(
    servers: list[DeltaServer], exchange: str, options: dict[str, Any]
) -> None:
    server = await started(servers, exchange, rate=400.0, seed=5, restart_gap=300, **options)
    server.set_delta_faults(rate=0.2, seed=11)
    symbols = SYMBOLS[exchange]
    client = await subscribed_client(server, exchange, symbols)
    await client.read(seconds=2.0)
    server.set_delta_faults(rate=0.0)  # the books must all be live again, and stay so
    await client.read(seconds=0.5)
    server.set_rate(0)
    await client.read(quiet=0.3)
    await client.ws.close()

    counters = server.counters
    assert counters["updates"] > 2500
    assert counters["delta_faults"] > 300, counters
    kinds = [k for k in FAULT_KINDS if k != "checksum" or exchange == "okx"]
    assert all(counters[f"delta_{k}"] > 0 for k in kinds), counters
    assert client.wrong == []
    assert client.books > 1000
    assert client.resyncs > 100
    assert client.restarts > 0
    assert_converged(client, symbols)


@pytest.mark.parametrize("exchange", ["bybit", "okx"])
async def test_keepalive_round_trip(servers: list[DeltaServer], exchange: str) -> None:
    server = await started(servers, exchange, rate=0.0)
    protocol = make_protocol(exchange, server)
    async with connect(protocol.url(["BTCUSDT" if exchange == "bybit" else "BTC-USDT"])) as ws:
        assert protocol.ping_frame is not None
        await ws.send(protocol.ping_frame)
        async with asyncio.timeout(5):
            reply = await ws.recv()
        assert protocol.parse(reply, 1.0) == [Ack(None, "pong")]


async def test_bybit_refuses_more_than_10_args(servers: list[DeltaServer]) -> None:
    server = await started(servers, "bybit", rate=0.0)
    protocol = BybitProtocol(url=server.url)
    topics = [f"orderbook.50.SYM{i}USDT" for i in range(11)]
    async with connect(server.url) as ws:
        await ws.send('{"req_id":"7","op":"subscribe","args":[' + ",".join(f'"{t}"' for t in topics) + "]}")
        async with asyncio.timeout(5):
            (error,) = protocol.parse(await ws.recv(), 1.0)
    assert error == ErrorReply("bybit", "subscribe", "error:args size >10")


async def test_okx_closes_a_connection_without_subscription(servers: list[DeltaServer]) -> None:
    server = await started(servers, "okx", rate=0.0, subscribe_timeout=0.3)
    protocol = OkxProtocol(url=server.url)
    async with connect(server.url) as idle, connect(server.url) as busy:
        for frame in protocol.subscribe_frames(["BTC-USDT"]):
            await busy.send(frame)
        await frames_until_closed(idle)
        assert idle.close_code == 1000
        await asyncio.sleep(0.3)
        await busy.send("ping")
        async with asyncio.timeout(3):
            while (await busy.recv()) != "pong":
                pass


async def test_okx_shutdown_notice_then_close(servers: list[DeltaServer]) -> None:
    server = await started(servers, "okx", rate=0.0, notice_close_delay=0.2)
    protocol = OkxProtocol(url=server.url)
    async with connect(server.url) as ws:
        await ws.send(protocol.subscribe_frames(["BTC-USDT"])[0])
        await server.wait_until(lambda: server.subscription_count == 1, timeout=3)
        assert server.announce_shutdown() == 1
        events = [e for frame in await frames_until_closed(ws) for e in protocol.parse(frame, 1.0)]
        assert ShutdownNotice("okx") in events
        assert ws.close_code == 1012


async def test_okx_closes_an_idle_connection_and_the_feeder_s_ping_keeps_one_open() -> None:
    """OKX cuts a connection without data for 30 s (here 0.6 s): a client that sends nothing on a quiet book
    is closed; one that sends the protocol's keep-alive (`ping_frame`, as the feeder does) is not."""
    server = OkxServer(port=0, rate=0.0, idle_timeout=0.6)
    await server.start()
    protocol = OkxProtocol()
    try:
        silent = await connect(server.url)
        pinging = await connect(server.url)
        for ws in (silent, pinging):
            for frame in protocol.subscribe_frames(["BTC-USDT"]):
                await ws.send(frame)
        assert protocol.ping_frame == "ping"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while loop.time() < deadline:  # the silent client waits; the other pings every 0.2 s
            await pinging.send(protocol.ping_frame)
            await asyncio.sleep(0.2)
        assert server.counters["idle_closes"] == 1
        with pytest.raises(ConnectionClosed):
            await _drain(silent)
        assert pinging.close_code is None  # still open: its pings kept it alive
        await silent.close()
        await pinging.close()
    finally:
        await server.stop()


async def _drain(ws: ClientConnection) -> None:
    """Read until the connection closes (ConnectionClosed)."""
    while True:
        await ws.recv()
