"""Reconnect: from a dropped exchange connection to fresh data in Redis.

The simulator (this process) aborts a feeder connection (``sim.drop``: TCP reset, no close frame, as a network
failure looks). A pub/sub subscriber here watches one book of that connection and times, from the drop:
the ``live:false`` message (the book is reported down), the first live message again (the feeder has
reconnected, re-subscribed and written the first book of the new connection), and the first message with a
newer ``xid`` than the last one before the drop (fresh data). Upbit and Binance connections are dropped in
turn, N times each, with a pause between drops so that the connection-rate limits (Binance: 10 at once, then
1/s) are not what is measured.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from bench.report import Context, Table, percentile
from bench.rig import FeederProbe, Feeders, psubscribe_books, simulator, stop_recorder, symbol_names

TARGET_MS = 250.0


@dataclass
class Drops:
    """Seconds from each drop to: the watched book's live:false, every book of the connection down, the watched
    book live again, every book live again, the watched book caught up (an xid at least the one the exchange
    had sent when the connection dropped), the watched book's newer xid."""

    down: list[float] = field(default_factory=list)
    all_down: list[float] = field(default_factory=list)
    live: list[float] = field(default_factory=list)
    all_live: list[float] = field(default_factory=list)
    caught_up: list[float] = field(default_factory=list)
    fresh: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


Message = tuple[float, str, str, bool, int]  # (time.time(), exchange, symbol, live, xid or 0)


# ------------------------------------------------------------------------------------------ the watcher
def watch_main(argv: list[str]) -> int:
    """Watcher subprocess: PSUBSCRIBE every book channel, print "ready", record until a line on stdin.

    It runs apart from the simulator so that reading thousands of messages per second does not delay the
    time stamps (taken with ``time.time()``, the clock the benchmark stamps its drops with).
    """
    url, out = argv
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    raw: list[tuple[float, bytes, bytes]] = []
    try:
        psubscribe_books(pubsub)
        print("ready", flush=True)
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "pmessage":
                raw.append((time.time(), message["channel"], message["data"]))
    finally:
        pubsub.close()
        client.close()
    rows: list[Message] = []
    for at, channel, data in raw:
        _, exchange, symbol = channel.decode().split(":", 2)
        body = orjson.loads(data)
        live = body.get("live") is not False
        rows.append((at, exchange, symbol, live, int(body.get("xid") or 0) if live else 0))
    Path(out).write_text(json.dumps(rows))
    return 0


class Watcher:
    """The watcher subprocess; `finish` stops it and returns its messages (and always reaps it)."""

    def __init__(self, url: str, out: Path) -> None:
        self.url = url
        self.out = out
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 15.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.reconnect", "watch", self.url, str(self.out),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the watcher did not start: {line!r}")

    async def finish(self, timeout: float = 15.0) -> list[Message]:
        process = self.process
        if process is None:
            return []
        self.process = None
        await stop_recorder(process, timeout)
        if process.returncode != 0:
            raise RuntimeError(f"the watcher exited with {process.returncode}")
        return [
            (float(t), str(e), str(s), bool(live), int(x))
            for t, e, s, live, x in json.loads(self.out.read_text())
        ]


# ------------------------------------------------------------------------------------------ analysis
def analyse_drop(
    messages: list[Message],
    dropped_at: float,
    until: float,
    books: list[str],
    exchange_xid: int,
    result: Drops,
    label: str,
) -> None:
    """What one exchange's channels showed between a drop and the next drop (messages of that exchange).

    `exchange_xid`: the watched book's xid in the last frame the simulator had sent when it dropped the
    connection; Redis has caught up when the new connection delivers that book or a newer one.
    """
    watched, expected = books[0], set(books)
    before: dict[str, int] = {}
    down: dict[str, float] = {}
    live: dict[str, float] = {}
    caught_up = fresh = None
    for at, _, symbol, is_live, xid in messages:
        if at <= dropped_at:
            if is_live:
                before[symbol] = max(before.get(symbol, 0), xid)
            continue
        if at >= until:
            break
        if not is_live:
            down.setdefault(symbol, at - dropped_at)
            continue
        if symbol not in down:
            continue  # written before the feeder noticed the drop
        live.setdefault(symbol, at - dropped_at)
        if symbol == watched:
            if caught_up is None and xid >= exchange_xid:
                caught_up = at - dropped_at
            if fresh is None and xid > before.get(symbol, 0):
                fresh = at - dropped_at
    if fresh is None or caught_up is None or set(live) != expected or set(down) != expected:
        result.failures.append(
            f"{label}: {len(down)} of {len(expected)} books went down, {len(live)} came back, "
            f"watched book caught up: {caught_up is not None}, newer: {fresh is not None}"
        )
        return
    result.down.append(down[watched])
    result.all_down.append(max(down.values()))
    result.live.append(live[watched])
    result.all_live.append(max(live.values()))
    result.caught_up.append(caught_up)
    result.fresh.append(fresh)


@dataclass(frozen=True)
class Scenario:
    label: str
    upbit: int
    binance: int
    rate: float  # updates/s per symbol
    repeats: int
    pause: float  # between two drops


