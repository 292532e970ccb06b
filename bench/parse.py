"""Decode speed of the exchange protocols: frames/s of ``parse`` next to a bare ``orjson.loads`` of the same frames.

Cases (every frame is a whole order book, as the feeder receives it):

- Upbit SIMPLE, 15 units: the 145 ``orderbook`` frames of the 2021 capture in tests/data/recordings, byte for
  byte (binary frames, as Upbit sends them).
- Upbit DEFAULT, 30 units: the same books in the long-key spelling, each extended to 30 units by continuing
  its price ladder with its own tick and reusing its sizes, numbers written the way Upbit's Java serializer
  writes doubles (``127.0``, ``1.16539E8``, ``7.9276E-4``).
- Bithumb DEFAULT, 15 units and Coinone SHORT/DEFAULT, 15 levels a side: random-walk books encoded by the
  simulator's servers (`exchange_sim.bithumb`, `exchange_sim.coinone`), byte for byte as they send them.
- Bybit ``orderbook.50`` and OKX ``books`` (400 levels, CRC-32 checksums on): a snapshot per symbol, then
  deltas, encoded by the simulator's servers (`exchange_sim.bybit`, `exchange_sim.okx`) from random walks.
  ``parse`` here includes keeping the local book (`IncrementalBook`: chain, checks, the top 20 levels of
  every update); correctness: every book equals the server's truth at its id.
- Binance depth20 combined stream: ``{"stream":"<sym>@depth20@100ms","data":{"lastUpdateId":…,"bids":[…],
  "asks":[…]}}`` with 20 levels a side of 8-decimal string numbers, random walks of a few symbols with real
  price magnitudes and ticks (text frames: ``str``, as websockets hands them over).

The reference is ``orjson.loads`` of the same frames in the same run: the least any decoder must do. The
target is ``parse`` at 0.5x or more of it. Correctness: the snapshots equal an independent decoding of the same
frames with the ``json`` module.
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from bench.report import Context, Table, best_rate
from client.models import OrderBookSnapshot
from exchange_sim.books import RandomWalkBook
from exchange_sim.bybit import BybitServer
from exchange_sim.coinone import encode_orderbook as coinone_encode
from exchange_sim.coinone import parse_request as coinone_request
from exchange_sim.deltas import DeltaServer, DeltaSubscription
from exchange_sim.okx import OkxServer
from exchange_sim.upbit import encode_orderbook as upbit_encode
from feeder.exchanges import BinanceProtocol, Event, UpbitProtocol, books_in, units_json
from feeder.exchanges.bithumb import BithumbProtocol
from feeder.exchanges.bybit import BybitProtocol
from feeder.exchanges.coinone import CoinoneProtocol
from feeder.exchanges.okx import OkxProtocol

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
UPBIT_RECORDING = DATA / "recordings" / "upbit-2021-04-17.ws.txt"
TARGET = 0.5
RECV_TS = 1700000000.5

Level = tuple[float, float]
Book = tuple[str, float, int, list[Level], list[Level]]  # symbol, timestamp, xid, bids, asks


# ------------------------------------------------------------------------------------------------ frames
def upbit_simple_frames() -> list[bytes]:
    """The ``orderbook`` frames of the Upbit capture (SIMPLE format, 15 units), as received."""
    frames: list[bytes] = []
    for line in UPBIT_RECORDING.read_text().splitlines():
        head, sep, payload = line.partition(": ")
        if not sep or " " in head or not payload.startswith("b'"):
            continue
        frame = ast.literal_eval(payload)
        if b'"ty":"orderbook"' in frame:
            frames.append(frame)
    return frames


def java_double(value: float) -> str:
    """A double as Java's ``Double.toString`` writes it (Upbit's serializer): ``127.0``, ``1.16539E8``."""
    if value == 0:
        return "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    exp = len(digits) - 1 + exponent
    return f"{'-' if sign else ''}{mantissa[0]}.{mantissa[1:] or '0'}E{exp}"


def upbit_default_frames(simple: Sequence[bytes], units: int = 30) -> list[bytes]:
    """The SIMPLE books in DEFAULT spelling, extended to `units` units (see the module docstring)."""
    frames: list[bytes] = []
    for raw in simple:
        obj = json.loads(raw)
        old = obj["obu"]
        asks = [(u["ap"], u["as"]) for u in old]
        bids = [(u["bp"], u["bs"]) for u in old]
        ask_tick = asks[-1][0] - asks[-2][0]
        bid_tick = bids[-2][0] - bids[-1][0]
        while len(asks) < units:
            n = len(asks)
            asks.append((round(asks[-1][0] + ask_tick, 10), asks[n % len(old)][1]))
            bids.append((round(bids[-1][0] - bid_tick, 10), bids[n % len(old)][1]))
        unit_text = ",".join(
            f'{{"ask_price":{java_double(ap)},"bid_price":{java_double(bp)},'
            f'"ask_size":{java_double(az)},"bid_size":{java_double(bz)}}}'
            for (ap, az), (bp, bz) in zip(asks, bids, strict=True)
        )
        text = (
            f'{{"type":"orderbook","code":"{obj["cd"]}","timestamp":{obj["tms"]},'
            f'"total_ask_size":{java_double(sum(a for _, a in asks))},'
            f'"total_bid_size":{java_double(sum(b for _, b in bids))},'
            f'"orderbook_units":[{unit_text}],"stream_type":"{obj["st"]}","level":0}}'
        )
        frames.append(text.encode())
    return frames


# symbol, mid price, price tick, decimals of the quantity step, typical level size
_BINANCE_MARKETS = [
    ("btcusdt", 86704.77, 0.01, 5, 0.5),
    ("ethusdt", 3012.58, 0.01, 4, 5.0),
    ("bnbusdt", 598.3, 0.1, 3, 20.0),
    ("solusdt", 142.37, 0.01, 3, 50.0),
    ("xrpusdt", 0.5213, 0.0001, 0, 5000.0),
    ("nknusdt", 0.3513, 0.0001, 0, 6000.0),
    ("dogeusdt", 0.15234, 0.00001, 0, 50000.0),
    ("pepeusdt", 0.00001234, 0.00000001, 0, 5e7),
]


def _binance_side(
    rng: random.Random, best: float, step: float, qty_decimals: int, typical: float
) -> list[list[str]]:
    """20 levels from `best` outwards (gaps of 1-3 ticks), sizes with the market's quantity step."""
    levels: list[list[str]] = []
    price = best
    for _ in range(20):
        qty = round(rng.expovariate(1 / typical), qty_decimals) or 10**-qty_decimals
        levels.append([f"{price:.8f}", f"{qty:.8f}"])
        price += step * rng.choice((1, 1, 1, 2, 3))
    return levels


