"""Bithumb's side of the simulator: its public WebSocket v1 is Upbit's dialect (`exchange_sim.upbit`), so
`BithumbServer` is `UpbitServer` with Bithumb's differences (see `feeder.exchanges.bithumb` for the sources):

- endpoint ``/websocket/v1``; the request ``[{"ticket"},{"type":"orderbook","codes":[...]},{"format"}]``
  with the formats DEFAULT and SIMPLE only (JSON_LIST / SIMPLE_LIST get WRONG_FORMAT); a ``CODE.N`` suffix
  (undocumented; the example request has ``KRW-ETH.3``) asks for N units, 1 to 30;
- orderbook frames in the documented field order: ``type, code, total_ask_size, total_bid_size,
  orderbook_units, level, timestamp, stream_type``, whole prices written as integers (``478800``), binary
  WebSocket messages like Upbit's (Bithumb's frame type is undocumented);
- errors ``{"error":{"name","message"}}`` then a close; the text ``PING`` gets ``{"status":"UP"}``;
- ``max_connects_per_second`` (None: off, the default, so that tests opening many connections are not
  limited; Bithumb's documented limit is 10 per IP): a handshake beyond it within one second from one IP gets
  HTTP 429 Too Many Requests.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from websockets.http11 import Request, Response

from exchange_sim.transport import SimConnection
from exchange_sim.upbit import UpbitServer

FORMATS = ("DEFAULT", "SIMPLE")
UNIT_CHOICES = tuple(range(1, 31))
CONNECTS_PER_SECOND = 10  # documented, per IP


class BithumbServer(UpbitServer):
    """Bithumb's public WebSocket v1 at ``ws://host:port/websocket/v1``."""

    name = "bithumb"
    formats = FORMATS
    unit_choices = UNIT_CHOICES
    default_units = 15  # the documented example's 15 units
    unit_fallback = None  # Bithumb's answer to other counts is not documented: the simulator refuses them
    timestamp_last = True
    integer_prices = True

    def __init__(self, *, max_connects_per_second: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_connects_per_second = max_connects_per_second
        self._connects: dict[str, deque[float]] = {}
        self.counters["connects_refused"] = 0

    def check_handshake(self, ws: SimConnection, request: Request) -> Response | None:
        refused = super().check_handshake(ws, request)
        if refused is not None or self.max_connects_per_second is None:
            return refused
        remote = str(ws.remote_address[0]) if ws.remote_address else "?"
        now = time.monotonic()
        times = self._connects.setdefault(remote, deque())
        while times and now - times[0] >= 1.0:
            times.popleft()
        times.append(now)  # every request counts, refused ones too
        if len(times) > self.max_connects_per_second:
            self.counters["connects_refused"] += 1
            return ws.respond(429, "Too Many Requests\n")
        return None
