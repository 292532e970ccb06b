"""The exchange simulator, driven by real websockets clients over 127.0.0.1 (ports chosen by the OS).

The shapes it must reproduce come from the real frames in ``tests/data/`` (see the README there). Waiting
is always for an event or a condition with a deadline; a timeout on ``recv`` is only used to assert silence
(a stall, rate 0), never to let something else happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
from support.captures import FRAMES, RECORDINGS
from support.sim_client import decode_upbit, recv, silent, until_closed, upbit_request
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Frame, Opcode

from exchange_sim import ExchangeSimulator, RandomWalkBook, load_capture, parse_capture
from exchange_sim.replay import CaptureFormatError
from exchange_sim.upbit import UpbitRequestError, parse_request

UPBIT_CAPTURE = RECORDINGS / "upbit-2021-04-17.ws.txt"
BINANCE_CAPTURE = RECORDINGS / "binance-2021-10-12.ws.txt"
DECIMAL8 = re.compile(r"\d+\.\d{8}")
Book = tuple[list[tuple[float, float]], list[tuple[float, float]]]

SimFactory = Callable[..., Awaitable[ExchangeSimulator]]


# -- fixtures and helpers ------------------------------------------------------------------------------------


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulators with test-friendly defaults; all of them are stopped at the end of the test."""
    sims: list[ExchangeSimulator] = []

    async def make(**kwargs: Any) -> ExchangeSimulator:
        kwargs.setdefault("rate", 20.0)
        sim = ExchangeSimulator(**kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> ExchangeSimulator:
    return await make_sim()


def decode_binance(payload: str | bytes) -> tuple[str, int, Book]:
    obj = orjson.loads(payload)
    data = obj["data"]
    bids = [(float(p), float(q)) for p, q in data["bids"]]
    asks = [(float(p), float(q)) for p, q in data["asks"]]
    return obj["stream"], data["lastUpdateId"], (bids, asks)


def assert_sane_book(bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> None:
    assert bids and asks
    assert all(a[0] > b[0] for a, b in itertools.pairwise(bids)), "bids not best first"
    assert all(a[0] < b[0] for a, b in itertools.pairwise(asks)), "asks not best first"
    assert bids[0][0] < asks[0][0]
    assert all(q > 0 for _, q in bids + asks)


async def http_get(url: str) -> tuple[int, dict[str, Any]]:
    """A minimal HTTP/1.1 GET over asyncio streams: the control endpoint from 'another process'."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return int(head.split()[1]), orjson.loads(body)


async def upbit_client(sim: ExchangeSimulator, codes: list[str], fmt: str | None = None) -> ClientConnection:
    ws = await connect(sim.upbit_url)
    await ws.send(upbit_request(codes, fmt))
    return ws


async def binance_client(sim: ExchangeSimulator, *streams: str) -> ClientConnection:
    # max_queue=None: a test client that stops reading (to close) must not stop reading the close frame
    # behind the flood of a thousand streams, or close() waits for its 10 s timeout.
    return await connect(f"{sim.binance_url}/stream?streams={'/'.join(streams)}", max_queue=None)


async def inject(sim: ExchangeSimulator, via: str, fault: str, exchange: str, **params: Any) -> int:
    """Inject a fault through the in-process API or through the HTTP control endpoint."""
    if via == "http":
        query = urlencode({"exchange": exchange, **{k: v for k, v in params.items() if v is not None}})
        status, body = await http_get(f"{sim.control_url(exchange)}/{fault}?{query}")
        assert status == 200, body
        assert body["ok"] is True
        affected: int = body["affected"]
        return affected
    target = {k: params[k] for k in ("connection", "symbol") if k in params}
    if fault == "drop":
        return await sim.drop(exchange, **target)
    if fault == "stall":
        return await sim.stall(exchange, params.get("seconds"), **target)
    if fault == "resume":
        return await sim.resume(exchange, **target)
    if fault == "garbage":
        return await sim.send_garbage(exchange, **target)
    if fault == "error":
        return await sim.send_error(exchange, **target)
    if fault == "shutdown":
        return await sim.announce_shutdown(exchange, **target)
    raise AssertionError(fault)


async def client_for(sim: ExchangeSimulator, exchange: str) -> ClientConnection:
    if exchange == "upbit":
        ws = await upbit_client(sim, ["KRW-BTC"])
    else:
        ws = await binance_client(sim, "btcusdt@depth5@100ms")
    await recv(ws)  # subscribed and receiving
    return ws


# -- Upbit -------------------------------------------------------------------------------------------------


async def test_upbit_default_frames_snapshot_then_realtime_only_requested_codes(
    sim: ExchangeSimulator,
) -> None:
    reference = orjson.loads((FRAMES / "upbit-orderbook-default.json").read_bytes())
    ws = await upbit_client(sim, ["KRW-BTC", "KRW-ETH.5", "FOO", "krw-xrp"])
    seen: dict[str, list[str]] = {}
    async with asyncio.timeout(5):
        while min((len(v) for v in seen.values()), default=0) < 3 or len(seen) < 2:
            payload = await ws.recv()
            assert isinstance(payload, bytes), "Upbit book frames are binary"
            obj = orjson.loads(payload)
            assert obj.keys() == reference.keys()
            assert obj["orderbook_units"][0].keys() == reference["orderbook_units"][0].keys()
            book = decode_upbit(payload)
            assert book["code"] in ("KRW-BTC", "KRW-ETH"), "only the requested, well-formed codes"
            assert len(book["bids"]) == (30 if book["code"] == "KRW-BTC" else 5)  # Upbit's default: 30
            assert_sane_book(book["bids"], book["asks"])
            assert obj["total_ask_size"] == pytest.approx(sum(q for _, q in book["asks"]))
            seen.setdefault(book["code"], []).append(book["stream_type"])
    for types in seen.values():
        assert types[0] == "SNAPSHOT"
        assert set(types[1:]) == {"REALTIME"}
    await ws.close()


@pytest.mark.parametrize("fmt", ["SIMPLE", "JSON_LIST", "SIMPLE_LIST"])
async def test_upbit_formats(sim: ExchangeSimulator, fmt: str) -> None:
    reference = orjson.loads((FRAMES / "upbit-orderbook-simple-list.json").read_bytes())[0]
    ws = await upbit_client(sim, ["KRW-BTC.1"], fmt)
    payload = await recv(ws)
    assert isinstance(payload, bytes)
    obj = orjson.loads(payload)
    assert isinstance(obj, list) == fmt.endswith("_LIST")
    inner = obj[0] if isinstance(obj, list) else obj
    if fmt.startswith("SIMPLE"):
        assert inner.keys() == reference.keys()
        assert inner["obu"][0].keys() == reference["obu"][0].keys()
    else:
        assert "orderbook_units" in inner
    book = decode_upbit(payload)
    assert (book["code"], book["stream_type"], len(book["asks"])) == ("KRW-BTC", "SNAPSHOT", 1)
    await ws.close()


async def test_upbit_new_request_replaces_subscription(sim: ExchangeSimulator) -> None:
    ws = await upbit_client(sim, ["KRW-BTC"])
    assert decode_upbit(await recv(ws))["code"] == "KRW-BTC"
    await ws.send(upbit_request(["KRW-ETH"]))
    async with asyncio.timeout(5):
        while (book := decode_upbit(await ws.recv()))["code"] != "KRW-ETH":
            assert book["code"] == "KRW-BTC"  # frames queued before the new request
    assert book["stream_type"] == "SNAPSHOT"
    for _ in range(5):
        assert decode_upbit(await recv(ws))["code"] == "KRW-ETH"
    await ws.close()


async def test_upbit_only_snapshot_and_only_realtime(sim: ExchangeSimulator) -> None:
    ws = await connect(sim.upbit_url)
    await ws.send(upbit_request(["KRW-BTC"], is_only_snapshot=True))
    assert decode_upbit(await recv(ws))["stream_type"] == "SNAPSHOT"
    assert await silent(ws, 0.3), "is_only_snapshot: nothing after the snapshot"
    await ws.send(upbit_request(["KRW-BTC"], isOnlyRealtime=True))
    assert decode_upbit(await recv(ws))["stream_type"] == "REALTIME"
    await ws.close()


async def test_upbit_ping_gets_status_up(sim: ExchangeSimulator) -> None:
    expected = (FRAMES / "upbit-errors.txt").read_text(encoding="utf-8").splitlines()[-1]
    async with connect(sim.upbit_url) as ws:  # no subscription: the only frame is the reply
        await ws.send("PING")
        reply = await recv(ws)
        assert reply == expected == '{"status":"UP"}'
        assert isinstance(reply, str), "the PING reply is a text frame"


@pytest.mark.parametrize(
    ("request_text", "error_name"),
    [
        ("not json", "WRONG_FORMAT"),
        ('{"ticket":"x"}', "WRONG_FORMAT"),
        ('[{"type":"orderbook","codes":["KRW-BTC"]}]', "NO_TICKET"),
        ('[{"ticket":"x"},{"type":"nope","codes":["KRW-BTC"]}]', "INVALID_PARAM"),
        ('[{"ticket":"x"},{"type":"orderbook","codes":["KRW-BTC"]},{"format":"XML"}]', "WRONG_FORMAT"),
        ('[{"ticket":"x"},{"type":"orderbook","codes":["KRW-BTC.x"]}]', "INVALID_PARAM"),
        ('[{"ticket":"x"},{"type":"orderbook"}]', "NO_CODES"),
        ('[{"ticket":"x"}]', "NO_TYPE"),
    ],
)
async def test_upbit_bad_request_gets_error_then_close(
    sim: ExchangeSimulator, request_text: str, error_name: str
) -> None:
    ws = await connect(sim.upbit_url)
    await ws.send(request_text)
    reply = orjson.loads(await recv(ws))
    assert reply["error"]["name"] == error_name
    assert reply["error"]["message"]
    closed = await until_closed(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1000


async def test_upbit_wrong_path_is_rejected(sim: ExchangeSimulator) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.upbit_url.replace("/websocket/v1", "/nope"))
    assert info.value.response.status_code == 404


# -- Binance -----------------------------------------------------------------------------------------------


async def test_binance_combined_stream_frames(sim: ExchangeSimulator) -> None:
    reference = orjson.loads((FRAMES / "binance-partial-depth-combined.txt").read_text().splitlines()[0])
    streams = {"btcusdt@depth20@100ms": 20, "ethusdt@depth5": 5, "bnbbtc@depth10@1000ms": 10}
    ws = await binance_client(sim, *streams)
    last_id: dict[str, int] = {}
    counts: dict[str, int] = dict.fromkeys(streams, 0)
    async with asyncio.timeout(5):
        while min(counts.values()) < 4:
            payload = await ws.recv()
            assert isinstance(payload, str), "Binance frames are text"
            obj = orjson.loads(payload)
            assert obj.keys() == reference.keys()
            assert obj["data"].keys() == reference["data"].keys()
            stream, update_id, (bids, asks) = decode_binance(payload)
            assert update_id > last_id.get(stream, 0), "lastUpdateId strictly increasing"
            last_id[stream] = update_id
            counts[stream] += 1
            raw = obj["data"]["bids"] + obj["data"]["asks"]
            assert all(isinstance(x, str) and DECIMAL8.fullmatch(x) for level in raw for x in level)
            assert len(bids) == len(asks) == streams[stream]
            assert_sane_book(bids, asks)
    await ws.close()


async def test_binance_raw_ws_endpoint_sends_bare_payloads(sim: ExchangeSimulator) -> None:
    async with connect(f"{sim.binance_url}/ws/btcusdt@depth5") as ws:
        obj = orjson.loads(await recv(ws))
        assert obj.keys() == {"lastUpdateId", "bids", "asks"}


async def test_binance_control_messages(sim: ExchangeSimulator) -> None:
    control = [orjson.loads(line) for line in (FRAMES / "binance-control.txt").read_text().splitlines()]
    async with connect(f"{sim.binance_url}/stream") as ws:

        async def reply() -> Any:
            async with asyncio.timeout(5):
                while True:  # skip book frames
                    obj = orjson.loads(await ws.recv())
                    if "stream" not in obj:
                        return obj

        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@depth20@100ms"],"id":1}')
        assert await reply() == control[0] == {"result": None, "id": 1}
        stream, _, _ = decode_binance(await recv(ws))
        assert stream == "btcusdt@depth20@100ms"
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await reply() == control[1]
        await ws.send('{"method":"FOO","params":[],"id":20}')
        assert await reply() == control[2]
        await ws.send("{not json")
        bad = await reply()
        assert bad.keys() == control[3].keys() and bad["code"] == 3 and bad["id"] is None
        assert bad["msg"].startswith("Invalid JSON: ")

    async with connect(f"{sim.binance_url}/stream?streams=btcusdt@depth5") as ws:
        await ws.send('{"method":"UNSUBSCRIBE","params":["btcusdt@depth5"],"id":7}')
        await ws.send('{"method":"SUBSCRIBE","params":["BTCUSDT@DEPTH5"],"id":8}')
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":9}')
        replies: list[Any] = []
        async with asyncio.timeout(5):
            while len(replies) < 3:
                obj = orjson.loads(await ws.recv())
                if "stream" not in obj:
                    replies.append(obj)
        assert replies[0] == {"result": None, "id": 7}
        assert replies[1]["error"]["code"] == 2 and replies[1]["id"] == 8
        assert replies[2] == {"result": [], "id": 9}


async def test_binance_stream_limit(make_sim: SimFactory) -> None:
    sim = await make_sim(max_streams=3)
    with pytest.raises(InvalidStatus) as info:
        await binance_client(sim, "a@depth5", "b@depth5", "c@depth5", "d@depth5")
    assert info.value.response.status_code == 400
    async with await binance_client(sim, "a@depth5", "b@depth5", "c@depth5") as ws:
        await ws.send('{"method":"SUBSCRIBE","params":["d@depth5"],"id":1}')
        async with asyncio.timeout(5):
            while "stream" in (obj := orjson.loads(await ws.recv())):
                pass
        assert obj["error"]["code"] == 2 and obj["id"] == 1
        assert "too many streams" in obj["error"]["msg"]


async def test_binance_1024_streams_in_the_url(sim: ExchangeSimulator) -> None:
    """1024 streams in the URL (~17 KB) are accepted; 1025 are refused with HTTP 400."""
    names = [f"s{i:04d}usdt@depth5" for i in range(1025)]
    with pytest.raises(InvalidStatus) as info:
        await binance_client(sim, *names)
    assert info.value.response.status_code == 400
    async with await binance_client(sim, *names[:1024]) as ws:
        await recv(ws)
        await sim.wait_for_subscribers("binance", "S1023USDT")


async def test_binance_message_rate_limit_drops_the_connection(sim: ExchangeSimulator) -> None:
    async with connect(f"{sim.binance_url}/stream") as ok:
        for i in range(5):
            await ok.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
        for i in range(5):
            assert orjson.loads(await recv(ok)) == {"result": [], "id": i}
    async with connect(f"{sim.binance_url}/stream") as ws:
        for i in range(6):
            await ws.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert sim.counters("binance")["rate_limit_drops"] == 1


async def test_binance_message_rate_limit_is_configurable(make_sim: SimFactory) -> None:
    sim = await make_sim(max_incoming_per_second=None)
    async with connect(f"{sim.binance_url}/stream") as ws:
        for i in range(20):
            await ws.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
        for i in range(20):
            assert orjson.loads(await recv(ws))["id"] == i


class PingCountingConnection(ClientConnection):
    """A client connection that counts the server's pings (websockets answers them by itself)."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


async def test_binance_server_pings_and_drops_clients_that_do_not_answer(make_sim: SimFactory) -> None:
    sim = await make_sim(ping_interval=0.05, ping_timeout=0.4)
    async with connect(f"{sim.binance_url}/stream", create_connection=PingCountingConnection) as ws:
        assert isinstance(ws, PingCountingConnection)
        await sim.server("binance").wait_until(lambda: ws.pings >= 3, timeout=5)
    async with connect(f"{sim.binance_url}/stream") as ws:
        await sim.wait_for_connections("binance", 1)
        ws.transport.pause_reading()  # a client that reads nothing answers no ping
        await sim.server("binance").wait_until(lambda: not sim.server("binance").sessions, timeout=5)
        # Resuming would make the client answer the backlog of pings into a reset socket (asyncio logs that).
        ws.transport.abort()
    assert sim.counters("binance")["ping_timeout_drops"] == 1


# -- truth, rate, replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["upbit", "binance"])
async def test_last_sent_equals_the_last_frame_received(sim: ExchangeSimulator, exchange: str) -> None:
    if exchange == "upbit":
        ws = await upbit_client(sim, ["KRW-BTC", "KRW-ETH.5"], "SIMPLE")
        symbols = ["KRW-BTC", "KRW-ETH"]
    else:
        ws = await binance_client(sim, "btcusdt@depth20@100ms", "ethusdt@depth5")
        symbols = ["BTCUSDT", "ETHUSDT"]
    received = 0
    last: dict[str, tuple[int, Book]] = {}

    async def read_one() -> None:
        nonlocal received
        payload = await recv(ws)
        received += 1
        if exchange == "upbit":
            book = decode_upbit(payload)
            last[book["code"]] = (book["ts"], (book["bids"], book["asks"]))
        else:
            stream, update_id, levels = decode_binance(payload)
            last[stream.partition("@")[0].upper()] = (update_id, levels)

    for _ in range(10):
        await read_one()
    sim.set_rate(0)  # the truth stops moving
    server = sim.server(exchange)
    (session,) = server.sessions.values()
    await server.wait_until(lambda: not session.outbox, timeout=5)
    async with asyncio.timeout(5):
        while received < session.messages_sent:  # everything the server sent, and nothing more
            await read_one()
    for symbol in symbols:
        truth = sim.last_sent[(exchange, symbol)]
        assert truth.symbol == symbol and truth.exchange == exchange
        assert last[symbol] == (truth.xid, (truth.bids, truth.asks))
        if exchange == "upbit":
            assert truth.xid is not None and truth.timestamp == truth.xid / 1000
    await ws.close()


@pytest.mark.parametrize("exchange", ["upbit", "binance"])
async def test_rate_is_roughly_honoured(make_sim: SimFactory, exchange: str) -> None:
    sim = await make_sim(rate=25.0)
    if exchange == "upbit":
        ws = await upbit_client(sim, ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"])
    else:
        ws = await binance_client(sim, "btcusdt@depth5", "ethusdt@depth5", "xrpusdt@depth5", "solusdt@depth5")
    for _ in range(4):
        await recv(ws)  # the initial books
    loop = asyncio.get_running_loop()
    count, deadline = 0, loop.time() + 1.0
    while (left := deadline - loop.time()) > 0:
        try:
            await recv(ws, left)
        except TimeoutError:
            break
        count += 1
    assert 50 <= count <= 150, f"{count} frames in 1 s, expected about 100"
    await ws.close()


async def test_rate_zero_sends_only_the_initial_book_and_rate_can_change(make_sim: SimFactory) -> None:
    sim = await make_sim(rate=0)
    ws = await binance_client(sim, "btcusdt@depth5")
    first = decode_binance(await recv(ws))
    assert await silent(ws, 0.3)
    status, body = await http_get(f"{sim.control_url('binance')}/rate?value=50")
    assert (status, body["rate"]) == (200, 50.0)
    assert sim.binance.rate == sim.upbit.rate == 50.0
    second = decode_binance(await recv(ws))
    assert second[1] > first[1]
    await ws.close()


async def test_replay_sends_the_capture_byte_for_byte(make_sim: SimFactory) -> None:
    capture = load_capture(UPBIT_CAPTURE)
    assert len(capture) == 449 and all(isinstance(f.payload, bytes) for f in capture)
    sim = await make_sim(replay_upbit=UPBIT_CAPTURE, replay_speed=None)
    ws = await upbit_client(sim, ["KRW-BTC"])  # the replay starts with the first request
    received = [await recv(ws) for _ in capture]
    assert received == [f.payload for f in capture]
    last_lamb = [f.payload for f in capture if b'"orderbook","cd":"KRW-LAMB"' in f.payload][-1]
    book = decode_upbit(last_lamb)
    truth = sim.last_sent[("upbit", "KRW-LAMB")]
    assert (truth.bids, truth.asks, truth.xid) == (book["bids"], book["asks"], book["ts"])
    assert ("upbit", "KRW-BTC") not in sim.last_sent, "a replaying exchange generates nothing"
    await ws.close()


async def test_replay_keeps_the_recorded_pace(make_sim: SimFactory) -> None:
    capture = load_capture(UPBIT_CAPTURE)
    speed = 60.0
    expected = (capture[-1].ts - capture[0].ts) / speed  # about 0.5 s
    sim = await make_sim(upbit_port=0, binance_port=None)
    sim.set_replay("upbit", capture, speed=speed)
    ws = await upbit_client(sim, ["KRW-LAMB"])
    loop = asyncio.get_running_loop()
    await recv(ws)
    start = loop.time()
    for _ in capture[1:]:
        await recv(ws)
    elapsed = loop.time() - start
    assert expected * 0.8 <= elapsed <= expected + 3.0
    await ws.close()


async def test_replay_binance_text_frames(make_sim: SimFactory) -> None:
    capture = load_capture(BINANCE_CAPTURE)
    sim = await make_sim(replay_binance=BINANCE_CAPTURE, replay_speed=None)
    async with await binance_client(sim, "nknusdt@depth@100ms") as ws:
        received = [await recv(ws) for _ in capture]
    assert received == [f.payload for f in capture]
    assert all(isinstance(r, str) for r in received)


# -- faults --------------------------------------------------------------------------------------------------

VIAS = ["api", "http"]
EXCHANGES = ["upbit", "binance"]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_fault_drop(sim: ExchangeSimulator, via: str, exchange: str) -> None:
    ws = await client_for(sim, exchange)
    assert await inject(sim, via, "drop", exchange) == 1
    closed = await until_closed(ws)
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None, "dropped without a close frame"
    assert sim.counters(exchange)["connections_current"] == 0


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_fault_stall_until_resumed(sim: ExchangeSimulator, via: str, exchange: str) -> None:
    ws = await client_for(sim, exchange)
    assert await inject(sim, via, "stall", exchange) == 1
    pong = asyncio.ensure_future(await ws.ping())  # a Future, typed as Awaitable
    if exchange == "upbit":
        await ws.send("PING")
    # Frames already on the wire still arrive; then nothing, and the ping goes unanswered.
    async with asyncio.timeout(5):
        while not await silent(ws, 0.4):
            pass
    assert not pong.done(), "a stalled server answers no ping"
    assert ws.state.name == "OPEN"
    assert await inject(sim, via, "resume", exchange) == 1
    async with asyncio.timeout(5):
        await pong
    payload = await recv(ws)
    if exchange == "upbit":
        # the PING sent during the stall is answered now (a book the pump sends at once may come first)
        seen = [payload]
        while seen[-1] != '{"status":"UP"}' and len(seen) < 50:
            seen.append(await recv(ws))
        assert seen[-1] == '{"status":"UP"}', seen
        payload = await recv(ws)
    assert orjson.loads(payload)
    await ws.close()


async def test_fault_stall_for_some_seconds_ends_by_itself(sim: ExchangeSimulator) -> None:
    ws = await client_for(sim, "binance")
    server = sim.server("binance")
    assert await sim.stall("binance", seconds=0.3) == 1
    (session,) = server.sessions.values()
    assert session.stalled
    await server.wait_until(lambda: not session.stalled, timeout=5)
    await recv(ws)
    await ws.close()


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_fault_garbage(sim: ExchangeSimulator, via: str, exchange: str) -> None:
    ws = await client_for(sim, exchange)
    assert await inject(sim, via, "garbage", exchange) == 1
    async with asyncio.timeout(5):
        while True:
            payload = await ws.recv()
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                break
    assert isinstance(payload, bytes if exchange == "upbit" else str)
    await recv(ws)  # still serving
    await ws.close()


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_fault_error(sim: ExchangeSimulator, via: str, exchange: str) -> None:
    ws = await client_for(sim, exchange)
    assert await inject(sim, via, "error", exchange) == 1
    async with asyncio.timeout(5):
        while "error" not in (obj := orjson.loads(await ws.recv())):
            pass
    if exchange == "upbit":
        assert obj["error"].keys() == {"name", "message"}
        closed = await until_closed(ws)  # Upbit closes after an error
        assert closed.rcvd is not None
    else:
        assert obj["error"].keys() == {"code", "msg"} and obj["id"] is None
        decode_binance(await recv(ws))  # Binance keeps the connection
        await ws.close()


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_fault_shutdown(sim: ExchangeSimulator, via: str, exchange: str) -> None:
    reference = orjson.loads((FRAMES / "binance-control.txt").read_text().splitlines()[-1])
    ws = await client_for(sim, exchange)
    assert await inject(sim, via, "shutdown", exchange) == 1
    if exchange == "upbit":
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1012
        return
    async with asyncio.timeout(5):
        while (obj := orjson.loads(await ws.recv())).get("stream") != "!serverShutdown":
            pass
    assert obj.keys() == reference.keys() and obj["data"].keys() == reference["data"].keys()
    assert obj["data"]["e"] == "serverShutdown" and isinstance(obj["data"]["E"], int)
    decode_binance(await recv(ws))  # keeps serving until dropped
    await ws.close()


@pytest.mark.parametrize("via", VIAS)
async def test_faults_target_one_symbol_or_one_connection(sim: ExchangeSimulator, via: str) -> None:
    btc = await binance_client(sim, "btcusdt@depth5")
    await sim.wait_for_connections("binance", 1)
    (btc_id,) = sim.connection_ids("binance")
    eth = await binance_client(sim, "ethusdt@depth5")
    xrp = await binance_client(sim, "xrpusdt@depth5")
    await sim.wait_for_connections("binance", 3)
    assert await inject(sim, via, "drop", "binance", symbol="ETHUSDT") == 1
    await until_closed(eth)
    assert await inject(sim, via, "drop", "binance", connection=btc_id) == 1
    await until_closed(btc)
    assert decode_binance(await recv(xrp))[0] == "xrpusdt@depth5"
    assert sim.connection_ids("binance") != [btc_id]
    assert await inject(sim, via, "drop", "binance", symbol="DOGEUSDT") == 0
    await xrp.close()


async def test_http_control_state_errors_and_large_answers(sim: ExchangeSimulator) -> None:
    names = [f"s{i:03d}usdt@depth20" for i in range(300)]
    async with await binance_client(sim, *names) as ws:
        await sim.wait_for_subscribers("binance", "S299USDT")
        await recv(ws)
        status, state = await http_get(f"{sim.control_url('binance')}/state")
        assert status == 200
        binance = state["binance"]
        assert binance["counters"]["connections_current"] == 1
        assert binance["counters"]["subscriptions"] == 300
        assert len(binance["connections"]) == 1
        assert len(binance["last_sent"]) >= 1  # ~300 books of 40 levels: a response of several 100 KB
        status, small = await http_get(f"{sim.control_url('upbit')}/state?truth=0")
        assert status == 200 and "last_sent" not in small["upbit"]
    status, body = await http_get(f"{sim.control_url('upbit')}/nope")
    assert status == 404 and body["ok"] is False
    status, body = await http_get(f"{sim.control_url('upbit')}/stall?seconds=abc")
    assert status == 400 and "seconds" in body["error"]
    status, body = await http_get(f"{sim.control_url('upbit')}/drop?exchange=kraken")
    assert status == 400
    status, body = await http_get(f"{sim.control_url('upbit')}/rate?value=-1")
    assert status == 400
    status, body = await http_get(f"{sim.control_url('binance')}/help")
    assert status == 200 and "drop" in body["endpoints"]


# -- lifecycle ------------------------------------------------------------------------------------------------


async def test_stop_closes_connections_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    sim = ExchangeSimulator(rate=50.0, ping_interval=0.05)
    await sim.start()
    up = await connect(sim.upbit_url, ping_interval=None)
    await up.send(upbit_request(["KRW-BTC"]))
    await recv(up)
    bn = await connect(f"{sim.binance_url}/stream?streams=btcusdt@depth5", ping_interval=None)
    await recv(bn)
    stalled = await connect(f"{sim.binance_url}/stream?streams=ethusdt@depth5", ping_interval=None)
    await recv(stalled)
    await sim.wait_for_connections("binance", 2)
    await sim.stall("binance", connection=max(sim.connection_ids("binance")))
    sim.set_replay("upbit", UPBIT_CAPTURE, speed=1.0)  # a replay task is running too
    async with asyncio.timeout(10):
        await sim.stop()
    for ws in (up, bn, stalled):
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert not sim.server("upbit").sessions and not sim.server("binance").sessions
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    await sim.stop()  # idempotent


async def test_ports_urls_and_context_manager() -> None:
    async with ExchangeSimulator(upbit_port=0, binance_port=None) as sim:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/websocket/v1", sim.upbit_url)
        assert sim.control_url("upbit") == sim.upbit_url.replace("ws://", "http://").replace(
            "/websocket/v1", "/_sim"
        )
        with pytest.raises(ValueError, match="binance"):
            _ = sim.binance_url
    with pytest.raises(ValueError, match="at least one exchange"):
        ExchangeSimulator(upbit_port=None, binance_port=None)


# -- pure parts: books, requests, captures ---------------------------------------------------------------


def test_books_are_reproducible_and_plausible() -> None:
    a = RandomWalkBook("binance", "BTCUSDT", depth=20, seed=7, with_strings=True)
    b = RandomWalkBook("binance", "BTCUSDT", depth=20, seed=7, with_strings=True)
    c = RandomWalkBook("binance", "BTCUSDT", depth=20, seed=8, with_strings=True)
    last_id, moved = a.update_id, set()
    for i in range(3000):
        a.step(now_ms=1_000 + i)
        b.step(now_ms=1_000 + i)
        c.step(now_ms=1_000 + i)
        assert a.update_id > last_id
        last_id = a.update_id
        moved.add(a.best_bid())
        assert len(a.bids) == len(a.asks) == 20
        assert_sane_book(a.bids, a.asks)
    assert (a.bids, a.asks, a.update_id) == (b.bids, b.asks, b.update_id)
    assert (a.bids, a.asks) != (c.bids, c.asks)
    assert len(moved) > 5, "the mid price walks"
    assert 50_000 < a.best_bid() < 150_000, "BTC looks like BTC"
    for (p, q), (ps, qs) in zip(a.bids + a.asks, a.bid_strs + a.ask_strs, strict=True):
        assert DECIMAL8.fullmatch(ps) and DECIMAL8.fullmatch(qs)
        assert (float(ps), float(qs)) == (p, q), "the truth is exactly what a client parses"
        assert round(p * 100) == pytest.approx(p * 100), "prices on the 0.01 tick"


def test_upbit_books_use_krw_ticks_and_monotonic_timestamps() -> None:
    book = RandomWalkBook("upbit", "KRW-BTC", depth=30, seed=0)
    ts = book.timestamp_ms
    for _ in range(500):
        book.step(now_ms=0)  # a clock going backwards does not move timestamps back
        assert book.timestamp_ms == ts
    assert all(p % 1000 == 0 for p, _ in book.bids + book.asks)
    assert 50_000_000 < book.best_bid() < 300_000_000


def test_upbit_request_parsing() -> None:
    request = parse_request(
        '[{"ticket":"t"},{"type":"trade","codes":["KRW-BTC"]},'
        '{"type":"orderbook","codes":["KRW-BTC.5","KRW-ETH","x-y"],"isOnlyRealtime":true},{"format":"SIMPLE"}]',
        default_units=15,
    )
    subs = {s.name: s for s in request.subscriptions}
    assert request.format == "SIMPLE"
    assert (subs["KRW-BTC"].units, subs["KRW-ETH"].units) == (5, 15)
    assert subs["KRW-BTC"].only_realtime
    assert not subs["x-y"].generated, "not a code the simulator knows: no frames"
    with pytest.raises(UpbitRequestError) as info:
        parse_request(b'[{"ticket":"t"},{"type":"orderbook","codes":[1]}]')
    assert info.value.name == "INVALID_PARAM"


def test_capture_parsing() -> None:
    frames = parse_capture(
        [
            "wss://x <-> 1.0",
            'wss://x <- 1.5: [{"ticket":"t"}]',
            "2.0: b'{\"a\":1}'",
            '3.0: {"b":2}',
            "",
        ]
    )
    assert [(f.ts, f.payload) for f in frames] == [(2.0, b'{"a":1}'), (3.0, '{"b":2}')]
    with pytest.raises(CaptureFormatError):
        parse_capture(["garbage line"])


@pytest.mark.parametrize(
    ("code", "units"), [("KRW-BTC.1", 1), ("KRW-BTC.15", 15), ("KRW-BTC.7", 30), ("KRW-BTC.40", 30)]
)
async def test_upbit_sends_the_counts_it_accepts_and_30_for_any_other(
    sim: ExchangeSimulator, code: str, units: int
) -> None:
    """Since 2025-07-02 Upbit accepts 1, 5, 15 or 30 units and answers any other count with 30, no error."""
    ws = await upbit_client(sim, [code])
    async with asyncio.timeout(5):
        book = decode_upbit(await ws.recv())
    assert len(book["bids"]) == len(book["asks"]) == units
    await ws.close()
