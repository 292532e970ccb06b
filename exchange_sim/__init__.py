"""A local Upbit + Binance WebSocket server, so feeders, tests, benchmarks and demos run without internet.

It speaks both exchanges' market-data protocols as the captures in ``tests/data/`` (frames/, recordings/) show them (Upbit's
request array and binary frames in four formats, Binance's combined streams and JSON control messages),
generates random-walk order books at a chosen rate, replays recorded captures, injects faults on command,
and remembers what it sent last for every symbol, so a test can compare what reached Redis with the truth.

API
---
::

    from exchange_sim import ExchangeSimulator

    async with ExchangeSimulator(
        host="127.0.0.1",
        upbit_port=0,               # 0: the OS picks a free port; None: no Upbit server
        binance_port=0,
        rate=10.0,                  # updates per second per subscribed symbol; 0: only the initial book
        levels=30,                  # Upbit units per frame without a CODE.N suffix (Upbit's default since 2025-05)
        seed=0,                     # same seed, same walk per symbol (independent of other symbols)
        ping_interval=20.0,         # Binance server pings; None: none
        ping_timeout=60.0,          # Binance drops a client silent for this long
        tick_interval=0.01,         # the pump's period; frames due within a tick are sent together
        max_incoming_per_second=5.0,  # Binance's incoming message limit; None: unlimited
        max_streams=1024,           # Binance streams per connection
        binance_cadence=True,       # unchanged partial books pushed again every 100 ms / 1 s, as Binance does
        max_outbox=100_000,         # frames queued for one client before it is dropped as a slow consumer
        compression=False,          # permessage-deflate (off: it costs more CPU than everything else)
        close_timeout=2.0,          # closing handshake timeout, e.g. in stop()
        replay_upbit=None,          # a capture file (or parsed frames) to replay instead of generating
        replay_binance=None,
        replay_speed=1.0,           # 1.0: recorded pace; None: as fast as the client reads
        replay_loop=False,
    ) as sim:
        sim.upbit_url               # "ws://127.0.0.1:PORT/websocket/v1"
        sim.binance_url             # "ws://127.0.0.1:PORT"  (append /stream?streams=btcusdt@depth20@100ms/...)
        sim.control_url("binance")  # "http://127.0.0.1:PORT/_sim"

        await sim.wait_for_connections("upbit", n=1, timeout=5.0)
        await sim.wait_for_subscribers("binance", "BTCUSDT", n=1, timeout=5.0)

        sim.last_sent[("upbit", "KRW-BTC")]   # OrderBookSnapshot(symbol, timestamp, bids, asks, exchange, xid)
        sim.counters("binance")     # frames_sent, book_frames, updates, connections_opened,
                                    # connections_current, subscriptions, rate_limit_drops, ...
        sim.state()                 # everything above as JSON-able dicts, per exchange
        sim.connection_ids("upbit")

        # Faults: one exchange; all its connections, or connection=ID, and/or symbol=SYM's connections.
        # Each returns how many connections it hit.
        await sim.drop("upbit")                       # TCP abort, no close frame; returns when they are gone
        await sim.stall("binance", seconds=5)         # no frames, no reading (pings unanswered), no close
        await sim.resume("binance")
        await sim.send_garbage("upbit", symbol="KRW-BTC")   # truncated JSON (binary/text as the exchange)
        await sim.send_error("upbit", name="INVALID_PARAM", message="...")  # then close, as Upbit does
        await sim.send_error("binance", code=2, message="...")             # connection stays open
        await sim.announce_shutdown("binance")        # !serverShutdown event, keeps serving
        await sim.announce_shutdown("upbit")          # Upbit has no such event: close 1012

        sim.set_rate(20.0)                            # all exchanges, or set_rate(20.0, "upbit")
        sim.set_replay("upbit", "tests/data/recordings/upbit-2021-04-17.ws.txt", speed=None)

``start()`` / ``stop()`` do what ``async with`` does; after ``stop()`` no task, timer or connection of the
simulator is left. ``sim.upbit`` / ``sim.binance`` are the `ExchangeServer` objects for finer control.

Truth (``last_sent``)
---------------------
Key ``(exchange, symbol)`` with the symbol as the feeder stores it (``"KRW-BTC"``, ``"BTCUSDT"``). The value is
the book of the last frame queued to any connection for that symbol: levels best first as ``(price, size)``
floats exactly as a client parses them, ``xid`` = Upbit's ``timestamp`` (ms) or Binance's ``lastUpdateId``,
``timestamp`` = Upbit's timestamp in seconds, or when the Binance frame was encoded (the payload has no event
time). If connections ask for different depths of one symbol (``CODE.5`` and ``CODE.15``, ``@depth5`` and
``@depth20``), it is the last variant encoded.

HTTP control
------------
Plain HTTP ``GET`` on each exchange's own WebSocket port (websockets' ``process_request`` hook); JSON answers.
``exchange`` defaults to the port's exchange; ``connection=ID`` and ``symbol=SYM`` narrow the target::

    GET /_sim/state[?truth=0]        counters, connections, last_sent (truth=0: without the books)
    GET /_sim/drop                   GET /_sim/stall?seconds=5     GET /_sim/resume
    GET /_sim/garbage[?payload=..]   GET /_sim/error[?name=..|code=..&message=..]
    GET /_sim/shutdown               GET /_sim/rate?value=20[&exchange=upbit]   (default: all exchanges)
    GET /_sim/health                 GET /_sim/help

Protocol details and the choices where the exchanges' behaviour is not documented are in `exchange_sim.upbit`
and `exchange_sim.binance`. Command line: ``md-sim`` / ``python -m exchange_sim`` (`exchange_sim.cli`).
"""

from exchange_sim.binance import BinanceServer
from exchange_sim.books import RandomWalkBook
from exchange_sim.replay import CapturedFrame, Truth, load_capture, parse_capture, same_book
from exchange_sim.server import ExchangeServer
from exchange_sim.simulator import EXCHANGES, ExchangeSimulator
from exchange_sim.upbit import UpbitServer

__all__ = [
    "EXCHANGES",
    "BinanceServer",
    "CapturedFrame",
    "ExchangeServer",
    "ExchangeSimulator",
    "RandomWalkBook",
    "Truth",
    "UpbitServer",
    "load_capture",
    "parse_capture",
    "same_book",
]
