"""`md-feeder` (also ``python -m feeder``): run one feeder process until SIGTERM/SIGINT.

Settings come from ``MD_*`` variables and `.env`; flags override them. A bad value exits with status 2 and a
line naming the variable; a clean stop (signal) flushes, marks the feeder offline and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from client.errors import SettingsError
from client.settings import load_settings
from feeder.app import Feeder
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
    for name, help_text in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=help_text)
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


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
    try:
        settings = load_settings(FeederSettings, **overrides)
    except SettingsError as exc:
        print(f"md-feeder: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        feeder = Feeder(settings)
    except ValueError as exc:
        print(f"md-feeder: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_run(feeder))
    return feeder.exit_code


if __name__ == "__main__":
    sys.exit(main())
