"""The Bithumb and Coinone simulator servers, driven by real websockets clients decoding with the protocols.

Each server is started directly (ports chosen by the OS, 127.0.0.1 only). Every frame a client receives is
decoded with the feeder's protocol; once the rate is set to 0 and the stream has gone quiet, the last book
decoded for each symbol must equal the server's truth record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.models import OrderBookSnapshot
from exchange_sim.bithumb import BithumbServer
from exchange_sim.coinone import CoinoneServer
from exchange_sim.server import ExchangeServer
from feeder.exchanges import Ack, ErrorReply, Event
from feeder.exchanges.bithumb import BithumbProtocol
from feeder.exchanges.coinone import CoinoneProtocol

Factory = Callable[..., Awaitable[Any]]
SYMBOLS = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]


@pytest.fixture
async def start() -> AsyncIterator[Factory]:
    servers: list[ExchangeServer[Any]] = []

    async def make(kind: type[ExchangeServer[Any]], **kwargs: Any) -> Any:
        kwargs.setdefault("rate", 50.0)
        server = kind(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def decode_until_quiet(
    ws: ClientConnection, protocol: Any, quiet: float = 0.3, limit: float = 5.0
) -> tuple[list[Event], list[bytes | str]]:
    """Decode every frame until none arrives for `quiet` seconds (silence after rate 0)."""
    events: list[Event] = []
    raw: list[bytes | str] = []
    async with asyncio.timeout(limit):
        while True:
            try:
                async with asyncio.timeout(quiet):
                    frame = await ws.recv()
            except TimeoutError:
                return events, raw
            raw.append(frame)
            events += protocol.parse(frame, recv_ts=1.0)


def last_books(events: list[Event]) -> dict[str, OrderBookSnapshot]:
    books: dict[str, OrderBookSnapshot] = {}
    for event in events:
        if isinstance(event, OrderBookSnapshot):
            previous = books.get(event.symbol)
            assert previous is None or (event.xid is not None and previous.xid is not None)
            assert previous is None or event.xid >= previous.xid  # type: ignore[operator]
            books[event.symbol] = event
    return books


def assert_truth(server: ExchangeServer[Any], books: dict[str, OrderBookSnapshot]) -> None:
    assert set(books) == set(SYMBOLS)
    for symbol, book in books.items():
        truth = server.truth[symbol]
        assert (book.bids, book.asks, book.xid, book.timestamp) == (
            truth.bids,
            truth.asks,
            truth.xid,
            truth.timestamp,
        )
        assert book.bids[0][0] < book.asks[0][0]
        assert [p for p, _ in book.asks] == sorted(p for p, _ in book.asks)


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE"])
async def test_bithumb_books_decode_to_the_truth(start: Factory, fmt: str) -> None:
    server = await start(BithumbServer)
    protocol = BithumbProtocol(url=server.url, format=fmt, depth=15, ticket="t")
    async with connect(server.url) as ws:
        for frame in protocol.subscribe_frames(SYMBOLS):
            await ws.send(frame)
        await asyncio.sleep(0.3)
        server.set_rate(0)
        events, raw = await decode_until_quiet(ws, protocol)
    assert all(isinstance(f, bytes) for f in raw)  # binary frames, like Upbit's
    assert b'"orderbook_units"' in raw[0] or b'"obu"' in raw[0]
    assert raw[0].index(b"timestamp" if fmt == "DEFAULT" else b'"tms"') > raw[0].index(b"}]")
    books = last_books(events)
    assert_truth(server, books)
    assert all(len(b.bids) == len(b.asks) == 15 for b in books.values())
    assert server.counters["book_frames"] > len(SYMBOLS)  # changes were sent, not only the snapshots


async def test_bithumb_errors_ping_and_connection_rate(start: Factory) -> None:
    server = await start(BithumbServer, max_connects_per_second=2)
    protocol = BithumbProtocol()
    async with connect(server.url) as ws:
        await ws.send("PING")
        assert protocol.parse(await ws.recv(), 1.0) == [Ack(None, "UP")]
        await ws.send('[{"ticket":"t"},{"type":"orderbook","codes":["KRW-BTC"]},{"format":"JSON_LIST"}]')
        (error,) = protocol.parse(await ws.recv(), 1.0)
        assert isinstance(error, ErrorReply) and (error.exchange, error.name) == ("bithumb", "WRONG_FORMAT")
        with pytest.raises(ConnectionClosed):
            await ws.recv()  # closed after the error, as Upbit does
    async with connect(server.url) as ws:
        await ws.send('[{"type":"orderbook","codes":["KRW-BTC"]}]')
        assert protocol.parse(await ws.recv(), 1.0)[0].name == "NO_TICKET"  # type: ignore[union-attr]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url):
            pass
    assert refused.value.response.status_code == 429
    with pytest.raises(InvalidStatus):
        async with connect(server.url.replace("/websocket/v1", "/other")):
            pass


@pytest.mark.parametrize("fmt", ["DEFAULT", "SHORT"])
async def test_coinone_books_decode_to_the_truth(start: Factory, fmt: str) -> None:
    server = await start(CoinoneServer)
    protocol = CoinoneProtocol(url=server.url, format=fmt, depth=16)  # the simulator sends 16 a side
    async with connect(server.url) as ws:
        assert protocol.parse(await ws.recv(), 1.0) == [Ack(None, "CONNECTED")]
        for frame in protocol.subscribe_frames(SYMBOLS):
            await ws.send(frame)
        await asyncio.sleep(0.3)
        server.set_rate(0)
        events, raw = await decode_until_quiet(ws, protocol)
    assert all(isinstance(f, str) for f in raw)
    assert events.count(Ack(None, "SUBSCRIBED")) == len(SYMBOLS)
    first = orjson.loads(next(f for f in raw if "DATA" in f))
    data = first["d"] if fmt == "SHORT" else first["data"]
    asks = data["a"] if fmt == "SHORT" else data["asks"]
    prices = [float(level["p" if fmt == "SHORT" else "price"]) for level in asks]
    assert prices == sorted(prices, reverse=True)  # as documented: best ask last
    books = last_books(events)
    assert_truth(server, books)
    for book in books.values():
        assert str(book.xid).startswith(str(int(book.timestamp * 1000)))  # timestamp ms * 1000 + n


async def test_coinone_errors_ping_and_connection_limit(start: Factory) -> None:
    server = await start(CoinoneServer, max_connections=2)
    protocol = CoinoneProtocol()
    async with connect(server.url) as ws, connect(server.url) as ws2:
        assert protocol.parse(await ws.recv(), 1.0) == [Ack(None, "CONNECTED")]
        await ws.send(protocol.ping_frame or "")
        assert await ws.recv() == '{"response_type":"PONG"}'
        for request, code in (
            ("not json", "160010"),
            ('{"request_type":"SUBSCRIBE","channel":"ORDERBOOK","topic":{"quote_currency":"krw"}}', "160012"),
            ('{"request_type":"SUBSCRIBE","channel":"CANDLE","topic":{}}', "160011"),
            ('{"request_type":"HELLO"}', "160011"),
        ):
            await ws.send(request)
            (error,) = protocol.parse(await ws.recv(), 1.0)
            assert isinstance(error, ErrorReply) and error.name == code
        async with connect(server.url) as ws3:
            with pytest.raises(ConnectionClosed) as closed:
                await ws3.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4290
        await ws2.send(protocol.ping_frame or "")  # the first two are still served
        assert protocol.parse(await ws2.recv(), 1.0) == [Ack(None, "CONNECTED")]
        assert protocol.parse(await ws2.recv(), 1.0) == [Ack(None, "PONG")]
