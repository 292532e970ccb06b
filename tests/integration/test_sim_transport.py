"""The simulator's websockets internals (`exchange_sim.transport`) do what they are there for.

Each would fail silently after a websockets upgrade (the simulator would still work, slower or without its
rate limit): pings are counted like messages by the incoming-frame gate (`process_event`), and a batch of
frames goes out in one transport write (`send_frames` + `send_data`).
"""

from __future__ import annotations

from pathlib import Path

import websockets
from support.pins import installed_within_pin
from support.sim_client import recv, until_closed, upbit_request
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from exchange_sim import ExchangeSimulator
from exchange_sim.transport import SimConnection

ROOT = Path(__file__).resolve().parents[2]


def test_pinned_websockets_is_the_one_installed() -> None:
    inside, spec = installed_within_pin("websockets", websockets.__version__)
    assert inside, f"websockets {websockets.__version__} outside the pin {spec}: re-check the fast paths"
    # the overridden methods still exist on the base class, so the overrides are still called
    assert callable(ServerConnection.process_event) and callable(ServerConnection.send_data)
    assert SimConnection.process_event is not ServerConnection.process_event


async def test_pings_count_as_incoming_messages() -> None:
    """Binance counts pings and pongs too; websockets answers pings itself, so only process_event sees them."""
    async with ExchangeSimulator(rate=0.0, ping_interval=None, max_incoming_per_second=5.0) as sim:
        async with connect(f"{sim.binance_url}/stream", ping_interval=None) as ws:
            for _ in range(3):
                await (await ws.ping())  # answered: under the limit
            session = next(iter(sim.binance.sessions.values()))
            assert len(session.ws.sim_incoming) == 3
            for _ in range(3):
                await ws.ping()
            closed = await until_closed(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1008
        assert sim.counters("binance")["rate_limit_drops"] == 1


async def test_a_batch_of_frames_goes_out_in_few_writes() -> None:
    async with ExchangeSimulator(rate=0.0, ping_interval=None) as sim:
        sim.set_replay("upbit", "tests/data/recordings/upbit-2021-04-17.ws.txt", speed=None)
        async with connect(sim.upbit_url) as ws:
            await ws.send(upbit_request(["KRW-BTC"]))
            for _ in range(449):
                await recv(ws)
            (session,) = sim.upbit.sessions.values()
            sent = session.messages_sent
            assert sent >= 449
            writes = session.ws.sim_writes  # counted by the override: 0 means it is no longer called
            assert 0 < writes < sent / 4, f"{writes} writes for {sent} frames"