def binance_depth20_frames(count: int, symbols: Sequence[str] = (), seed: int = 5) -> list[str]:
    """`count` partial-book frames (20 levels a side), text as Binance sends it.

    Frame i is a book of symbol i modulo the list (by default the few real markets above; other names take the
    price magnitude and tick of those markets in turn), each a random walk with increasing ``lastUpdateId``.
    """
    rng = random.Random(seed)
    names = [s.lower() for s in symbols] or [m[0] for m in _BINANCE_MARKETS]
    markets = {name: _BINANCE_MARKETS[i % len(_BINANCE_MARKETS)] for i, name in enumerate(names)}
    mids = {name: markets[name][1] for name in names}
    update_id = 100530416202
    frames: list[str] = []
    for i in range(count):
        name = names[i % len(names)]
        _, _, tick, qty_decimals, typical = markets[name]
        mids[name] = max(tick * 100, mids[name] + rng.choice((-1, 0, 1)) * tick)
        best_bid = round(mids[name] / tick) * tick
        update_id += rng.randint(1, 40)
        data = {
            "lastUpdateId": update_id,
            "bids": _binance_side(rng, best_bid, -tick, qty_decimals, typical),
            "asks": _binance_side(rng, best_bid + tick, tick, qty_decimals, typical),
        }
        frames.append(orjson.dumps({"stream": f"{name}@depth20@100ms", "data": data}).decode())
    return frames


KOREAN = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")


def bithumb_frames(count: int, units: int = 15) -> list[bytes]:
    """Bithumb DEFAULT frames as its simulator server writes them (documented field order, binary)."""
    books = [RandomWalkBook("bithumb", code, depth=30, seed=3) for code in KOREAN]
    frames: list[bytes] = []
    for n in range(count):
        book = books[n % len(books)]
        book.step(1_700_000_000_000 + n)
        frame, _, _ = upbit_encode(
            book.symbol, book, units=units, fmt="DEFAULT", level=1, snapshot=False,
            timestamp_last=True, integer_prices=True,
        )  # fmt: skip
        frames.append(frame)
    return frames


