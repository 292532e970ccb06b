"""Latency: simulator send → book seen by a client, through pub/sub and through a mirror-mode provider.

The simulator runs in this process at 2,000 frames/s over 500 symbols (250 Upbit + 250 Binance) and one
``md-feeder`` subprocess carries them into Redis. The moment each book frame is handed to the simulator's
WebSocket (its ``send_text``/``send_binary``) is recorded per ``(exchange, symbol, xid)`` — Binance's
``lastUpdateId`` and Upbit's timestamp identify a frame. Two client subprocesses record
``(exchange, symbol, xid, time.time())`` for every book they see, one with a plain ``PSUBSCRIBE`` (the time
the message is read), one with ``RedisMarketDataProvider(mode="mirror").on_update`` (the time the callback
runs, after the mirror has decoded and stored the book), and dump them as JSON at the end; the two are joined
on ``(exchange, symbol, xid)``. Same host, same clock. Books the feeder coalesced (replaced before they were
written) have no client time and are counted, not timed. Each book also carries the feeder's receive time
(``recv_ts``), which splits the pub/sub path into "simulator → feeder" and "feeder → client".

``python -m bench.latency client pubsub|mirror REDIS_URL OUT.json`` is the client (used by the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import Context, Table, percentile
from bench.rig import (
    CpuMeter,
    FeederProbe,
    Feeders,
    psubscribe_books,
    quiet_machine,
    simulator,
    stop_recorder,
    symbol_names,
)
from exchange_sim import ExchangeSimulator

TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
Key = tuple[str, str, int]  # (exchange, symbol, xid)


# ------------------------------------------------------------------------------------------ send times
class SendClock:
    """Records when each book frame of the simulator is encoded and when it is handed to a socket.

    `install` wraps each exchange server's ``encode`` (which knows the symbol and xid); `watch` wraps the
    ``send_text``/``send_binary`` of the connections open now. Only frames encoded while `recording` count.
    """

    def __init__(self, sim: ExchangeSimulator) -> None:
        self.sim = sim
        self.recording = False
        self._encoded: dict[bytes, tuple[Key, float]] = {}
        self.sent: dict[Key, tuple[float, float]] = {}  # key -> (encode time, send time)

    def install(self) -> None:
        for name, server in self.sim.servers.items():
            original = server.encode

            def encode(
                session: Any, sub: Any, book: Any, initial: bool, _orig: Any = original, _name: str = name
            ) -> bytes:
                payload: bytes = _orig(session, sub, book, initial)
                if self.recording:
                    truth = self.sim.servers[_name].truth[sub.symbol]
                    self._encoded[payload] = ((_name, sub.symbol, truth.xid), time.time())
                return payload

            setattr(server, "encode", encode)  # noqa: B010 - an instance attribute shadows the method

    def watch(self) -> int:
        """Wrap the send calls of every open connection; returns how many connections are watched."""
        watched = 0
        for server in self.sim.servers.values():
            for session in server.sessions.values():
                protocol = session.ws.protocol
                for method in ("send_text", "send_binary"):
                    setattr(protocol, method, self._wrap(getattr(protocol, method)))
                watched += 1
        return watched

    def _wrap(self, send: Callable[..., None]) -> Callable[..., None]:
        encoded, sent = self._encoded, self.sent

        def wrapped(data: bytes, fin: bool = True) -> None:
            item = encoded.pop(data, None)
            if item is not None:
                sent.setdefault(item[0], (item[1], time.time()))
            send(data, fin)

        return wrapped


# ------------------------------------------------------------------------------------------ the clients
def client_main(argv: list[str]) -> int:
    """Client subprocess: print "ready" once subscribed, record until a line on stdin, write JSON, exit."""
    mode, url, out = argv
    # The rows recorded here are the benchmark's, not the engine's: keep the cyclic collector from pausing
    # the client to walk them (a real engine's own allocations are freed by reference counting anyway).
    gc.disable()
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    rows: list[tuple[str, str, int, float, float]] = []
    if mode == "hop":
        Path(out).write_text(json.dumps(_hop_client(url)))
        return 0
    if mode == "pubsub":
        _pubsub_client(url, stop, rows)
    elif mode == "mirror":
        _mirror_client(url, stop, rows)
    else:
        print(f"unknown client mode {mode!r}", file=sys.stderr)
        return 2
    Path(out).write_text(json.dumps(rows))
    return 0


def _hop_client(address: str) -> list[float]:
    """Read lines holding a send time (``time.time()``) until EOF; the delay of each line."""
    import socket

    host, port = address.rsplit(":", 1)
    delays: list[float] = []
    with socket.create_connection((host, int(port))) as sock, sock.makefile("rb") as stream:
        print("ready", flush=True)
        for line in stream:
            delays.append(time.time() - float(line))
    return delays


async def hop_baseline(workdir: Path, count: int, interval: float) -> list[float]:
    """One loopback hop (asyncio writer here -> a blocking reader in a subprocess): the platform's floor.

    The process boundary is what every stage of the real path crosses (simulator -> feeder -> Redis ->
    client); on a virtual machine the wake-up of an idle process is a large part of it.
    """
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = workdir / "latency-hop.json"
    workdir.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.latency", "client", "hop", f"127.0.0.1:{port}", str(out),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(15):
            await connected.wait()
            assert process.stdout is not None
            await process.stdout.readline()
        writer = writers[0]
        for _ in range(count):
            await asyncio.sleep(interval)
            writer.write(repr(time.time()).encode() + b"\n")
        writer.close()
        async with asyncio.timeout(15):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        server.close()
        await server.wait_closed()
    delays: list[float] = json.loads(out.read_text())
    return delays


def _pubsub_client(url: str, stop: threading.Event, rows: list[tuple[str, str, int, float, float]]) -> None:
    import orjson
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    raw: list[tuple[bytes, bytes, float]] = []
    try:
        psubscribe_books(pubsub)
        print("ready", flush=True)
        get = pubsub.get_message
        while not stop.is_set():
            message = get(timeout=0.05)
            if message is None:
                continue
            now = time.time()
            if message["type"] == "pmessage":
                raw.append((message["channel"], message["data"], now))
    finally:
        pubsub.close()
        client.close()
    for channel, data, now in raw:
        body = orjson.loads(data)
        if body.get("live") is False:
            continue
        _, exchange, symbol = channel.decode().split(":", 2)
        rows.append((exchange, symbol, int(body["xid"]), now, float(body["recv_ts"])))


def _mirror_client(url: str, stop: threading.Event, rows: list[tuple[str, str, int, float, float]]) -> None:
    from client import OrderBookSnapshot, RedisMarketDataProvider

    provider = RedisMarketDataProvider.from_url(url, mode="mirror")
    provider.start()
    try:

        def seen(book: OrderBookSnapshot) -> None:
            rows.append((book.exchange or "", book.symbol, book.xid or 0, time.time(), book.recv_ts or 0.0))

        provider.on_update(seen)
        print("ready", flush=True)
        stop.wait(600)
    finally:
        provider.stop()


class ClientProcess:
    """One client subprocess; `finish` tells it to stop and returns its rows (always reaps it)."""

    def __init__(self, mode: str, url: str, out: Path) -> None:
        self.mode = mode
        self.out = out
        self.process: asyncio.subprocess.Process | None = None
        self.url = url

    async def start(self, timeout: float = 15.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.latency", "client", self.mode, self.url, str(self.out),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("MD_")},
        )  # fmt: skip
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"{self.mode} client did not start: {line!r}")

    async def finish(self, timeout: float = 15.0) -> list[tuple[str, str, int, float, float]]:
        process = self.process
        if process is None:
            return []
        self.process = None
        await stop_recorder(process, timeout)
        if process.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"{self.mode} client exited with {process.returncode}")
        return [
            (str(e), str(s), int(x), float(t), float(r)) for e, s, x, t, r in json.loads(self.out.read_text())
        ]


# ------------------------------------------------------------------------------------------ the benchmark
def _row(table: Table, arrival: str, label: str, samples: list[float], sent: int) -> None:
    ms = [s * 1000 for s in samples]
    table.add(
        arrival, label, sent, len(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99),
        percentile(ms, 99.9), max(ms) if ms else float("nan"),
    )  # fmt: skip


async def _run(ctx: Context, table: Table, tick: float, arrival: str) -> None:
    server = ctx.redis()
    assert server.process is not None
    n_upbit, n_binance, total_rate = (2, 3, 100) if ctx.quick else (250, 250, 2000)
    warmup, seconds = (0.5, 1.5) if ctx.quick else (2.0, 15.0)
    upbit, binance = symbol_names("upbit", n_upbit), symbol_names("binance", n_binance)
    connections = -(-n_upbit // 100) + -(-n_binance // 1024)
    async with simulator(rate=0.0, tick_interval=tick) as sim:
        clock = SendClock(sim)
        clock.install()
        feeders = Feeders(server.url, sim, ctx.workdir / "latency")
        probe = FeederProbe(server.url)
        clients = [
            ClientProcess(mode, server.url, ctx.workdir / f"latency-{mode}.json")
            for mode in ("pubsub", "mirror")
        ]
        try:
            busy = await quiet_machine(timeout=0 if ctx.quick else 90)
            if busy > 0.3:
                table.note(f"{arrival}: the machine was busy ({busy:.1f} cores) when the run started")
            feeder = feeders.start("bench-latency", upbit=upbit, binance=binance)
            await probe.wait_connected(feeder, connections, 30)
            table.check(clock.watch() == connections, "not every simulator connection is watched")
            for client in clients:
                await client.start()
            sim.set_rate(total_rate / (n_upbit + n_binance))
            await asyncio.sleep(warmup)
            meter = CpuMeter({"feeder": feeder.pid, "sim": os.getpid(), "redis": server.process.pid})
            meter.start()
            gc.disable()  # the simulator is the instrument here: no collector pauses between its sends
            try:
                clock.recording = True
                await asyncio.sleep(seconds)
                clock.recording = False
            finally:
                gc.enable()
            wall, cpu = meter.read()
            await asyncio.sleep(0.3 if ctx.quick else 1.0)  # the last frames on their way
            results = {client.mode: await client.finish() for client in clients}
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.finish(5)
            await probe.aclose()
            await feeders.astop_all()
    sent = clock.sent
    table.check(len(sent) > 0, "no frame was recorded as sent")
    encode_to_send = [s - e for e, s in sent.values()]
    for mode, label in (("pubsub", "pub/sub (PSUBSCRIBE)"), ("mirror", "mirror provider on_update")):
        rows = results[mode]
        latencies: list[float] = []
        to_feeder: list[float] = []
        from_feeder: list[float] = []
        for exchange, symbol, xid, seen, recv_ts in rows:
            times = sent.get((exchange, symbol, xid))
            if times is None:
                continue  # sent before or after the recording window
            latencies.append(seen - times[1])
            to_feeder.append(recv_ts - times[1])
            from_feeder.append(seen - recv_ts)
        table.check(len(latencies) > 0, f"{label}: no book matched a recorded frame")
        table.check(
            not latencies or min(latencies) > 0,
            f"{label}: a book was seen before it was sent (join is wrong)",
        )
        _row(table, arrival, label, latencies, len(sent))
        ctx.keep("latency", arrival=arrival, stage=f"send -> {label}", ms=[x * 1000 for x in latencies])
        if mode == "pubsub":
            _row(table, arrival, "  of which simulator send -> feeder receive", to_feeder, len(sent))
            _row(table, arrival, "  of which feeder receive -> pub/sub client", from_feeder, len(sent))
            ctx.keep(
                "latency", arrival=arrival, stage="send -> feeder receive", ms=[x * 1000 for x in to_feeder]
            )
            ctx.keep(
                "latency",
                arrival=arrival,
                stage="feeder receive -> client",
                ms=[x * 1000 for x in from_feeder],
            )
    _row(table, arrival, "(simulator encode -> send, not included)", encode_to_send, len(sent))
    table.note(
        f"{arrival}: CPU during the window (% of one core): "
        + ", ".join(f"{name} {100 * cpu[name] / wall:.0f}%" for name in ("feeder", "sim", "redis", "other"))
        + " (the two client processes are part of 'other')"
    )


def run(ctx: Context) -> list[Table]:
    table = Table(
        "latency",
        "Latency: simulator send -> book seen by a client (ms)",
        ["arrival", "path", "frames sent", "seen", "p50", "p90", "p99", "p99.9", "max"],
    )
    # The simulator sends what fell due in each tick together: 10 ms ticks make bursts of ~20 frames (like
    # Binance's 100 ms partial books, which arrive together), 1 ms ticks spread them out (like Upbit).
    for tick, arrival in [(0.01, "bursts (10 ms)")] + ([] if ctx.quick else [(0.001, "spread (1 ms)")]):
        asyncio.run(_run(ctx, table, tick, arrival))
    hops = asyncio.run(hop_baseline(ctx.workdir, 50 if ctx.quick else 500, 0.01))
    table.check(len(hops) > 0 and min(hops) > 0, "loopback baseline: no delay measured, or a negative one")
    _row(table, "baseline", "one loopback hop, no feeder, no Redis", hops, len(hops))
    symbols, rate, seconds = (5, 100, 1.5) if ctx.quick else (500, 2000, 15)
    table.note(
        f"{symbols} symbols (half Upbit, half Binance) at {rate:,} frames/s for {seconds:g} s; 'seen' = books "
        "the client received with a recorded send time (the rest were coalesced by the feeder); "
        f"targets p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms; {os.cpu_count()} cores shared"
    )
    table.note(
        "baseline: a line written every 10 ms by this process and read by another one; the real path crosses "
        "three such process boundaries (simulator -> feeder -> Redis -> client)"
    )
    return [table]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(client_main(sys.argv[2:]))
    print("usage: python -m bench.latency client pubsub|mirror REDIS_URL OUT.json", file=sys.stderr)
    sys.exit(2)
