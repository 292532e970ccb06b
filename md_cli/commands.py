"""The ``md`` commands: what each one reads (through the provider and the layout) and prints.

Books are read with `RedisMarketDataProvider.inspect_books`, so the CLI shows exactly what an engine would be
served and says why a book would not be: a person debugging a silent engine needs to see a dead book as dead,
not hidden. Rendering lives in `md_cli.render`.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions
from rich.console import Console
from rich.live import Live
from rich.text import Text

from client import BookState, RedisMarketDataProvider
from client.errors import InvalidSymbolError
from client.layout import (
    change_wanted_flow,
    feeder_keys_flow,
    feeder_records_flow,
    normal_exchange,
    normal_symbol,
    registry_flow,
    split_record,
    split_target,
    stage_latency,
)
from client.resolver import guess_exchange
from client.topology import primaries
from client.transport import run_flow
from md_cli.context import EXIT_NOTHING, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError, Context
from md_cli.live_view import watch_table
from md_cli.render import (
    WatchRow,
    book_json,
    clock,
    history_line,
    render_book,
    render_book_rows,
    render_status,
    render_watch,
    status_json,
)

DEFAULT_DEPTH = 10
LIST_REFRESH = 5.0  # seconds between re-reads of the book indexes while watching every book
RATE_WINDOW = 5.0  # seconds of versions an update rate is measured over (smooth, still quick to follow)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


# --------------------------------------------------------------------------------------------- md get
def cmd_get(ctx: Context) -> int:
    exchange, symbol = parse_target(ctx.args.target)
    status, book = ctx.provider.inspect_books([(exchange, symbol)])[0]
    name = f"{status.exchange}:{symbol}" if status.exchange else symbol
    if status.state is BookState.UNAVAILABLE:
        raise CliError(f"cannot reach Redis at {ctx.where}: {status.detail}", EXIT_UNREACHABLE)
    if status.state is BookState.CORRUPT:
        raise CliError(f"book {name} is corrupt: {status.detail}", EXIT_NOTHING)
    if book is None:
        where = "" if status.exchange else " on any exchange"
        hint = f"md symbols {status.exchange}" if status.exchange else "md symbols"
        raise CliError(
            f"no book for {name}{where} (prefix {ctx.layout.prefix!r}); `{hint}` lists the books there are",
            EXIT_NOTHING,
        )
    depth = ctx.args.depth
    if ctx.args.json:
        print(json.dumps(book_json(status, book, depth or None)))
    else:
        print("\n".join(render_book(status, book, DEFAULT_DEPTH if depth is None else depth or None)))
    return EXIT_OK


def parse_target(target: Sequence[str]) -> tuple[str | None, str]:
    """(exchange or None, symbol) from ``EXCHANGE SYMBOL``, ``EXCHANGE:SYMBOL`` or a bare ``SYMBOL``."""
    if len(target) == 2:
        return normal_exchange(target[0]), normal_symbol(target[1])
    if len(target) != 1:
        raise CliError(f"get takes [EXCHANGE] SYMBOL, got {len(target)} names", EXIT_USAGE)
    exchange, symbol = split_target(target[0])
    if exchange is not None:
        return normal_exchange(exchange), normal_symbol(symbol)
    return None, normal_symbol(symbol)


# --------------------------------------------------------------------------------------------- md watch
class Watch:
    """The books to watch and their update rates across refreshes.

    Every refresh is one `inspect_books` batch (a pipelined HGETALL of every book plus the feeders' states),
    so 2000 books cost a few round trips. The book list comes from the indexes and is re-read every
    `LIST_REFRESH` seconds when the user did not name both exchanges and symbols.
    """

    def __init__(
        self,
        provider: RedisMarketDataProvider,
        exchanges: Sequence[str],
        symbols: Sequence[str],
        sort: str = "book",
        only: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self._clock = clock  # the rates' time base (a test moves it by hand)
        self.sort = sort
        self.only = only
        self.exchanges = [normal_exchange(e) for e in exchanges]
        self.symbols = [normal_symbol(s) for s in symbols]
        self._targets: list[tuple[str | None, str]] = []
        self._listed_at: float | None = None
        self._prev: dict[
            tuple[str, str], deque[tuple[int, float]]
        ] = {}  # per book: (seq, when) in the window

    def targets(self) -> list[tuple[str | None, str]]:
        if self.exchanges and self.symbols:
            return [(e, s) for e in self.exchanges for s in self.symbols]
        now = self._clock()
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
        """Read every watched book; each one's update rate is smoothed over the last `RATE_WINDOW` seconds."""
        targets = self.targets()
        results = self.provider.inspect_books(targets)
        now = self._clock()
        rows: list[WatchRow] = []
        prev: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        for status, book in results:
            rate = None
            if status.seq is not None:
                key = (status.exchange, status.symbol)
                samples = self._prev.get(key) or deque()
                if samples and status.seq < samples[-1][0]:
                    samples.clear()  # a lower seq: Redis restarted, the counting starts again
                samples.append((status.seq, now))
                while len(samples) > 2 and now - samples[1][1] >= RATE_WINDOW:
                    samples.popleft()
                first_seq, first_at = samples[0]
                if now > first_at:
                    rate = (status.seq - first_seq) / (now - first_at)
                prev[key] = samples
            rows.append(WatchRow(status, book, rate))
        self._prev = prev
        return rows

    def shown(self, rows: list[WatchRow]) -> list[WatchRow]:
        """The rows of a refresh as ``--sort`` and ``--only`` ask (after the check for an unreachable Redis)."""
        return arrange(rows, self.sort, self.only)


SORT_KEYS = ("book", "age", "rate", "spread", "status")


def arrange(rows: list[WatchRow], sort: str, only: str | None) -> list[WatchRow]:
    """`md watch --sort KEY --only live|not-live`: the rows to show, in the order asked for. A row without
    the value sorted on (no book, no rate yet) goes last; ties keep the book order."""
    if only is not None:
        rows = [r for r in rows if r.status.live == (only == "live")]
    if sort == "book":
        return rows
    inf = float("inf")

    def spread_bps(r: WatchRow) -> float:
        bid = r.book.best_bid() if r.book else None
        ask = r.book.best_ask() if r.book else None
        return -(ask - bid) / ask * 1e4 if bid and ask else inf

    keys: dict[str, Callable[[WatchRow], float]] = {
        "age": lambda r: -r.status.age if r.status.age is not None else inf,
        "rate": lambda r: -r.rate if r.rate is not None else inf,
        "spread": spread_bps,
        "status": lambda r: 1.0 if r.status.live else 0.0,
    }
    return sorted(rows, key=keys[sort])


def cmd_watch(ctx: Context) -> int:
    watch = Watch(ctx.provider, ctx.args.exchange, ctx.args.symbols, ctx.args.sort, ctx.args.only)
    if ctx.args.json:
        return _watch_json(ctx, watch)
    interactive = sys.stdout.isatty() and not ctx.args.once
    if not interactive:
        rows = watch.refresh()
        if rows and all(r.status.state is BookState.UNAVAILABLE for r in rows):
            raise CliError(f"cannot reach Redis at {ctx.where}: {rows[0].status.detail}", EXIT_UNREACHABLE)
        print(
            "\n".join(
                render_watch(watch.shown(rows), ctx.where, ctx.layout.prefix, color=False, max_rows=None)
            )
        )
        return EXIT_OK
    console = Console()
    try:
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                try:
                    view: Any = watch_table(
                        watch.shown(watch.refresh()), ctx.where, ctx.layout.prefix, max_rows=_screen_rows()
                    )
                except REDIS_DOWN as exc:  # keep watching: the view shows when Redis comes back
                    view = Text(
                        f"md watch  {ctx.where}  {clock()}\ncannot reach Redis: {exc} (retrying)", style="red"
                    )
                live.update(view, refresh=True)
                time.sleep(ctx.args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _watch_json(ctx: Context, watch: Watch) -> int:
    """`md watch --json`: every refresh as one line of JSON (``--once``: one line), for scripts."""
    try:
        while True:
            rows = watch.refresh()
            if rows and all(r.status.state is BookState.UNAVAILABLE for r in rows):
                raise CliError(
                    f"cannot reach Redis at {ctx.where}: {rows[0].status.detail}", EXIT_UNREACHABLE
                )
            books = [
                {**status_json(r.status), "bid": r.book.best_bid() if r.book else None,
                 "ask": r.book.best_ask() if r.book else None, "updates_per_s": r.rate}
                for r in watch.shown(rows)
            ]  # fmt: skip
            print(json.dumps({"time": time.time(), "books": books}), flush=True)
            if ctx.args.once:
                return EXIT_OK
            time.sleep(ctx.args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _screen_rows() -> int:
    return max(shutil.get_terminal_size().lines - 4, 5)  # minus the title, header and summary lines


# --------------------------------------------------------------------------------------------- md status
DEAD_SHOWN = 24 * 3600.0  # dead feeders are listed this long after their last heartbeat (all with --all)


def cmd_status(ctx: Context) -> int:
    """Every feeder seen: running, offline (stopped cleanly) or dead (its record expired: killed, or cut off
    from Redis), as a table; ``-v`` adds each one's counters, ``--json`` prints everything as JSON.

    Exit status: 0 when at least one feeder runs and none is dead; 1 otherwise (a health check)."""
    records = _feeder_records(ctx)
    registry = run_flow(ctx.client, registry_flow(ctx.layout))
    now = time.time()
    feeders: dict[str, dict[str, Any]] = {}
    for name, raw, ttl in records:
        try:
            feeder = ctx.layout.parse_feeder_key(name)
        except InvalidSymbolError:
            feeder = name  # a key that matches the pattern but not the naming rules: show it anyway
        if isinstance(raw, Exception):  # e.g. WRONGTYPE: someone wrote something else under that name
            feeders[feeder] = {"id": feeder, "state": "unreadable", "error": str(raw), "fields": {}}
            continue
        if not raw or ttl == -2:
            continue  # expired between SCAN and the read: the registry lists it as dead
        state, heartbeat, fields = split_record({_text(k): _text(v) for k, v in raw.items()})
        feeders[feeder] = _status_entry(
            feeder, state or "?", heartbeat, fields, ttl if isinstance(ttl, int) else None
        )
    for feeder, last in registry.items():
        if feeder in feeders:
            continue
        fields = {k: str(v) for k, v in last.items()}
        state, heartbeat, rest = split_record(fields)
        entry = _status_entry(feeder, "dead", heartbeat, rest, None)
        if state == "offline":
            entry["state"] = "offline"  # stopped cleanly; its record's hour is over
        age = entry.get("age")
        if ctx.args.all or age is None or age <= DEAD_SHOWN:
            feeders[feeder] = entry
    entries = [feeders[k] for k in sorted(feeders)]
    running = sum(1 for e in entries if e["state"] == "running")
    dead = sum(1 for e in entries if e["state"] in ("dead", "unreadable"))
    code = EXIT_OK if running and not dead else EXIT_NOTHING
    books = _book_rates(ctx) if ctx.args.symbols else None
    if ctx.args.json:
        report: dict[str, Any] = {"feeders": entries, "running": running, "dead": dead, "time": now}
        if books is not None:
            report["books"] = [{**status_json(r.status), "updates_per_s": r.rate} for r in books]
        print(json.dumps(report))
        return code
    if not entries:
        print(f"no feeders (no {ctx.layout.feeder_pattern()} keys, none in {ctx.layout.registry_key()})")
        return code
    print(render_status(entries, now, verbose=ctx.args.verbose, width=shutil.get_terminal_size().columns))
    if books is not None:
        print()
        print("\n".join(render_book_rows(books)))
    return code


SYMBOL_RATE_SPAN = 1.0  # seconds between the two reads `md status --symbols` measures update rates over


def _book_rates(ctx: Context) -> list[WatchRow]:
    """Every book, read twice `SYMBOL_RATE_SPAN` apart: its state on the second read and its updates/s."""
    watch = Watch(ctx.provider, [], [])
    watch.refresh()
    time.sleep(SYMBOL_RATE_SPAN)
    return watch.refresh()


def _status_entry(
    feeder: str, state: str, heartbeat: str | None, fields: dict[str, str], ttl_ms: int | None
) -> dict[str, Any]:
    """One feeder for `md status`: what the table and ``--json`` show."""
    entry: dict[str, Any] = {
        "id": feeder, "state": state, "fields": fields, "ttl_ms": ttl_ms, "latency_ms": stage_latency(fields)
    }  # fmt: skip
    try:
        at = float(heartbeat) if heartbeat is not None else None
    except ValueError:
        at = None
    entry["heartbeat"] = at
    entry["age"] = None if at is None else max(0.0, time.time() - at)
    return entry


# --------------------------------------------------------------------------------------- md (un)subscribe
def cmd_subscribe(ctx: Context) -> int:
    return _change_wanted(ctx, add=True)


def cmd_unsubscribe(ctx: Context) -> int:
    return _change_wanted(ctx, add=False)


CHANGE_WAIT = 5.0  # seconds `md subscribe` / `md unsubscribe` wait for the books to follow, by default


def _change_wanted(ctx: Context, *, add: bool) -> int:
    """Record the change, then (``--wait``) report what each book did: fed and live, or not live and why. A
    symbol the exchange does not list never gets a book: this is where the user hears of it first."""
    exchange = normal_exchange(ctx.args.exchange)
    symbols = list(dict.fromkeys(normal_symbol(s) for s in ctx.args.symbols))
    run_flow(ctx.client, change_wanted_flow(ctx.layout, exchange, symbols, add=add))
    print(f"{exchange}: {'subscribed' if add else 'unsubscribed'} {', '.join(symbols)}")
    if ctx.args.wait <= 0:
        print("running feeders apply it within a second")
        return EXIT_OK
    feeders = _running_feeders(ctx, exchange)
    if not feeders:
        print(f"no feeder of {exchange} is running: the change applies when one starts")
        return EXIT_OK
    deadline = time.monotonic() + ctx.args.wait
    while True:
        states = {s.symbol: s for s, _ in ctx.provider.inspect_books([(exchange, x) for x in symbols])}
        done = [x for x in symbols if states[x].live == add]
        if len(done) == len(symbols) or time.monotonic() >= deadline:
            break
        time.sleep(CHANGE_POLL)
    width = max(len(x) for x in symbols)
    for x in symbols:
        status = states[x]
        if add and status.live:
            line = f"live, fed by {status.feeder}"
        elif add:
            line = (
                f"not live after {ctx.args.wait:g}s ({status.state.value}): is it listed by {exchange}? "
                f"Feeders report it as missing after MD_MISSING_AFTER (md status)"
            )
        elif not status.live:
            line = f"no longer served live ({status.state.value})"
        else:
            line = (
                f"still live after {ctx.args.wait:g}s, fed by {status.feeder} (a feeder of another prefix?)"
            )
        print(f"  {x.ljust(width)}  {line}")
    return EXIT_OK if len(done) == len(symbols) else EXIT_NOTHING


CHANGE_POLL = 0.2  # seconds between two reads of the changed books


def _feeder_records(ctx: Context) -> list[tuple[str, Any, Any]]:
    """Every feeder record (key, fields or an error value, PTTL), found by a SCAN on every primary."""
    keys = [k for node in primaries(ctx.client) for k in run_flow(node, feeder_keys_flow(ctx.layout))]
    return run_flow(ctx.client, feeder_records_flow(ctx.layout, keys))


def _running_feeders(ctx: Context, exchange: str) -> list[str]:
    """The feeders whose record says they run and feed `exchange` (the ones that apply the change now)."""
    found = []
    for name, raw, _ in _feeder_records(ctx):
        if isinstance(raw, Exception) or not raw:
            continue
        state, _, fields = split_record({_text(k): _text(v) for k, v in raw.items()})
        if state == "running" and exchange in fields.get("exchanges", "").replace(" ", "").split(","):
            found.append(_text(name))
    return found


# --------------------------------------------------------------------------------------------- md history
def cmd_history(ctx: Context) -> int:
    exchange, symbol = normal_exchange(ctx.args.exchange), normal_symbol(ctx.args.symbol)
    if ctx.args.last < 1:
        raise CliError("--last must be at least 1", EXIT_USAGE)
    books = ctx.provider.get_history(symbol, exchange, ctx.args.last)
    if not books:
        raise CliError(
            f"no history for {exchange}:{symbol} (feeders keep one with MD_HISTORY_MAXLEN)", EXIT_NOTHING
        )
    for book in books:
        if ctx.args.json:
            print(json.dumps({"exchange": exchange, "symbol": symbol, "seq": book.seq, "xid": book.xid,
                              "ts": book.timestamp, "recv_ts": book.recv_ts,
                              "bids": [list(level) for level in book.bids],
                              "asks": [list(level) for level in book.asks]}))  # fmt: skip
        else:
            print(history_line(book))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- md symbols
def cmd_symbols(ctx: Context) -> int:
    books = ctx.provider.all_books()
    by_exchange: dict[str, list[str]] = {}
    for exchange, symbol in books:
        by_exchange.setdefault(exchange, []).append(symbol)
    if ctx.args.json:
        wanted = normal_exchange(ctx.args.exchange) if ctx.args.exchange is not None else None
        shown = {x: s for x, s in by_exchange.items() if wanted is None or x == wanted}
        print(json.dumps(shown))
        return EXIT_OK if shown or wanted is None else EXIT_NOTHING
    if ctx.args.exchange is not None:
        exchange = normal_exchange(ctx.args.exchange)
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


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