def coinone_frames(count: int, fmt: str, levels: int = 15) -> list[str]:
    """Coinone DATA frames as its simulator server writes them (asks highest first), as text."""
    books = [RandomWalkBook("coinone", code, depth=30, seed=4) for code in KOREAN]
    frames: list[str] = []
    for n in range(count):
        book = books[n % len(books)]
        book.step(1_700_000_000_000 + n)
        quote, _, target = book.symbol.partition("-")
        request = {"request_type": "SUBSCRIBE", "channel": "ORDERBOOK",
                   "topic": {"quote_currency": quote, "target_currency": target}, "format": fmt}  # fmt: skip
        _, sub = coinone_request(orjson.dumps(request))
        assert sub is not None
        frame, _, _ = coinone_encode(sub, book, levels, (1_700_000_000_000 + n) * 1000)
        frames.append(frame.decode())
    return frames


def delta_frames(server: DeltaServer, subs: Sequence[DeltaSubscription], count: int) -> list[bytes]:
    """A snapshot of every subscription, then `count` updates round-robin, as `server` encodes them."""
    frames: list[bytes] = []

    def add(out: bytes | list[bytes]) -> None:
        frames.extend([out] if isinstance(out, bytes) else out)

    for sub in subs:
        add(server.encode(None, sub, server.book(sub.symbol), True))  # type: ignore[arg-type]
    for n in range(count):
        sub = subs[n % len(subs)]
        book = server.book(sub.symbol)
        book.step(1_700_000_000_000 + n)
        add(server.encode(None, sub, book, False))  # type: ignore[arg-type]
    return frames


def bybit_frames(count: int) -> tuple[list[bytes], DeltaServer]:
    server = BybitServer(seed=5)
    subs = [DeltaSubscription(name=f"orderbook.50.{s}", symbol=s, variant=50, depth=50) for s in BYBIT]
    return delta_frames(server, subs, count), server


def okx_frames(count: int) -> tuple[list[bytes], DeltaServer]:
    server = OkxServer(seed=6, checksum=True)
    subs = [DeltaSubscription(name=f"books:{s}", symbol=s, variant=400, depth=400) for s in OKX]
    return delta_frames(server, subs, count), server


BYBIT = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
OKX = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")


def truth_checker(server: DeltaServer, depth: int) -> Callable[[bytes | str], list[Book]]:
    """A `reference` for incremental frames: the server's truth at the id of the book the frame gave."""
    protocol = (BybitProtocol if isinstance(server, BybitServer) else OkxProtocol)(depth=depth)

    def reference(frame: bytes | str) -> list[Book]:
        out: list[Book] = []
        for book in books_in(protocol.parse(frame, RECV_TS)):
            assert book.xid is not None
            truth = server.truth_at(book.symbol, book.xid)
            assert truth is not None, f"no truth for {book.symbol} at {book.xid}"
            out.append((book.symbol, book.timestamp, book.xid, truth.bids[:depth], truth.asks[:depth]))
        return out

    return reference


# ------------------------------------------------------------------------------------- reference decoders
def upbit_reference(frame: bytes | str) -> list[Book]:
    """Upbit books decoded with the json module, independently of feeder.exchanges.upbit."""
    obj = json.loads(frame)
    long = "type" in obj
    code = obj["code" if long else "cd"]
    tms = obj["timestamp" if long else "tms"]
    units = obj["orderbook_units" if long else "obu"]
    ap, az, bp, bz = ("ask_price", "ask_size", "bid_price", "bid_size") if long else ("ap", "as", "bp", "bs")
    asks = [(float(u[ap]), float(u[az])) for u in units if float(u[az]) > 0]
    bids = [(float(u[bp]), float(u[bz])) for u in units if float(u[bz]) > 0]
    return [(code.split(".")[0], tms / 1000, int(tms), bids, asks)]


