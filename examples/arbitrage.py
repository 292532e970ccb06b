"""Upbit/Binance BTC premium, printed every time either book updates.

An engine loop written against the `MarketDataProvider` interface: the only line that knows about the shared
cache is the constructor. Run it against the offline demo (``make demo`` prints the Redis URL; its books are
under the prefix ``demo``):

    MD_REDIS_URL=redis://127.0.0.1:PORT/0 MD_PREFIX=demo .venv/bin/python examples/arbitrage.py
    .venv/bin/python examples/arbitrage.py --redis-url redis://127.0.0.1:PORT/0 --prefix demo --count 20

The premium compares Upbit's KRW-BTC with Binance's BTCUSDT converted at Upbit's KRW-USDT price:
``premium = upbit_mid / (binance_mid * usdt_krw_mid) - 1`` (the "kimchi premium").
"""

from __future__ import annotations

import argparse
import sys
import time

from client import OrderBookSnapshot, RedisMarketDataProvider

PAIR = ("KRW-BTC", "BTCUSDT")
RATE = "KRW-USDT"


def mid(book: OrderBookSnapshot) -> float | None:
    bid, ask = book.best_bid(), book.best_ask()
    return None if bid is None or ask is None else (bid + ask) / 2


def premium(
    upbit_btc: OrderBookSnapshot, binance_btc: OrderBookSnapshot, usdt_krw: OrderBookSnapshot
) -> float | None:
    u, b, r = mid(upbit_btc), mid(binance_btc), mid(usdt_krw)
    if u is None or b is None or r is None or b * r == 0:
        return None
    return u / (b * r) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="default: MD_REDIS_URL")
    parser.add_argument("--mode", choices=["mirror", "read-through"], default="mirror")
    parser.add_argument("--prefix", help="key prefix (default: MD_PREFIX; the offline demo's is demo)")
    parser.add_argument(
        "--count", type=int, default=0, help="stop after this many premiums (0: run until Ctrl-C)"
    )
    args = parser.parse_args(argv)

    # The one line that changes when moving from the in-process WebSocket provider:
    if args.redis_url:
        provider = RedisMarketDataProvider.from_url(args.redis_url, mode=args.mode, prefix=args.prefix)
    else:
        provider = RedisMarketDataProvider(mode=args.mode, prefix=args.prefix)

    printed = 0
    with provider:
        try:
            while not args.count or printed < args.count:
                updated = provider.wait_for_update(PAIR, timeout=5.0)  # event-driven: no polling
                if not updated:
                    print("no update for 5 s: is a feeder running (make demo)?", file=sys.stderr, flush=True)
                    continue
                books = provider.get_latest_snapshots([*PAIR, RATE])
                missing = [s for s, b in books.items() if b is None]
                if missing:
                    print(f"not live: {', '.join(missing)} (skipping)", file=sys.stderr, flush=True)
                    continue
                value = premium(books["KRW-BTC"], books["BTCUSDT"], books[RATE])  # type: ignore[arg-type]
                if value is None:
                    continue
                which = ",".join(sorted(s.symbol for s in updated))
                upbit, binance, rate = (mid(books[s]) for s in (*PAIR, RATE))  # type: ignore[arg-type]
                print(
                    f"{time.strftime('%H:%M:%S')} premium {value:+.4%}  upbit {upbit:,.0f} KRW  "
                    f"binance {binance:,.2f} USDT  usdt {rate:,.1f} KRW  (updated {which})",
                    flush=True,
                )
                printed += 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
