"""`make demo` / `make run`: everything needed to see live books in one command.

``python -m launch.demo`` (offline): finds a Redis (the one at ``MD_REDIS_URL`` when that variable is set and
answers, otherwise a private ``redis-server`` on a free port), starts the exchange simulator and one feeder per
exchange pointed at it, and shows ``md watch`` until Ctrl-C. ``--live`` does the same against the real
exchanges (no simulator). ``--once`` waits until every book is live, prints one table and stops: the test and
CI use it.

This process owns every child it starts and stops each one (SIGTERM, then SIGKILL after a grace period) on
the way out, however it leaves; child logs go to files under the log directory so the terminal view stays
readable.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from client import RedisMarketDataProvider
from client.masking import mask_url
from feeder.exchanges.registry import EXCHANGES
from launch.child import ChildProcess, feeder_command
from launch.redis_server import LocalRedisServer, free_port
from md_cli.main import main as md_main

DEMO_PREFIX = "demo"  # the offline demo's books never share the keys live engines read (prefix md)
UPBIT_SYMBOLS = "KRW-BTC,KRW-ETH,KRW-USDT,KRW-XRP,KRW-SOL"
BINANCE_SYMBOLS = "BTCUSDT,ETHUSDT,XRPUSDT,SOLUSDT"
# the Korean-premium set beside them: the same coins on Bithumb and Coinone, and offshore on Bybit and OKX
MORE_SYMBOLS = {
    "bithumb": "KRW-BTC,KRW-ETH",
    "coinone": "KRW-BTC",
    "bybit": "BTCUSDT,ETHUSDT",
    "okx": "BTC-USDT",
}
TITLES = {"bithumb": "Bithumb", "coinone": "Coinone", "bybit": "Bybit", "okx": "OKX"}
SIM_PATHS = {"bithumb": "/websocket/v1", "coinone": "", "bybit": "/v5/public/spot", "okx": "/ws/v5/public"}


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def child(
    name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[ChildProcess]:
    """A child that inherits this environment (plus `env`) in a session of its own, stopped on exit.

    Its own session: Ctrl-C reaches only the demo, which stops children in order (feeders first, so they can
    flush and mark themselves offline while Redis is still there).
    """
    c = ChildProcess(args, log_dir / f"{name}.log", env={**os.environ, **(env or {})}, new_session=True)
    try:
        yield c
    finally:
        c.stop(grace=5.0)


def wait_for(check: Callable[[], bool], timeout: float, what: str, children: list[ChildProcess]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for c in children:
            if not c.alive():
                raise SystemExit(
                    f"demo: {c.log_path.stem} exited with {c.process.returncode}; see {c.log_path}"
                )
        if time.monotonic() > deadline:
            raise SystemExit(
                f"demo: {what} did not happen within {timeout:.0f}s; logs in {children[0].log_path.parent}"
            )
        time.sleep(0.1)


@contextmanager
def private_redis() -> Iterator[str]:
    try:
        server = LocalRedisServer()
    except RuntimeError:
        raise SystemExit(
            "demo: no Redis answers at MD_REDIS_URL and redis-server is not installed.\n"
            "      Install it (Debian/Ubuntu: sudo apt-get install redis-server) or set MD_REDIS_URL to a Redis."
        ) from None
    try:
        server.start()
        say(f"started a private redis-server at {server.url}")
        yield server.url
    finally:
        server.cleanup()


def run(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="md-demo-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    with ExitStack() as stack:
        url = os.environ.get("MD_REDIS_URL", "")
        if url and answers(url):
            say(f"using the Redis at MD_REDIS_URL ({mask_url(url)})")
        else:
            if url:
                say(f"no Redis answers at MD_REDIS_URL={mask_url(url)}: starting a private one")
            url = stack.enter_context(private_redis())
        prefix = args.prefix or ("md" if args.live else DEMO_PREFIX)
        if not args.live:
            refuse_real_books(url, prefix)
        children: list[ChildProcess] = []
        feeder_env = {
            "MD_REDIS_URL": url,
            "MD_PREFIX": prefix,
            "MD_SIMULATED": "false" if args.live else "true",
            "MD_UPBIT_SYMBOLS": UPBIT_SYMBOLS,
            "MD_BINANCE_SYMBOLS": BINANCE_SYMBOLS,
            **{f"MD_{name.upper()}_SYMBOLS": symbols for name, symbols in MORE_SYMBOLS.items()},
        }
        if not args.live:
            up, bp = free_port(), free_port()
            more_ports = {name: free_port() for name in MORE_SYMBOLS}
            sim = stack.enter_context(
                child(
                    "md-sim",
                    [
                        py,
                        "-m",
                        "exchange_sim",
                        "--upbit-port",
                        str(up),
                        "--binance-port",
                        str(bp),
                        "--rate",
                        str(args.rate),
                        *[a for name, port in more_ports.items() for a in (f"--{name}-port", str(port))],
                    ],
                    log_dir,
                )  # fmt: skip
            )
            children.append(sim)
            feeder_env["MD_UPBIT_URL"] = f"ws://127.0.0.1:{up}/websocket/v1"
            feeder_env["MD_BINANCE_URL"] = f"ws://127.0.0.1:{bp}"
            for name, port in more_ports.items():
                feeder_env[f"MD_{name.upper()}_URL"] = f"ws://127.0.0.1:{port}{SIM_PATHS[name]}"
            ports = [up, bp, *more_ports.values()]
            wait_for(lambda: all(_port_open(p) for p in ports), 15, "simulator start", children)
            say(
                f"simulator: Upbit ws://127.0.0.1:{up}/websocket/v1, Binance ws://127.0.0.1:{bp}, "
                + ", ".join(f"{TITLES[name]} {feeder_env[f'MD_{name.upper()}_URL']}" for name in more_ports)
            )
        else:
            urls = ", ".join(EXCHANGES[name].default_url for name in ("upbit", "binance", *MORE_SYMBOLS))
            say(f"connecting to the real exchanges ({urls})")
        # a feeder each for Upbit and Binance, one for the other four (a feeder may run several exchanges)
        for exchanges, name in (("upbit", "upbit"), ("binance", "binance"), (",".join(MORE_SYMBOLS), "more")):
            env = {**feeder_env, "MD_EXCHANGES": exchanges, "MD_FEEDER_ID": f"demo-{name}"}
            children.append(stack.enter_context(child(f"feeder-{name}", feeder_command(), log_dir, env)))
        say(f"feeders started; logs in {log_dir}")
        say(
            f"engines connect with MD_REDIS_URL={mask_url(url)} MD_PREFIX={prefix}  "
            "(e.g. python examples/arbitrage.py --redis-url URL --prefix PREFIX)"
        )
        provider = RedisMarketDataProvider.from_url(url, prefix=prefix)
        stack.callback(provider.stop)
        symbols = [("upbit", s) for s in UPBIT_SYMBOLS.split(",")] + [
            ("binance", s) for s in BINANCE_SYMBOLS.split(",")
        ]
        symbols += [(name, s) for name, listed in MORE_SYMBOLS.items() for s in listed.split(",")]

        def all_live() -> bool:
            return all(status.live for status, _ in provider.inspect_books(symbols))

        if args.once:
            wait_for(all_live, args.timeout, "every book live", children)
            return md_main(["--redis-url", url, "--prefix", prefix, "watch", "--once"])
        say("press Ctrl-C to stop everything")
        try:
            if sys.stdout.isatty():
                return md_main(["--redis-url", url, "--prefix", prefix, "watch", "--interval", "0.5"])
            # Not a terminal (a pipe, a log): a table every few seconds instead of a redrawn screen.
            wait_for(all_live, args.timeout, "every book live", children)
            while True:
                if md_main(["--redis-url", url, "--prefix", prefix, "watch", "--once"]) == 130:
                    return 0  # Ctrl-C (or SIGTERM) while md printed: md took it; stop as on any Ctrl-C
                time.sleep(5.0)
        finally:
            say("stopping feeders, simulator and Redis")
    return 0


def refuse_real_books(url: str, prefix: str) -> None:
    """Stop when the Redis holds, under `prefix`, books that a feeder of a real market wrote: the demo's
    simulated books would overwrite what live engines read."""
    provider = RedisMarketDataProvider.from_url(url, prefix=prefix)
    try:
        books = provider.all_books()
        real = [
            f"{status.exchange}:{status.symbol} (feeder {status.feeder})"
            for status, book in provider.inspect_books(books)
            if book is not None and not status.simulated
        ]
    finally:
        provider.stop()
    if real:
        raise SystemExit(
            f"demo: the Redis at {mask_url(url)} holds books under prefix {prefix!r} that did not come from the "
            f"simulator ({', '.join(real[:3])}{'…' if len(real) > 3 else ''}): the demo would overwrite them. "
            "Use another Redis (unset MD_REDIS_URL: the demo starts its own) or --prefix."
        )


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--live", action="store_true", help="feed from the real exchanges instead of the simulator"
    )
    parser.add_argument(
        "--once", action="store_true", help="wait until every book is live, print one table, stop"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="with --once: how long to wait (s)")
    parser.add_argument("--rate", type=float, default=5.0, help="simulator updates/s per symbol")
    parser.add_argument("--log-dir", help="where child logs go (default: a new temp directory)")
    parser.add_argument(
        "--prefix", help=f"key prefix of the demo's books (default {DEMO_PREFIX}; with --live: md)"
    )
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a supervisor, `timeout`: stop as on Ctrl-C
    try:
        return run(args)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: unwind, so that every child (simulator, feeders, Redis) is stopped by its owner."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