def coinone_reference(frame: bytes | str) -> list[Book]:
    """Coinone books decoded with the json module: both spellings, sides sorted best first."""
    obj = json.loads(frame)
    short = "r" in obj
    data = obj["d" if short else "data"]
    p, q = ("p", "q") if short else ("price", "qty")
    asks = sorted((float(x[p]), float(x[q])) for x in data["a" if short else "asks"])
    bids = sorted(((float(x[p]), float(x[q])) for x in data["b" if short else "bids"]), reverse=True)
    quote, target = (data["qc"], data["tc"]) if short else (data["quote_currency"], data["target_currency"])
    ts = data["t" if short else "timestamp"]
    return [(f"{quote}-{target}", ts / 1000, int(data["i" if short else "id"]), bids, asks)]


def binance_reference(frame: bytes | str) -> list[Book]:
    obj = json.loads(frame)
    data = obj["data"]
    bids = [(float(p), float(q)) for p, q in data["bids"] if float(q) > 0]
    asks = [(float(p), float(q)) for p, q in data["asks"] if float(q) > 0]
    return [(obj["stream"].split("@")[0].upper(), RECV_TS, data["lastUpdateId"], bids, asks)]


def as_books(snapshots: list[OrderBookSnapshot]) -> list[Book]:
    out: list[Book] = []
    for s in snapshots:
        assert s.xid is not None
        out.append((s.symbol, s.timestamp, s.xid, s.bids, s.asks))
    return out


def exact_floats(snapshots: list[OrderBookSnapshot]) -> bool:
    return all(
        type(p) is float and type(q) is float and type(level) is tuple
        for s in snapshots
        for level in (*s.bids, *s.asks)
        for p, q in (level,)
    )


class Incremental:
    """An incremental protocol that parses the same stream again and again: each pass starts from a new
    protocol (a new local book), as a stream that starts with its snapshots must."""

    def __init__(self, kind: Any, depth: int) -> None:
        self.kind, self.depth = kind, depth
        self._protocol = kind(depth=depth)
        self._first: bytes | str | None = None

    def parse(self, frame: bytes | str, recv_ts: float | None = None) -> list[Event]:
        if self._first is None:
            self._first = frame
        elif frame is self._first:  # the stream starts again
            self._protocol = self.kind(depth=self.depth)
        events: list[Event] = self._protocol.parse(frame, recv_ts)
        return events


