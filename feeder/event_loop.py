"""Which event loop the feeder runs on: asyncio's own by default, uvloop on request (``MD_EVENT_LOOP``).

uvloop (libuv, in C) makes the loop's own work per wake-up, per socket read and per write cheaper. It is an
optional extra (``pip install 'md-cache[fast]'``) and not the default, for two measured reasons
(docs/performance.md):
- it gave no measurable gain: the feeder's time goes to Python code, not to the loop;
- its transports raise RuntimeError when redis-py writes to a connection the server closed, where asyncio's
  fail as connection errors. On a Cluster node restart that escaped redis-py's reconnect and stopped the
  feeder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(the loop's name, a factory for `asyncio.Runner`; None is asyncio's default) for ``MD_EVENT_LOOP``.

    ValueError when uvloop is asked for by name and is not installed."""
    if choice == "asyncio" or (choice == "auto" and importlib.util.find_spec("uvloop") is None):
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        raise ValueError(
            "MD_EVENT_LOOP: uvloop is not installed (pip install 'md-cache[fast]', or MD_EVENT_LOOP=auto)"
        ) from None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """Run `main` to completion on the loop ``MD_EVENT_LOOP`` names (ValueError: see `loop_factory`)."""
    try:
        name, factory = loop_factory(choice)
    except ValueError:
        main.close()
        raise
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
