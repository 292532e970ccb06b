"""``md``: look at the shared market-data cache from a terminal.

    md get [EXCHANGE] SYMBOL [--json] [--depth N]    one book: status line and a bid/ask ladder
    md watch [--exchange EX ...] [SYMBOL ...]        live table: best bid/ask, spread, age, updates/s, status
    md status                                        feeder processes: state, heartbeat age, ttl, counters
    md symbols [EXCHANGE]                            the books each exchange has, from the indexes

Global options ``--redis-url`` and ``--prefix`` (before or after the command) default to ``MD_REDIS_URL`` and
``MD_PREFIX``. Books are read through `RedisMarketDataProvider` and names come from `RedisLayout` only, so the
CLI shows exactly what an engine would be served, and says why a book would not be: a person debugging a
silent engine needs to see a dead book as dead, not hidden.

Exit codes: 0 done; 1 nothing to show (missing or corrupt book, unknown exchange) or Redis answered with an
error; 2 bad usage, invalid name or invalid ``MD_*`` setting; 3 Redis unreachable. Ctrl-C ends ``watch`` with 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions

from client.errors import AmbiguousSymbolError, InvalidSymbolError, SettingsError
from client.layout import (
    FEEDER_HEARTBEAT_FIELD,
    FEEDER_STATE_FIELD,
    Command,
    RedisLayout,
    run_flow,
    validate_exchange,
    validate_symbol,
)
from client.models import BookState, OrderBookSnapshot, SnapshotStatus
from client.provider import RedisMarketDataProvider, guess_exchange
from client.settings import ClientSettings, load_settings

ClientFactory = Callable[[ClientSettings], redis.Redis]
BookResult = tuple[SnapshotStatus, OrderBookSnapshot | None]

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_DEPTH = 10
LIST_REFRESH = 5.0  # seconds between re-reads of the book indexes while watching every book
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_CLEAR = "\x1b[H\x1b[2J"
_RED, _RESET = "\x1b[31m", "\x1b[0m"


class CliError(Exception):
    """A failure to report as one ``md: ...`` line on stderr with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------- entry point
