"""``md-sim``: run the exchange simulator until SIGINT/SIGTERM (the offline demo, benchmarks by hand)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from exchange_sim.simulator import ExchangeSimulator

log = logging.getLogger("exchange_sim")


def _version() -> str:
    """The installed package's version (the simulator imports nothing of the client but its models)."""
    try:
        return version("md-cache")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="md-sim",
        description="Local market-data WebSocket simulator of Upbit, Binance, Bithumb, Coinone, Bybit and OKX "
        "(books, replays, faults).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--upbit-port", type=int, default=8765, help="Upbit port, 0 = any (default %(default)s)"
    )
    parser.add_argument(
        "--binance-port", type=int, default=8766, help="Binance port, 0 = any (default %(default)s)"
    )
    for name in ("bithumb", "coinone", "bybit", "okx"):
        parser.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"serve {name.capitalize()} on this port (0 = any; default: off)",
        )
    parser.add_argument("--no-upbit", action="store_true", help="do not run the Upbit server")
    parser.add_argument("--no-binance", action="store_true", help="do not run the Binance server")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="updates/s per subscribed symbol (default 10)"
    )
    parser.add_argument(
        "--levels", type=int, default=30, help="Upbit units per frame by default (default 30)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="Binance ping interval, s (0 = none)"
    )
    parser.add_argument("--replay-upbit", metavar="FILE", help="replay this capture to Upbit clients")
    parser.add_argument("--replay-binance", metavar="FILE", help="replay this capture to Binance clients")
    parser.add_argument(
        "--replay-speed",
        type=float,
        default=1.0,
        help="1 = recorded pace, 0 = as fast as possible (default 1)",
    )
    parser.add_argument("--replay-loop", action="store_true", help="start a replay again when it ends")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


async def _run(args: argparse.Namespace) -> None:
    sim = ExchangeSimulator(
        host=args.host,
        upbit_port=None if args.no_upbit else args.upbit_port,
        binance_port=None if args.no_binance else args.binance_port,
        bithumb_port=args.bithumb_port,
        coinone_port=args.coinone_port,
        bybit_port=args.bybit_port,
        okx_port=args.okx_port,
        rate=args.rate,
        levels=args.levels,
        seed=args.seed,
        ping_interval=args.ping_interval or None,
        replay_upbit=args.replay_upbit,
        replay_binance=args.replay_binance,
        replay_speed=args.replay_speed or None,
        replay_loop=args.replay_loop,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sim:
            for name, server in sim.servers.items():
                log.info("%s: %s  control: %s/state", name, server.url, server.control_url)
            for name, path in (("upbit", args.replay_upbit), ("binance", args.replay_binance)):
                if path:
                    log.info(
                        "%s: replaying %s (speed %s) instead of generating books",
                        name,
                        path,
                        args.replay_speed,
                    )
            log.info("ready (rate %.3g/s per symbol, seed %d); Ctrl-C to stop", args.rate, args.seed)
            await stop.wait()
            log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    more = (args.bithumb_port, args.coinone_port, args.bybit_port, args.okx_port)
    if args.no_upbit and args.no_binance and all(port is None for port in more):
        build_parser().error("nothing to run: --no-upbit, --no-binance and no other exchange's port")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except OSError as exc:  # typically: the port is taken
        log.error("cannot start the simulator: %s", exc)
        return 1
    except ValueError as exc:  # a bad setting or an unreadable capture
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
