"""HTTP control of a running simulator, so a test or a CLI in another process can inject faults.

The endpoints are answered by websockets' ``process_request`` hook on **each exchange's own port**: a plain
HTTP ``GET`` (not a WebSocket upgrade) to ``http://host:PORT/_sim/<command>?…``. ``exchange`` defaults to the
exchange of the port that was asked, so ``curl http://127.0.0.1:8766/_sim/drop`` drops Binance connections;
either port can control either exchange with ``exchange=upbit|binance``. Only GET exists (websockets' HTTP
parser accepts nothing else), which is also what makes the endpoints usable from ``curl`` and a browser.

Every answer is JSON: ``{"ok": true, ...}`` or, with status 400/404, ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from exchange_sim.transport import write_immediately

if TYPE_CHECKING:
    from exchange_sim.simulator import ExchangeSimulator

ENDPOINTS: dict[str, str] = {
    "state": "counters, connections and the last book sent per symbol (truth=0 leaves the books out)",
    "drop": "abort connections without a close frame [connection=ID] [symbol=SYM]",
    "stall": "stop sending and reading [seconds=N, default until resumed] [connection] [symbol]",
    "resume": "end a stall [connection] [symbol]",
    "garbage": "send an invalid-JSON frame [payload=TEXT] [connection] [symbol]",
    "error": "send the exchange's error frame [name=UPBIT_NAME] [code=BINANCE_CODE] [message=TEXT]",
    "shutdown": "announce a restart (Binance serverShutdown; Upbit: close 1012)",
    "rate": "set updates per second per symbol: value=N [exchange; default: every exchange]",
    "health": "is the simulator up",
}


class ControlError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(ws: ServerConnection, status: int, obj: Any) -> Response:
    """A JSON HTTP response that is flushed completely before websockets closes the connection."""
    response = ws.respond(status, orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    # websockets aborts the TCP connection right after a non-101 response, dropping whatever is still
    # buffered above the low-water mark; with limits of 0 the send waits until every byte is written.
    write_immediately(ws)
    return response


def _int(q: dict[str, str], key: str) -> int | None:
    if key not in q:
        return None
    try:
        return int(q[key])
    except ValueError:
        raise ControlError(f"{key} must be an integer, not {q[key]!r}") from None


def _float(q: dict[str, str], key: str) -> float | None:
    if key not in q:
        return None
    try:
        value = float(q[key])
    except ValueError:
        raise ControlError(f"{key} must be a number, not {q[key]!r}") from None
    if not value >= 0:
        raise ControlError(f"{key} must be >= 0")
    return value


async def handle(
    sim: ExchangeSimulator, default_exchange: str, ws: ServerConnection, request: Request
) -> Response:
    """Answer one ``/_sim/...`` request."""
    parts = urlsplit(request.path)
    command = parts.path.removeprefix("/_sim").strip("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    try:
        result = await _dispatch(sim, command, query, default_exchange)
    except ControlError as exc:
        return json_response(ws, exc.status, {"ok": False, "error": str(exc)})
    except ValueError as exc:  # e.g. a negative rate
        return json_response(ws, 400, {"ok": False, "error": str(exc)})
    return json_response(ws, 200, {"ok": True, **result})


async def _dispatch(sim: ExchangeSimulator, command: str, q: dict[str, str], default: str) -> dict[str, Any]:
    exchange = q.get("exchange", default)
    if command in ("", "help"):
        return {"endpoints": ENDPOINTS}
    if command == "health":
        return {"exchanges": sorted(sim.servers)}
    if command == "state":
        return sim.state(with_truth=q.get("truth", "1") not in ("0", "false", "no"))
    if command == "rate":
        value = _float(q, "value")
        if value is None:
            raise ControlError("rate needs value=N")
        sim.set_rate(value, q.get("exchange"))
        return {"rate": value}
    if exchange not in sim.servers:
        raise ControlError(f"unknown exchange {exchange!r}; running: {sorted(sim.servers)}")
    target: dict[str, Any] = {"connection": _int(q, "connection"), "symbol": q.get("symbol") or None}
    actions: dict[str, Callable[[], Coroutine[Any, Any, int]]] = {
        "drop": lambda: sim.drop(exchange, **target),
        "stall": lambda: sim.stall(exchange, _float(q, "seconds"), **target),
        "resume": lambda: sim.resume(exchange, **target),
        "garbage": lambda: sim.send_garbage(exchange, q.get("payload"), **target),
        "error": lambda: sim.send_error(
            exchange, name=q.get("name"), code=_int(q, "code"), message=q.get("message"), **target
        ),
        "shutdown": lambda: sim.announce_shutdown(exchange, **target),
    }
    action = actions.get(command)
    if action is None:
        raise ControlError(f"unknown command {command!r}; see /_sim/help", status=404)
    return {"exchange": exchange, "affected": await action()}
