"""`md-feeder` (also ``python -m feeder``): run one feeder process until SIGTERM/SIGINT.

Settings come from ``MD_*`` variables and `.env`; flags override them. A bad value exits with status 2 and a
line naming the variable; a clean stop (signal) flushes, marks the feeder offline and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from client import __version__
from client.errors import SettingsError
from client.settings import load_settings
from feeder import event_loop
from feeder.app import Feeder
from feeder.log_format import configure_logging
from feeder.recorder import record
from feeder.settings import FeederSettings

FLAGS = {
    "exchanges": "comma-separated exchanges to feed (MD_EXCHANGES)",
    "upbit_symbols": "comma-separated Upbit codes, e.g. KRW-BTC,KRW-ETH (MD_UPBIT_SYMBOLS)",
    "binance_symbols": "comma-separated Binance symbols, e.g. BTCUSDT,ETHUSDT (MD_BINANCE_SYMBOLS)",
    "shard": "take share K of N of each symbol list, e.g. 2/4 (MD_SHARD)",
    "upbit_url": "Upbit WebSocket URL, e.g. the simulator's (MD_UPBIT_URL)",
    "binance_url": "Binance WebSocket base URL (MD_BINANCE_URL)",
    "feeder_id": "id of this feeder in Redis (MD_FEEDER_ID)",
    "redis_url": "Redis URL (MD_REDIS_URL)",
    "prefix": "key prefix (MD_PREFIX)",
    "log_level": "DEBUG, INFO, WARNING or ERROR (MD_LOG_LEVEL)",
}


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="md-feeder",
        description="Feed exchange order books into the shared Redis cache. Flags override MD_* settings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, help_text in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=help_text)
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="instead of feeding Redis: record the traffic of one exchange (MD_EXCHANGES) into FILE, in the "
        "capture format md-sim --replay-<exchange> plays back",
    )
    parser.add_argument("--record-seconds", type=float, metavar="S", help="stop recording after S seconds")
    parser.add_argument("--record-frames", type=int, metavar="N", help="stop recording after N frames")
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="ask the running feeder's /healthz (MD_METRICS_PORT on 127.0.0.1) and exit 0 when healthy, "
        "1 when not (a container HEALTHCHECK)",
    )
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None and v is not False}


def healthcheck(settings: FeederSettings) -> int:
    """0 when the feeder on this machine answers /healthz with 200; its reasons otherwise, and 1."""
    if settings.metrics_port is None:
        print("md-feeder: MD_METRICS_PORT is not set: no health endpoint to ask", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except urllib.error.HTTPError as error:
        print(f"md-feeder: unhealthy: {error.read().decode(errors='replace').strip()}", file=sys.stderr)
    except OSError as exc:
        print(f"md-feeder: no answer from {url}: {exc}", file=sys.stderr)
    return 1


async def _run(feeder: Feeder) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await feeder.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    check = overrides.pop("healthcheck", False)
    recording = overrides.pop("record", None)
    seconds = overrides.pop("record_seconds", None)
    frames = overrides.pop("record_frames", None)
    try:
        settings = load_settings(FeederSettings, **overrides)
    except SettingsError as exc:
        print(f"md-feeder: {exc}", file=sys.stderr)
        return 2
    if check:
        return healthcheck(settings)
    if recording is not None:
        configure_logging(settings.log_level, settings.log_format)
        if seconds is None and frames is None:
            print("md-feeder: --record needs --record-seconds or --record-frames (or both)", file=sys.stderr)
            return 2
        try:
            event_loop.run(
                record(settings, Path(recording), seconds=seconds, frames=frames), settings.event_loop
            )
        except (ValueError, OSError) as exc:
            print(f"md-feeder: cannot record: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ValueError) else 1
        return 0
    configure_logging(settings.log_level, settings.log_format)
    try:
        feeder = Feeder(settings)
    except ValueError as exc:
        print(f"md-feeder: {exc}", file=sys.stderr)
        return 2
    try:
        event_loop.run(_run(feeder), settings.event_loop)
    except ValueError as exc:  # uvloop asked for by name and not installed
        print(f"md-feeder: {exc}", file=sys.stderr)
        return 2
    return feeder.exit_code


if __name__ == "__main__":
    sys.exit(main())
