"""``md``: look at the shared market-data cache from a terminal.

    md get [EXCHANGE] SYMBOL [--json] [--depth N]    one book: status line and a bid/ask ladder
    md watch [--exchange EX ...] [--sort KEY] [--only live|not-live] [SYMBOL ...]
                                                    live table: best bid/ask, spread, age, updates/s, status
    md status                                        feeder processes: state, heartbeat age, ttl, counters
    md symbols [EXCHANGE]                            the books each exchange has, from the indexes

Global options ``--redis-url`` and ``--prefix`` (before or after the command) default to ``MD_REDIS_URL`` and
``MD_PREFIX``. Commands live in `md_cli.commands`, their rendering in `md_cli.render`.

Exit codes: 0 done; 1 nothing to show (missing or corrupt book, unknown exchange) or Redis answered with an
error; 2 bad usage, invalid name or invalid ``MD_*`` setting; 3 Redis unreachable. Ctrl-C ends ``watch`` with 0.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.exceptions

from client import ClientSettings, RedisMarketDataProvider, __version__, load_settings
from client.errors import AmbiguousSymbolError, InvalidSymbolError, SettingsError, redis_failure
from client.topology import describe, sync_client
from md_cli.commands import (
    CHANGE_WAIT,
    DEFAULT_DEPTH,
    LIST_REFRESH,
    REDIS_DOWN,
    SORT_KEYS,
    cmd_get,
    cmd_history,
    cmd_status,
    cmd_subscribe,
    cmd_symbols,
    cmd_unsubscribe,
    cmd_watch,
)
from md_cli.context import EXIT_NOTHING, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError, Context

ClientFactory = Callable[[ClientSettings], redis.Redis]


def make_client(settings: ClientSettings) -> redis.Redis:
    """The CLI's own Redis client, built as an engine's provider builds its read client (it only reads)."""
    return sync_client(settings, read=True)


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
    if getattr(args, "record", False):
        return record_traffic(args)
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
    where = describe(settings, read=True)
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
    except REDIS_DOWN as exc:
        print(f"md: cannot reach Redis at {where}: {redis_failure(exc)}", file=sys.stderr)
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


EXCHANGE_NAMES = ("upbit", "binance", "bithumb", "coinone", "bybit", "okx")
"""The exchanges the feeders speak, for the help text (a test keeps it in step with the feeder's registry)."""


def record_traffic(args: argparse.Namespace) -> int:
    """`md record`: the feeder's recorder (``md-feeder --record``) in a child process, which knows the
    exchanges' protocols (md itself reads Redis only); its output and exit status are md's."""
    exchange = args.exchange.strip().lower()
    if args.seconds is None and args.frames is None:
        print("md: record needs --seconds or --frames (or both)", file=sys.stderr)
        return EXIT_USAGE
    env = {**os.environ, "MD_EXCHANGES": exchange, f"MD_{exchange.upper()}_SYMBOLS": args.symbols}
    if args.url:
        env[f"MD_{exchange.upper()}_URL"] = args.url
    command = [sys.executable, "-m", "feeder", "--record", args.file]
    if args.seconds is not None:
        command += ["--record-seconds", str(args.seconds)]
    if args.frames is not None:
        command += ["--record-frames", str(args.frames)]
    return subprocess.run(command, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted after the command too (`md get KRW-BTC --redis-url ...`): the
    # sub-parsers declare them with SUPPRESS so that leaving them out there keeps the main parser's value.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="md",
        description="Inspect the shared market-data cache in Redis.",
        epilog=f"exchanges: {', '.join(EXCHANGE_NAMES)} (md symbols lists those with books; a symbol on "
        "several of them needs its EXCHANGE). exit codes: 0 ok, 1 nothing to show, 2 bad usage or setting, "
        "3 Redis unreachable",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    watch.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="book",
        help="row order: book (exchange, symbol; the default), age (oldest first), rate (busiest first), "
        "spread (widest in bps first), status (not live first)",
    )
    watch.add_argument(
        "--only", choices=("live", "not-live"), default=None, help="show only the live or the not-live books"
    )
    watch.add_argument("--once", action="store_true", help="print one table and exit")
    watch.add_argument(
        "--json", action="store_true", help="JSON instead of a table: one object per refresh, one line each"
    )
    watch.set_defaults(command=cmd_watch)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="list feeders (exit 1 when none runs or one is dead)",
        description="Every feeder seen: running, offline (stopped cleanly) or dead (its record expired), with "
        "heartbeat age, time to expiry, connections, books written and their rate, missing symbols, last error. "
        "Exit status 0 when at least one feeder runs and none is dead, else 1: usable as a health check.",
    )
    status.add_argument("--json", action="store_true", help="print every feeder and its fields as JSON")
    status.add_argument("-v", "--verbose", action="store_true", help="every counter of every feeder")
    status.add_argument("--all", action="store_true", help="also feeders dead for more than a day")
    status.add_argument(
        "--symbols",
        action="store_true",
        help="every book by feeder: updates/s (over 1 s), age, live or why not",
    )
    status.set_defaults(command=cmd_status)

    for name, verb in (("subscribe", "add to"), ("unsubscribe", "remove from")):
        change = sub.add_parser(
            name,
            parents=[common],
            help=f"{verb} the symbols running feeders of an exchange feed (within a second)",
            usage=f"md {name} EXCHANGE SYMBOL... [--wait SECONDS]",
            description=f"{verb.capitalize()} the wanted set of EXCHANGE (md:wanted:<exchange>); every running "
            "feeder of it applies the change within a second, on its open connections (no reconnect of the "
            "untouched ones). Needs a Redis user allowed to SADD/SREM md:wanted:*.",
        )
        change.add_argument("exchange", metavar="EXCHANGE")
        change.add_argument("symbols", nargs="+", metavar="SYMBOL")
        change.add_argument(
            "--wait",
            type=_seconds,
            default=CHANGE_WAIT,
            metavar="SECONDS",
            help=f"wait up to this long for each book to be {'live' if name == 'subscribe' else 'no longer live'} "
            f"and report each one (default {CHANGE_WAIT:g}; 0: do not wait); exit 1 when one is not",
        )
        change.set_defaults(command=cmd_subscribe if name == "subscribe" else cmd_unsubscribe)

    history = sub.add_parser(
        "history",
        parents=[common],
        help="a book's past versions (feeders with MD_HISTORY_MAXLEN)",
        usage="md history EXCHANGE SYMBOL [--last N] [--json]",
        description="The book's last N versions from its capped history, oldest first: time, seq, xid, best "
        "bid and ask; --json prints every version whole, one per line.",
    )
    history.add_argument("exchange", metavar="EXCHANGE")
    history.add_argument("symbol", metavar="SYMBOL")
    history.add_argument("--last", type=int, default=20, metavar="N", help="how many versions (default 20)")
    history.add_argument("--json", action="store_true", help="one JSON object per version")
    history.set_defaults(command=cmd_history)

    rec = sub.add_parser(
        "record",
        help="record an exchange's live traffic into a file md-sim can replay",
        usage="md record FILE --exchange EXCHANGE --symbols A,B [--seconds S] [--frames N] [--url URL]",
        description="Open the connection a feeder would and write every frame with its receive time, in the "
        "capture format `md-sim --replay-<exchange> FILE` plays back (one exchange per file). Runs the feeder's "
        "recorder (md-feeder --record), which knows the exchanges' protocols.",
    )
    rec.add_argument("file", metavar="FILE")
    rec.add_argument("--exchange", required=True, help="the exchange (upbit, binance, ...)")
    rec.add_argument("--symbols", required=True, help="comma-separated symbols in the exchange's spelling")
    rec.add_argument("--seconds", type=float, help="stop after this many seconds")
    rec.add_argument("--frames", type=int, help="stop after this many frames")
    rec.add_argument("--url", help="the exchange's WebSocket URL (default: its public endpoint)")
    rec.set_defaults(command=None, record=True)

    symbols = sub.add_parser(
        "symbols",
        parents=[common],
        help="list books per exchange",
        description="The books each exchange has, from the indexes. With EXCHANGE: one symbol per line.",
    )
    symbols.add_argument("exchange", nargs="?", metavar="EXCHANGE")
    symbols.add_argument("--json", action="store_true", help="print {exchange: [symbols]} as JSON")
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
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