def make_client(settings: ClientSettings) -> redis.Redis:
    """The CLI's own Redis client, with the same timeouts an engine's provider uses."""
    timeout = settings.redis_timeout
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def main(argv: Sequence[str] | None = None, *, client_factory: ClientFactory | None = None) -> int:
    """Run one ``md`` command and return its exit code (the console script passes it to ``sys.exit``).

    `client_factory` builds the sync Redis client from the settings; tests pass one that returns fakeredis.
    The client it returns is closed before `main` returns.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    overrides: dict[str, Any] = {}
    if args.redis_url is not None:
        overrides["redis_url"] = args.redis_url
    if args.prefix is not None:
        overrides["prefix"] = args.prefix
    try:
        settings = load_settings(ClientSettings, **overrides)
    except SettingsError as exc:
        print(f"md: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = mask_url(settings.redis_url)
    client = (client_factory or make_client)(settings)
    command: Callable[[Context], int] = args.command
    try:
        provider = RedisMarketDataProvider(redis=client, settings=settings)
        client.ping()  # one round trip, so that an unreachable Redis is reported as such, not as "missing"
        return command(Context(args, settings, provider, client, where))
    except CliError as exc:
        print(f"md: {exc}", file=sys.stderr)
        return exc.code
    except (InvalidSymbolError, AmbiguousSymbolError) as exc:
        print(f"md: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _REDIS_DOWN as exc:
        print(f"md: cannot reach Redis at {where}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except redis.exceptions.RedisError as exc:
        print(f"md: Redis at {where} answered with an error: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except BrokenPipeError:  # `md symbols | head`: the reader left, which is not an error
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


@dataclass
class Context:
    """What every command needs: its arguments and the Redis it reads."""

    args: argparse.Namespace
    settings: ClientSettings
    provider: RedisMarketDataProvider
    client: redis.Redis
    where: str  # the Redis URL with its password masked, for messages

    @property
    def layout(self) -> RedisLayout:
        return self.provider.layout


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted after the command too (`md get KRW-BTC --redis-url ...`): the
    # sub-parsers declare them with SUPPRESS so that leaving them out there keeps the main parser's value.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="md",
        description="Inspect the shared market-data cache in Redis.",
        epilog="exit codes: 0 ok, 1 nothing to show, 2 bad usage or setting, 3 Redis unreachable",
    )
    _add_global_options(parser, default=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    get = sub.add_parser(
        "get",
        parents=[common],
        help="show one book",
        usage="md get [EXCHANGE] SYMBOL [--json] [--depth N]",
        description="Show one book with its status. A bare SYMBOL is resolved to its exchange like engines "
        "do (from the symbol indexes); EXCHANGE:SYMBOL works too. Stale books are shown with their status.",
    )
    get.add_argument("target", nargs="+", metavar="NAME", help="[EXCHANGE] SYMBOL, or EXCHANGE:SYMBOL")
    get.add_argument("--json", action="store_true", help="print the book as one JSON object")
    get.add_argument(
        "--depth",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help=f"levels per side (default {DEFAULT_DEPTH}, all with --json; 0 = all)",
    )
    get.set_defaults(command=cmd_get)

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="live table of books",
        description="One row per book: best bid and ask, spread, age, updates/s and status. Without symbols "
        f"it shows every book in the indexes (re-read every {LIST_REFRESH:g}s). On a terminal it redraws until "
        "Ctrl-C; with --once or when stdout is not a terminal it prints one table.",
    )
    watch.add_argument("symbols", nargs="*", metavar="SYMBOL", help="books to show (default: all)")
    watch.add_argument(
        "--exchange", "-e", action="append", default=[], metavar="EX", help="only this exchange (repeatable)"
    )
    watch.add_argument(
        "--interval",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="refresh period (default 0.5)",
    )
    watch.add_argument("--once", action="store_true", help="print one table and exit")
    watch.set_defaults(command=cmd_watch)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="list feeders",
        description="Feeder processes from their status keys: state, heartbeat age, time to expiry, counters.",
    )
    status.set_defaults(command=cmd_status)

    symbols = sub.add_parser(
        "symbols",
        parents=[common],
        help="list books per exchange",
        description="The books each exchange has, from the indexes. With EXCHANGE: one symbol per line.",
    )
    symbols.add_argument("exchange", nargs="?", metavar="EXCHANGE")
    symbols.set_defaults(command=cmd_symbols)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--redis-url", default=default, metavar="URL", help="Redis URL (default: MD_REDIS_URL)"
    )
    parser.add_argument("--prefix", default=default, help="key prefix (default: MD_PREFIX, else md)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so that the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------------------------- md get
def cmd_get(ctx: Context) -> int:
    exchange, symbol = _parse_target(ctx.args.target)
    status, book = ctx.provider.inspect_books([(exchange, symbol)])[0]
    name = f"{status.exchange}:{symbol}" if status.exchange else symbol
    if status.state is BookState.UNAVAILABLE:
        raise CliError(f"cannot reach Redis at {ctx.where}: {status.detail}", EXIT_UNREACHABLE)
    if status.state is BookState.CORRUPT:
        raise CliError(f"book {name} is corrupt: {status.detail}", EXIT_NOTHING)
    if book is None:
        where = "" if status.exchange else " on any exchange"
        raise CliError(f"no book for {name}{where} (prefix {ctx.layout.prefix!r})", EXIT_NOTHING)
    depth = ctx.args.depth
    if ctx.args.json:
        print(json.dumps(book_json(status, book, depth or None)))
    else:
        print("\n".join(render_book(status, book, DEFAULT_DEPTH if depth is None else depth or None)))
    return EXIT_OK


def _parse_target(target: Sequence[str]) -> tuple[str | None, str]:
    """(exchange or None, symbol) from ``EXCHANGE SYMBOL``, ``EXCHANGE:SYMBOL`` or a bare ``SYMBOL``."""
    if len(target) == 2:
        return validate_exchange(target[0]), validate_symbol(target[1])
    if len(target) != 1:
        raise CliError(f"get takes [EXCHANGE] SYMBOL, got {len(target)} names", EXIT_USAGE)
    exchange, sep, symbol = target[0].rpartition(":")
    if sep:
        return validate_exchange(exchange), validate_symbol(symbol)
    return None, validate_symbol(symbol)


def book_json(status: SnapshotStatus, book: OrderBookSnapshot, depth: int | None) -> dict[str, Any]:
    """The book as plain JSON types; the full book unless `depth` is given."""
    return {
        "exchange": status.exchange,
        "symbol": book.symbol,
        "status": status.state.value,
        "detail": status.detail,
        "ts": book.timestamp,
        "recv_ts": book.recv_ts,
        "age": status.age,
        "seq": book.seq,
        "xid": book.xid,
        "feeder": status.feeder,
        "bids": [[p, q] for p, q in book.bids[:depth]],
        "asks": [[p, q] for p, q in book.asks[:depth]],
    }


def render_book(status: SnapshotStatus, book: OrderBookSnapshot, depth: int | None) -> list[str]:
    """Header lines and a bid/ask ladder, best prices on the first row, facing each other."""
    state = status.state.value if status.live else f"{status.state.value.upper()} (not live: {status.detail})"
    lines = [
        f"{status.exchange}:{book.symbol}  {state}",
        f"seq {status.seq}  feeder {status.feeder or '-'}  age {fmt_age(status.age)}  xid {book.xid}",
        f"exchange time {fmt_time(book.timestamp)}  received {fmt_time(book.recv_ts)}",
        "",
    ]
    bids, asks = book.bids[:depth], book.asks[:depth]
    if not bids and not asks:
        return [*lines, "(empty book: no bids, no asks)"]
    rows: list[list[str]] = []
    for i in range(max(len(bids), len(asks))):
        bid = [fmt_num(bids[i][1]), fmt_num(bids[i][0])] if i < len(bids) else ["", ""]
        ask = [fmt_num(asks[i][0]), fmt_num(asks[i][1])] if i < len(asks) else ["", ""]
        rows.append([*bid, "|", *ask])
    lines += render_table(["BID QTY", "BID", "|", "ASK", "ASK QTY"], rows, right={0, 1, 3, 4})
    if len(bids) < len(book.bids) or len(asks) < len(book.asks):
        lines.append(
            f"(top {depth} of {len(book.bids)} bid and {len(book.asks)} ask levels; --depth 0 shows all)"
        )
    if book.bids and book.asks:
        bid_p, ask_p = book.bids[0][0], book.asks[0][0]
        lines.append(f"spread {fmt_spread(bid_p, ask_p)} ({fmt_bps(bid_p, ask_p)} bps)")
    return lines


# --------------------------------------------------------------------------------------------- md watch
@dataclass(frozen=True, slots=True)
class WatchRow:
    """One book in the watch table."""

    status: SnapshotStatus
    book: OrderBookSnapshot | None
    rate: float | None  # accepted writes per second since the previous refresh


class Watch:
    """The books to watch and their update rates across refreshes.

    Every refresh is one `inspect_books` batch (a pipelined HGETALL of every book plus the feeders' states),
    so 2000 books cost a few round trips. The book list comes from the indexes and is re-read every
    `LIST_REFRESH` seconds when the user did not name both exchanges and symbols.
    """

    def __init__(
        self, provider: RedisMarketDataProvider, exchanges: Sequence[str], symbols: Sequence[str]
    ) -> None:
        self.provider = provider
        self.exchanges = [validate_exchange(e) for e in exchanges]
        self.symbols = [validate_symbol(s) for s in symbols]
        self._targets: list[tuple[str | None, str]] = []
        self._listed_at: float | None = None
        self._prev: dict[tuple[str, str], tuple[int, float]] = {}

    def targets(self) -> list[tuple[str | None, str]]:
        if self.exchanges and self.symbols:
            return [(e, s) for e in self.exchanges for s in self.symbols]
        now = time.monotonic()
        stale_list = self._listed_at is None or now - self._listed_at >= LIST_REFRESH
        if (
            stale_list or not self._targets
        ):  # nothing yet: look again at every refresh (books may be arriving)
            self._targets = self._list()
            self._listed_at = now
        return self._targets

    def _list(self) -> list[tuple[str | None, str]]:
        books = self.provider.all_books()
        if self.exchanges:
            return [(e, s) for e, s in books if e in self.exchanges]
        if not self.symbols:
            return list(books)
        # A symbol is shown on every exchange that has it; one that none has gets a "missing" row.
        wanted = set(self.symbols)
        found: list[tuple[str | None, str]] = [(e, s) for e, s in books if s in wanted]
        seen = {s for _, s in found}
        found += [(guess_exchange(s), s) for s in self.symbols if s not in seen]
        return found

    def refresh(self) -> list[WatchRow]:
        targets = self.targets()
        results = self.provider.inspect_books(targets)
        now = time.monotonic()
        rows: list[WatchRow] = []
        prev: dict[tuple[str, str], tuple[int, float]] = {}
        for status, book in results:
            rate = None
            if status.seq is not None:
                key = (status.exchange, status.symbol)
                before = self._prev.get(key)
                if before is not None and status.seq >= before[0] and now > before[1]:
                    rate = (status.seq - before[0]) / (now - before[1])
                prev[key] = (status.seq, now)
            rows.append(WatchRow(status, book, rate))
        self._prev = prev
        return rows


def cmd_watch(ctx: Context) -> int:
    watch = Watch(ctx.provider, ctx.args.exchange, ctx.args.symbols)
    interactive = sys.stdout.isatty() and not ctx.args.once
    if not interactive:
        rows = watch.refresh()
        if rows and all(r.status.state is BookState.UNAVAILABLE for r in rows):
            raise CliError(f"cannot reach Redis at {ctx.where}: {rows[0].status.detail}", EXIT_UNREACHABLE)
        print("\n".join(render_watch(rows, ctx, color=False, max_rows=None)))
        return EXIT_OK
    try:
        while True:
            try:
                lines = render_watch(watch.refresh(), ctx, color=True, max_rows=_screen_rows())
            except _REDIS_DOWN as exc:  # keep watching: the view shows when Redis comes back
                lines = [f"md watch  {ctx.where}  {_clock()}", f"cannot reach Redis: {exc} (retrying)"]
            sys.stdout.write(_CLEAR + "\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(ctx.args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _screen_rows() -> int:
    return max(shutil.get_terminal_size().lines - 4, 5)  # minus the title, header and summary lines


def _clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


def render_watch(rows: Sequence[WatchRow], ctx: Context, *, color: bool, max_rows: int | None) -> list[str]:
    """The watch table; when it does not fit, books that are not live are kept and live ones left out."""
    not_live = sum(1 for r in rows if not r.status.live)
    title = (
        f"md watch  {ctx.where}  prefix {ctx.layout.prefix}  {_clock()}  "
        f"{len(rows)} books: {len(rows) - not_live} live, {not_live} not live"
    )
    if not rows:
        return [title, "no books"]
    shown = list(rows)
    hidden = 0
    if max_rows is not None and len(rows) > max_rows:
        keep = [r for r in rows if not r.status.live][:max_rows]
        keep += [r for r in rows if r.status.live][: max_rows - len(keep)]
        order = {id(r): i for i, r in enumerate(rows)}
        shown = sorted(keep, key=lambda r: order[id(r)])
        hidden = len(rows) - len(shown)
    table = [_watch_cells(r) for r in shown]
    headers = ["EXCHANGE", "SYMBOL", "BID", "ASK", "SPREAD", "BPS", "AGE", "UPD/S", "STATUS"]
    lines = render_table(headers, table, right={2, 3, 4, 5, 6, 7})
    if color:
        lines = [lines[0]] + [
            f"{_RED}{line}{_RESET}" if not r.status.live else line
            for line, r in zip(lines[1:], shown, strict=True)
        ]
    out = [title, *lines]
    if hidden:
        out.append(f"... {hidden} live books not shown (narrow with --exchange or symbols)")
    return out


def _watch_cells(row: WatchRow) -> list[str]:
    status, book = row.status, row.book
    bid = book.best_bid() if book is not None else None
    ask = book.best_ask() if book is not None else None
    spread = fmt_spread(bid, ask) if bid is not None and ask is not None else "-"
    bps = fmt_bps(bid, ask) if bid is not None and ask is not None else "-"
    rate = "-" if row.rate is None else f"{row.rate:.1f}"
    return [
        status.exchange or "?",
        status.symbol,
        fmt_num(bid),
        fmt_num(ask),
        spread,
        bps,
        fmt_age(status.age),
        rate,
        status.state.value,
    ]


# --------------------------------------------------------------------------------------------- md status
def _feeders_flow(keys: Sequence[bytes | str]) -> Generator[list[Command], list[Any], list[Any]]:
    replies = yield [("HGETALL", k) for k in keys] + [("PTTL", k) for k in keys]
    return replies


def cmd_status(ctx: Context) -> int:
    pattern = ctx.layout.feeder_pattern()
    keys: list[bytes | str] = sorted(set(ctx.client.scan_iter(match=pattern, count=1000)))
    replies: list[Any] = run_flow(ctx.client, _feeders_flow(keys)) if keys else []
    hashes, ttls = replies[: len(keys)], replies[len(keys) :]
    now = time.time()
    blocks: list[list[str]] = []
    width = shutil.get_terminal_size().columns
    for key, raw, ttl in zip(keys, hashes, ttls, strict=True):
        name = _text(key)
        try:
            feeder = ctx.layout.parse_feeder_key(name)
        except InvalidSymbolError:
            feeder = name  # a key that matches the pattern but not the naming rules: show it anyway
        if isinstance(raw, Exception):  # e.g. WRONGTYPE: someone wrote something else under that name
            blocks.append([f"{feeder}  unreadable: {raw}"])
            continue
        if not raw or ttl == -2:
            continue  # expired between SCAN and the read: that feeder is gone
        fields = {_text(k): _text(v) for k, v in raw.items()}
        state = fields.pop(FEEDER_STATE_FIELD, "?")
        heartbeat = fields.pop(FEEDER_HEARTBEAT_FIELD, None)
        head = f"{feeder}  {state}  heartbeat {_heartbeat_age(heartbeat, now)}  ttl {_fmt_ttl(ttl)}"
        counters = " ".join(f"{k}={_shell_value(v)}" for k, v in sorted(fields.items()))
        block = [head]
        if counters:
            block += textwrap.wrap(
                counters,
                width=max(width, 40),
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        blocks.append(block)
    if not blocks:
        print(f"no feeders (no {pattern} keys)")
        return EXIT_OK
    print("\n".join(line for block in blocks for line in block))
    return EXIT_OK


def _heartbeat_age(value: str | None, now: float) -> str:
    if value is None:
        return "-"
    try:
        at = float(value)
    except ValueError:
        return repr(value)
    if at > 1e11:  # milliseconds rather than seconds
        at /= 1000
    return f"{fmt_age(now - at)} ago"


def _fmt_ttl(ttl: Any) -> str:
    if not isinstance(ttl, int):
        return "?"
    if ttl < 0:
        return "none (never expires)"
    return fmt_age(ttl / 1000)


def _shell_value(value: str) -> str:
    """A field value that stays one token on the line: quoted when empty or holding spaces."""
    return json.dumps(value) if value == "" or any(c.isspace() or c in "\"'" for c in value) else value


# --------------------------------------------------------------------------------------------- md symbols
def cmd_symbols(ctx: Context) -> int:
    books = ctx.provider.all_books()
    by_exchange: dict[str, list[str]] = {}
    for exchange, symbol in books:
        by_exchange.setdefault(exchange, []).append(symbol)
    if ctx.args.exchange is not None:
        exchange = validate_exchange(ctx.args.exchange)
        if exchange not in by_exchange:
            known = ", ".join(by_exchange) or "none"
            raise CliError(f"no books on exchange {exchange!r} (exchanges with books: {known})", EXIT_NOTHING)
        print("\n".join(by_exchange[exchange]))
        return EXIT_OK
    if not by_exchange:
        print("no books")
        return EXIT_OK
    width = max(shutil.get_terminal_size().columns, 40)
    for exchange, symbols in by_exchange.items():
        print(f"{exchange} ({len(symbols)} books)")
        print(textwrap.fill(" ".join(symbols), width=width, initial_indent="    ", subsequent_indent="    "))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- formatting
def fmt_num(value: float | None) -> str:
    """A price or size in plain decimal notation (never ``1e-05``), without float noise or trailing zeros.

    Up to 8 decimals; below 1, up to 8 significant digits, so that a token priced 0.00000912 keeps its
    digits instead of turning into 0.00000001. The value starts from its shortest repr, which is exactly
    the text the feeder stored.
    """
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return _fmt_decimal(Decimal(repr(value)))


def fmt_spread(bid: float, ask: float) -> str:
    """``ask - bid`` computed in decimal, so 70000.02 - 70000.01 shows 0.01, not 0.00999999999.."""
    return _fmt_decimal(Decimal(repr(ask)) - Decimal(repr(bid)))


def _fmt_decimal(value: Decimal) -> str:
    if value.is_zero():
        return "0"
    if value.adjusted() > 40:  # no real price; a hand-edited hash must not make the CLI crash
        return str(value)
    decimals = max(8, 7 - value.adjusted())  # adjusted(): position of the first significant digit
    with localcontext() as context:
        context.prec = 80
        text = format(value.quantize(Decimal(1).scaleb(-decimals)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def fmt_bps(bid: float, ask: float) -> str:
    """Spread in basis points of the mid price."""
    mid = (bid + ask) / 2
    if not mid > 0:
        return "-"
    bps = (ask - bid) / mid * 10_000
    return f"{bps:.2f}" if abs(bps) >= 0.1 else f"{bps:.4f}"  # tight books (BTCUSDT) keep a digit to show


def fmt_age(seconds: float | None) -> str:
    """A duration a person reads at a glance: 0.3s, 42s, 5m03s, 2h10m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + fmt_age(-seconds)  # clocks of feeder and reader disagree
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    except (OverflowError, OSError, ValueError):
        return repr(epoch)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; the columns in `right` (numbers) aligned right."""
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def mask_url(url: str) -> str:
    """The Redis URL for messages: the password (in the user part or the query) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
