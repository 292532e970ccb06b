"""The peer in `bench.load`: cryptofeed's Upbit feed and its Redis stream backend, pointed at the simulator.

``python -m bench.peer_cryptofeed --url WS --redis-port P SYMBOL...`` runs until SIGTERM. Three things are
patched, all outside the per-frame path: the WebSocket address (the simulator's instead of Upbit's), its
``wss://``-only check (the simulator speaks plain ``ws://`` on loopback) and the symbol list cryptofeed would otherwise fetch from Upbit's REST API at start-up (no network here). Every book
cryptofeed decodes is then written by its own code, as its users run it: ``BookStream`` (one ``XADD`` per
book to ``book-UPBIT-<BASE>-KRW``, pipelined per batch of its queue).

Needs the optional ``bench-peer`` extra (``pip install -e '.[bench-peer]'``); `bench.load` skips the peer rows
with a line saying so when it is not installed.
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the simulator's Upbit WebSocket URL")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("symbols", nargs="+", help="Upbit codes, e.g. KRW-B0001")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cryptofeed import FeedHandler
    from cryptofeed.backends.redis import BookStream
    from cryptofeed.connection import WebsocketEndpoint, WSAsyncConn
    from cryptofeed.defines import L2_BOOK, UPBIT
    from cryptofeed.exchanges import Upbit
    from cryptofeed.symbols import Symbol, Symbols

    mapping = {}
    info: dict[str, dict[str, str]] = {"instrument_type": {}}
    for code in args.symbols:
        quote, base = code.split("-")
        symbol = Symbol(base, quote)
        mapping[symbol.normalized] = code
        info["instrument_type"][symbol.normalized] = symbol.type
    Symbols.set(UPBIT, mapping, info)  # what Upbit.symbol_mapping() would have fetched
    Upbit.websocket_endpoints = [WebsocketEndpoint(args.url)]
    checked_init = WSAsyncConn.__init__

    def plain_ws_init(self: WSAsyncConn, address: str, conn_id: str, **kwargs: object) -> None:
        """cryptofeed accepts only wss:// addresses; the simulator on loopback speaks plain ws://."""
        checked_init(self, address.replace("ws://", "wss://", 1), conn_id, **kwargs)
        self.address = address

    WSAsyncConn.__init__ = plain_ws_init

    import asyncio

    import uvloop

    # cryptofeed runs on uvloop by default; its `run` asks for the current loop, which Python 3.11 no longer
    # creates on demand: the loop is made here, as cryptofeed's own examples did on older Pythons
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": False})
    backend = BookStream(host="127.0.0.1", port=args.redis_port)
    handler.add_feed(Upbit(symbols=list(mapping), channels=[L2_BOOK], callbacks={L2_BOOK: backend}))
    handler.run()  # until SIGTERM / SIGINT: cryptofeed installs its own handlers and stops its feeds


if __name__ == "__main__":
    main()