async def _run(ctx: Context, table: Table, sc: Scenario) -> None:
    server = ctx.redis()
    books = {"upbit": symbol_names("upbit", sc.upbit), "binance": symbol_names("binance", sc.binance)}
    drops: list[tuple[str, float, int]] = []  # (exchange, time.time() just before sim.drop, watched xid sent)
    failures: list[str] = []
    async with simulator(rate=sc.rate) as sim:
        feeders = Feeders(server.url, sim, ctx.workdir / "reconnect")
        probe = FeederProbe(server.url)
        watcher = Watcher(server.url, ctx.workdir / "reconnect-watch.json")
        try:
            await watcher.start()
            feeder = feeders.start("bench-reconnect", upbit=books["upbit"], binance=books["binance"])
            await probe.wait_connected(feeder, 2, 30)
            await asyncio.sleep(0.5)
            for _ in range(sc.repeats):
                for exchange, symbols in books.items():
                    opened = sim.counters(exchange)["connections_opened"]
                    drops.append((exchange, time.time(), sim.server(exchange).truth[symbols[0]].xid))
                    if await sim.drop(exchange) != 1:
                        failures.append(f"{exchange}: the drop hit no connection")
                    try:  # back: a new connection that receives the books again
                        await sim.wait_for_subscribers(exchange, symbols[-1], n=1, timeout=10)
                    except TimeoutError:
                        failures.append(f"{exchange}: no new connection within 10 s of the drop")
                    await asyncio.sleep(sc.pause)
                    if sim.counters(exchange)["connections_opened"] != opened + 1:
                        failures.append(f"{exchange}: not exactly one new connection after the drop")
            counters = await probe.counters(feeder.feeder_id)
            messages = await watcher.finish()
        finally:
            await watcher.finish(5)
            await probe.aclose()
            await feeders.astop_all()
    for failure in failures:
        table.check(False, f"{sc.label}: {failure}")
    for exchange, symbols in books.items():
        result = Drops()
        mine = [m for m in messages if m[1] == exchange]
        times = [(t, xid) for ex, t, xid in drops if ex == exchange]
        for i, (dropped_at, xid) in enumerate(times):
            until = times[i + 1][0] if i + 1 < len(times) else float("inf")
            analyse_drop(mine, dropped_at, until, symbols, xid, result, f"{sc.label} {exchange} drop {i + 1}")
        for failure in result.failures:
            table.check(False, failure)
        table.check(
            len(result.fresh) == sc.repeats,
            f"{sc.label} {exchange}: {len(result.fresh)} of {sc.repeats} recovered",
        )
        cells: list[object] = [f"{exchange}, {len(symbols)} books, {sc.label}", len(result.fresh)]
        ctx.keep(
            "reconnect", case=f"{exchange}, {len(symbols)} books, {sc.label}",
            **{k: [v * 1000 for v in getattr(result, k)] for k in ("down", "all_down", "live", "all_live", "caught_up")},
        )  # fmt: skip
        for values in (
            result.down,
            result.all_down,
            result.live,
            result.all_live,
            result.caught_up,
            result.fresh,
        ):
            ms = [v * 1000 for v in values]
            cells += [percentile(ms, 50), max(ms, default=float("nan"))]
        table.add(*cells)
    table.check(
        counters["reconnects"] >= 2 * sc.repeats,
        f"{sc.label}: the feeder counted {counters['reconnects']} reconnects for {2 * sc.repeats} drops",
    )


SCENARIOS_FULL = [
    Scenario("50 updates/s each", 5, 5, 50.0, 20, 0.6),
    Scenario("2 updates/s each", 100, 1000, 2.0, 10, 1.0),
]
SCENARIOS_QUICK = [Scenario("50 updates/s each", 5, 5, 50.0, 2, 0.3)]


def run(ctx: Context) -> list[Table]:
    table = Table(
        "reconnect",
        "Reconnect: dropped connection -> books down, back, fresh in Redis (ms from sim.drop)",
        ["connection", "drops", "live:false p50", "max", "all down p50", "max", "live again p50", "max",
         "all live p50", "max", "caught up p50", "max", "newer xid p50", "max"],
    )  # fmt: skip
    for scenario in SCENARIOS_QUICK if ctx.quick else SCENARIOS_FULL:
        asyncio.run(_run(ctx, table, scenario))
    table.note(
        "one connection per exchange is dropped (TCP reset), alternating between the exchanges with a pause "
        "so that the connection-rate limits are not what is measured. Columns: the watched book's live:false; "
        "every book of the connection marked down; the watched book live again (first write from the new "
        "connection); every book of the connection live again; the watched book caught up (its xid is at least "
        "the one the simulator had sent when it dropped the connection: Redis is as fresh as before the drop); "
        "the watched book's first xid newer than Redis held before the drop (this one includes waiting for the "
        f"book's next update, up to 1/rate). Target: fresh data <= {TARGET_MS:g} ms"
    )
    return [table]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "watch":
        sys.exit(watch_main(sys.argv[2:]))
    print("usage: python -m bench.reconnect watch REDIS_URL OUT.json", file=sys.stderr)
    sys.exit(2)
