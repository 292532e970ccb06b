"""`ExchangeSimulator`: the exchanges' servers behind one object, with faults, truth and HTTP control."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from client.models import OrderBookSnapshot
from exchange_sim import control
from exchange_sim.binance import MAX_STREAMS, BinanceServer
from exchange_sim.bithumb import BithumbServer
from exchange_sim.bybit import BybitServer
from exchange_sim.coinone import CoinoneServer
from exchange_sim.okx import OkxServer
from exchange_sim.replay import CapturedFrame, load_capture
from exchange_sim.server import ExchangeServer
from exchange_sim.upbit import UpbitServer

EXCHANGES = ("upbit", "binance", "bithumb", "coinone", "bybit", "okx")
_MORE_SERVERS: dict[str, type[ExchangeServer[Any]]] = {
    "bithumb": BithumbServer,
    "coinone": CoinoneServer,
    "bybit": BybitServer,
    "okx": OkxServer,
}
ReplaySource = str | Path | list[CapturedFrame]


class ExchangeSimulator:
    """A local market-data server of every exchange the feeder speaks, for tests, benchmarks and the demo.

    A port of ``None`` leaves that exchange out; ``0`` lets the OS choose (read it back from the URLs). Upbit
    and Binance run unless told otherwise; Bithumb, Coinone, Bybit and OKX only when given a port.
    `options` passes an exchange's own server options (``{"okx": {"checksum": True}}``).
    See the package docstring (`exchange_sim`) for the full API and protocol notes.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        upbit_port: int | None = 0,
        binance_port: int | None = 0,
        *,
        rate: float = 10.0,
        levels: int = 30,
        seed: int = 0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        tick_interval: float = 0.01,
        max_incoming_per_second: float | None = 5.0,
        max_streams: int = MAX_STREAMS,
        close_timeout: float = 2.0,
        max_outbox: int = 100_000,
        compression: bool = False,
        replay_upbit: ReplaySource | None = None,
        replay_binance: ReplaySource | None = None,
        replay_speed: float | None = 1.0,
        replay_loop: bool = False,
        http_control: bool = True,
        binance_cadence: bool = True,
        bithumb_port: int | None = None,
        coinone_port: int | None = None,
        bybit_port: int | None = None,
        okx_port: int | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        common: dict[str, Any] = {
            "host": host,
            "rate": rate,
            "levels": levels,
            "seed": seed,
            "tick_interval": tick_interval,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "max_outbox": max_outbox,
            "compression": compression,
            "control": self._control if http_control else None,
        }
        self.servers: dict[str, ExchangeServer[Any]] = {}
        if upbit_port is not None:
            self.servers["upbit"] = UpbitServer(port=upbit_port, **common)
        if binance_port is not None:
            self.servers["binance"] = BinanceServer(
                port=binance_port,
                max_streams=max_streams,
                max_incoming_per_second=max_incoming_per_second,
                repeat_unchanged=binance_cadence,
                **common,
            )
        more = {"bithumb": bithumb_port, "coinone": coinone_port, "bybit": bybit_port, "okx": okx_port}
        for exchange, port in more.items():
            if port is not None:
                own = (options or {}).get(exchange, {})
                self.servers[exchange] = _MORE_SERVERS[exchange](port=port, **{**common, **own})
        if not self.servers:
            raise ValueError("at least one exchange needs a port")
        for exchange, source in (("upbit", replay_upbit), ("binance", replay_binance)):
            if source is not None:
                self.set_replay(exchange, source, speed=replay_speed, loop=replay_loop)

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        started: list[ExchangeServer[Any]] = []
        try:
            for server in self.servers.values():
                await server.start()
                started.append(server)
        except BaseException:
            for server in started:
                await server.stop()
            raise

    async def stop(self) -> None:
        """Close every connection and stop every task and timer of the simulator."""
        await asyncio.gather(*(server.stop() for server in self.servers.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def server(self, exchange: str) -> ExchangeServer[Any]:
        try:
            return self.servers[exchange]
        except KeyError:
            raise ValueError(
                f"unknown or disabled exchange {exchange!r}; running: {sorted(self.servers)}"
            ) from None

    @property
    def upbit(self) -> UpbitServer:
        server = self.server("upbit")
        assert isinstance(server, UpbitServer)
        return server

    @property
    def binance(self) -> BinanceServer:
        server = self.server("binance")
        assert isinstance(server, BinanceServer)
        return server

    @property
    def upbit_url(self) -> str:
        """``ws://host:port/websocket/v1``, the URL an Upbit client connects to."""
        return self.server("upbit").url

    @property
    def binance_url(self) -> str:
        """``ws://host:port``: append ``/stream?streams=…`` (or ``/ws``) as for ``wss://stream.binance.com:9443``."""
        return self.server("binance").url

    def url(self, exchange: str) -> str:
        """The WebSocket URL a client of that exchange connects to (its ``MD_<EXCHANGE>_URL``)."""
        return self.server(exchange).url

    def control_url(self, exchange: str) -> str:
        """``http://host:port/_sim``: the HTTP control base on that exchange's own port."""
        return self.server(exchange).control_url

    # -- truth and counters -------------------------------------------------------------------------------

    @property
    def last_sent(self) -> dict[tuple[str, str], OrderBookSnapshot]:
        """``(exchange, symbol) -> the book last sent`` to any client, as a client decodes it (``xid`` set)."""
        out: dict[tuple[str, str], OrderBookSnapshot] = {}
        for server in self.servers.values():
            out.update(server.last_sent())
        return out

    def counters(self, exchange: str) -> dict[str, Any]:
        """frames_sent, book_frames, updates, connections_opened, connections_current, subscriptions, …"""
        return self.server(exchange).stats()

    def connection_ids(self, exchange: str) -> list[int]:
        return list(self.server(exchange).sessions)

    def state(self, *, with_truth: bool = True) -> dict[str, Any]:
        return {name: server.state(with_truth=with_truth) for name, server in self.servers.items()}

    # -- waiting ------------------------------------------------------------------------------------------

    # A timeout argument (rather than asyncio.timeout around the call) keeps test code one line per wait.
    async def wait_for_connections(self, exchange: str, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` connections of that exchange are open (TimeoutError otherwise)."""
        server = self.server(exchange)
        await server.wait_until(lambda: len(server.sessions) >= n, timeout)

    async def wait_for_subscribers(
        self,
        exchange: str,
        symbol: str,
        n: int = 1,
        timeout: float = 5.0,
    ) -> None:
        """Wait until at least ``n`` connections receive books of ``symbol``."""
        server = self.server(exchange)
        await server.wait_until(lambda: server.subscriber_count(symbol) >= n, timeout)

    # -- configuration ------------------------------------------------------------------------------------

    def set_rate(self, value: float, exchange: str | None = None) -> None:
        """Updates per second per subscribed symbol, for one exchange or (``None``) all of them."""
        for server in [self.server(exchange)] if exchange else self.servers.values():
            server.set_rate(value)

    def set_replay(
        self, exchange: str, source: ReplaySource | None, *, speed: float | None = 1.0, loop: bool = False
    ) -> None:
        """Replay a capture file (or parsed frames) to that exchange's connections; ``None`` stops replaying."""
        frames = load_capture(source) if isinstance(source, str | Path) else source
        self.server(exchange).set_replay(frames, speed=speed, loop=loop)

    # -- faults -------------------------------------------------------------------------------------------

    async def drop(self, exchange: str, *, connection: int | None = None, symbol: str | None = None) -> int:
        """Abort connections without a close frame; returns how many (after they are gone)."""
        return await self.server(exchange).drop(connection, symbol)

    async def stall(
        self,
        exchange: str,
        seconds: float | None = None,
        *,
        connection: int | None = None,
        symbol: str | None = None,
    ) -> int:
        """Stop sending and reading (pings go unanswered) for ``seconds``, or until `resume`."""
        return self.server(exchange).stall(seconds, connection, symbol)

    async def resume(self, exchange: str, *, connection: int | None = None, symbol: str | None = None) -> int:
        return self.server(exchange).resume(connection, symbol)

    async def send_garbage(
        self,
        exchange: str,
        payload: bytes | str | None = None,
        *,
        connection: int | None = None,
        symbol: str | None = None,
    ) -> int:
        """Send a frame that is not valid JSON (binary for Upbit, text for Binance unless ``payload`` says)."""
        return self.server(exchange).send_garbage(payload, connection, symbol)

    async def send_error(
        self,
        exchange: str,
        *,
        name: str | None = None,
        code: int | None = None,
        message: str | None = None,
        connection: int | None = None,
        symbol: str | None = None,
    ) -> int:
        """Upbit: ``{"error":{"name","message"}}`` then close; Binance: ``{"error":{"code","msg"},"id":null}``."""
        return self.server(exchange).send_error(
            name=name, code=code, message=message, connection=connection, symbol=symbol
        )

    async def announce_shutdown(
        self, exchange: str, *, connection: int | None = None, symbol: str | None = None
    ) -> int:
        """Binance: the ``!serverShutdown`` event, then keep serving. Upbit: close with 1012."""
        return self.server(exchange).announce_shutdown(connection, symbol)

    # -- HTTP control -------------------------------------------------------------------------------------

    async def _control(self, server: ExchangeServer[Any], ws: ServerConnection, request: Request) -> Response:
        return await control.handle(self, server.name, ws, request)