# ------------------------------------------------------------------------------------------------ timing
def paired_rates(
    fns: Sequence[Callable[[], None]], items: int, *, rounds: int, min_time: float
) -> list[float]:
    """Best rate of each function, the functions timed in alternation so that machine noise hits all alike."""
    best = [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = max(best[i], best_rate(fn, items, repeat=1, min_time=min_time))
    return best


def run(ctx: Context) -> list[Table]:
    simple = upbit_simple_frames()
    default = upbit_default_frames(simple)
    binance = binance_depth20_frames(8 if ctx.quick else 400)
    if ctx.quick:
        simple, default = simple[:10], default[:10]
    upbit = UpbitProtocol()
    binance_protocol = BinanceProtocol()
    count = 8 if ctx.quick else 400
    bithumb = BithumbProtocol(depth=15)
    coinone = CoinoneProtocol(depth=15)
    bybit_stream, bybit_server = bybit_frames(count * 5)
    okx_stream, okx_server = okx_frames(count * 5)
    cases: list[tuple[str, Callable[..., list[Event]], Sequence[bytes | str], Any, int]] = [
        ("upbit DEFAULT 30 units", upbit.parse, default, upbit_reference, 30),
        ("upbit SIMPLE 15 units", upbit.parse, simple, upbit_reference, 15),
        ("binance depth20 combined", binance_protocol.parse, binance, binance_reference, 20),
        ("bithumb DEFAULT 15 units", bithumb.parse, bithumb_frames(count), upbit_reference, 15),
        ("coinone SHORT 15 levels", coinone.parse, coinone_frames(count, "SHORT"), coinone_reference, 15),
        ("coinone DEFAULT 15 levels", coinone.parse, coinone_frames(count, "DEFAULT"), coinone_reference, 15),
        (
            "bybit orderbook.50 deltas",
            Incremental(BybitProtocol, 20).parse,
            bybit_stream,
            truth_checker(bybit_server, 20),
            20,
        ),
        (
            "okx books deltas, checksum",
            Incremental(OkxProtocol, 20).parse,
            okx_stream,
            truth_checker(okx_server, 20),
            20,
        ),
    ]
    table = Table(
        "parse",
        "parse: frames/s of the exchange protocols vs bare orjson.loads of the same frames",
        ["case", "frames", "bytes/frame", "parse frames/s", "parse µs", "orjson frames/s", "orjson µs",
         "ratio", f"target ≥{TARGET}x"],
    )  # fmt: skip
    for name, parse, frames, reference, levels in cases:
        # correctness: every frame, against the independent decoding
        mismatches = 0
        for frame in frames:
            snapshots = books_in(parse(frame, RECV_TS))
            if as_books(snapshots) != reference(frame) or not exact_floats(snapshots):
                mismatches += 1
        table.check(mismatches == 0, f"{name}: {mismatches} of {len(frames)} frames decode differently")
        table.check(
            all(len(s.bids) == len(s.asks) == levels for f in frames for s in books_in(parse(f, RECV_TS))),
            f"{name}: not {levels} levels a side",
        )

        def parse_all(frames: Sequence[bytes | str] = frames, parse: Any = parse) -> None:
            for frame in frames:
                parse(frame, RECV_TS)

        def loads_all(frames: Sequence[bytes | str] = frames, loads: Any = orjson.loads) -> None:
            for frame in frames:
                loads(frame)

        if ctx.quick:
            rates = paired_rates([parse_all, loads_all], len(frames), rounds=1, min_time=0.01)
        else:
            rates = paired_rates([parse_all, loads_all], len(frames), rounds=7, min_time=0.3)
        ratio = rates[0] / rates[1]
        size = sum(len(f) for f in frames) // len(frames)
        table.add(
            name, len(frames), size, rates[0], 1e6 / rates[0], rates[1], 1e6 / rates[1], round(ratio, 2),
            ("pass" if ratio >= TARGET else "FAIL") if not ctx.quick else "n/a (quick)",
        )  # fmt: skip
    # The writer's path for a frame it took undecoded: the book's sides as stored text, in C (book_sides)
    for name, protocol, frames in (
        ("upbit DEFAULT 30 units, book_sides (C)", upbit, default),
        ("upbit SIMPLE 15 units, book_sides (C)", upbit, simple),
        ("binance depth20 combined, book_sides (C)", binance_protocol, binance),
    ):
        raw = [f if isinstance(f, bytes) else f.encode() for f in frames]
        if not units_json.AVAILABLE:
            table.note(f"{name}: skipped, the C extension feeder/exchanges/_units.c is not built")
            continue
        differ = taken = 0
        for frame in raw:
            (book,) = books_in(protocol.parse(frame, RECV_TS))  # also learns the frame's code or stream
            sides = protocol.book_sides(frame, RECV_TS)
            if sides is not None:  # declined (None): decoded by parse, as before
                taken += 1
                text = (orjson.dumps(book.bids), orjson.dumps(book.asks))
                differ += (sides.bids_json, sides.asks_json) != text
        table.check(
            differ == 0, f"{name}: {differ} of {taken} frames written differently from parse's levels"
        )
        table.check(taken >= 0.9 * len(raw), f"{name}: the C path took only {taken} of {len(raw)} frames")
        table.note(
            f"{name}: took {taken} of {len(raw)} frames (the rest: prices below 1e-5, decoded by parse)"
        )

        def sides_all(frames: Sequence[bytes] = raw, sides: Any = protocol.book_sides) -> None:
            for frame in frames:
                sides(frame, RECV_TS)

        def raw_loads_all(frames: Sequence[bytes] = raw, loads: Any = orjson.loads) -> None:
            for frame in frames:
                loads(frame)

        rounds, min_time = (1, 0.01) if ctx.quick else (7, 0.3)
        rates = paired_rates([sides_all, raw_loads_all], len(raw), rounds=rounds, min_time=min_time)
        table.add(
            name, len(raw), sum(map(len, raw)) // len(raw), rates[0], 1e6 / rates[0], rates[1], 1e6 / rates[1],
            round(rates[0] / rates[1], 2), "",
        )  # fmt: skip
    table.note(
        "book_sides (C): what the writer does with a frame it took undecoded: both sides as the stored text, "
        "straight from the frame (feeder/exchanges/_units.c); checked equal to orjson.dumps of parse's levels"
    )
    table.note(
        "rates: best of 7 alternating timed runs of every frame of the case; recv_ts passed in, as the feeder does"
    )
    table.note("ratio = parse / orjson.loads; the target is a speed goal, not a correctness check")
    return [table]
