"""How ``md`` shows things: numbers, ages, a book's ladder, the watch table, a feeder's fields.

Pure functions of what the commands read (`md_cli.commands`), so each is tested on its own.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from client import OrderBookSnapshot, SnapshotStatus
from client.layout import stage_latency

_RED, _RESET = "\x1b[31m", "\x1b[0m"


@dataclass(frozen=True, slots=True)
class WatchRow:
    """One book in the watch table."""

    status: SnapshotStatus
    book: OrderBookSnapshot | None
    rate: float | None  # accepted writes per second since the previous refresh


def clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


# --------------------------------------------------------------------------------------------- books
def book_json(status: SnapshotStatus, book: OrderBookSnapshot, depth: int | None) -> dict[str, Any]:
    """The book as plain JSON types; the full book unless `depth` is given."""
    return {
        "exchange": status.exchange,
        "symbol": book.symbol,
        "status": status.state.value,
        "detail": status.detail,
        "ts": book.timestamp,
        "recv_ts": book.recv_ts,
        "age": status.age,
        "received_at": status.received_at,
        "written_at": status.written_at,
        "seq": book.seq,
        "xid": book.xid,
        "feeder": status.feeder,
        "simulated": status.simulated,
        "bids": [[p, q] for p, q in book.bids[:depth]],
        "asks": [[p, q] for p, q in book.asks[:depth]],
    }


def history_line(book: OrderBookSnapshot) -> str:
    """One past version: exchange time, seq, xid, best bid and ask, and the depth of each side."""
    when = datetime.fromtimestamp(book.timestamp, UTC).strftime("%H:%M:%S.%f")[:-3]
    bid, ask = book.best_bid(), book.best_ask()
    return (
        f"{when}  seq {book.seq}  xid {book.xid}  bid {fmt_num(bid)} x {len(book.bids)}  "
        f"ask {fmt_num(ask)} x {len(book.asks)}"
    )


def status_json(status: SnapshotStatus) -> dict[str, Any]:
    """A book's status as plain JSON types (`md watch --json`)."""
    return {
        "exchange": status.exchange,
        "symbol": status.symbol,
        "status": status.state.value,
        "live": status.live,
        "detail": status.detail,
        "age": status.age,
        "seq": status.seq,
        "feeder": status.feeder,
        "simulated": status.simulated,
    }


def _stages(status: SnapshotStatus, book: OrderBookSnapshot) -> str:
    """How long the book took from receipt to Redis accepting it (Redis's clock for both ends)."""
    if status.written_at is None or status.received_at is None:
        return ""
    return f"  written {max(0.0, status.written_at - status.received_at) * 1000:.1f} ms later"


def render_book(status: SnapshotStatus, book: OrderBookSnapshot, depth: int | None) -> list[str]:
    """Header lines and a bid/ask ladder, best prices on the first row, facing each other."""
    state = status.state.value if status.live else f"{status.state.value.upper()} (not live: {status.detail})"
    sim = "  SIMULATED (from md-sim, not a market)" if status.simulated else ""
    lines = [
        f"{status.exchange}:{book.symbol}  {state}{sim}",
        f"seq {status.seq}  feeder {status.feeder or '-'}  age {fmt_age(status.age)}  xid {book.xid}",
        f"exchange time {fmt_time(book.timestamp)}  received {fmt_time(book.recv_ts)}"
        + _stages(status, book),
        "",
    ]
    bids, asks = book.bids[:depth], book.asks[:depth]
    if not bids and not asks:
        return [*lines, "(empty book: no bids, no asks)"]
    rows: list[list[str]] = []
    for i in range(max(len(bids), len(asks))):
        bid = [fmt_num(bids[i][1]), fmt_num(bids[i][0])] if i < len(bids) else ["", ""]
        ask = [fmt_num(asks[i][0]), fmt_num(asks[i][1])] if i < len(asks) else ["", ""]
        rows.append([*bid, "|", *ask])
    lines += render_table(["BID QTY", "BID", "|", "ASK", "ASK QTY"], rows, right={0, 1, 3, 4})
    if len(bids) < len(book.bids) or len(asks) < len(book.asks):
        lines.append(
            f"(top {depth} of {len(book.bids)} bid and {len(book.asks)} ask levels; --depth 0 shows all)"
        )
    if book.bids and book.asks:
        bid_p, ask_p = book.bids[0][0], book.asks[0][0]
        lines.append(f"spread {fmt_spread(bid_p, ask_p)} ({fmt_bps(bid_p, ask_p)} bps)")
    return lines


# --------------------------------------------------------------------------------------------- the watch table
def render_watch(
    rows: Sequence[WatchRow], where: str, prefix: str, *, color: bool, max_rows: int | None
) -> list[str]:
    """The watch table; when it does not fit, books that are not live are kept and live ones left out."""
    not_live = sum(1 for r in rows if not r.status.live)
    title = (
        f"md watch  {where}  prefix {prefix}  {clock()}  "
        f"{len(rows)} books: {len(rows) - not_live} live, {not_live} not live"
    )
    if not rows:
        return [title, "no books"]
    shown = list(rows)
    hidden = 0
    if max_rows is not None and len(rows) > max_rows:
        keep = [r for r in rows if not r.status.live][:max_rows]
        keep += [r for r in rows if r.status.live][: max_rows - len(keep)]
        order = {id(r): i for i, r in enumerate(rows)}
        shown = sorted(keep, key=lambda r: order[id(r)])
        hidden = len(rows) - len(shown)
    table = [_watch_cells(r) for r in shown]
    headers = ["EXCHANGE", "SYMBOL", "BID", "ASK", "SPREAD", "BPS", "AGE", "UPD/S", "STATUS"]
    lines = render_table(headers, table, right={2, 3, 4, 5, 6, 7})
    if color:
        lines = [lines[0]] + [
            f"{_RED}{line}{_RESET}" if not r.status.live else line
            for line, r in zip(lines[1:], shown, strict=True)
        ]
    out = [title, *lines]
    if hidden:
        out.append(f"... {hidden} live books not shown (narrow with --exchange or symbols)")
    return out


def _watch_cells(row: WatchRow) -> list[str]:
    status, book = row.status, row.book
    bid = book.best_bid() if book is not None else None
    ask = book.best_ask() if book is not None else None
    spread = fmt_spread(bid, ask) if bid is not None and ask is not None else "-"
    bps = fmt_bps(bid, ask) if bid is not None and ask is not None else "-"
    rate = "-" if row.rate is None else f"{row.rate:.1f}"
    return [
        status.exchange or "?",
        status.symbol,
        fmt_num(bid),
        fmt_num(ask),
        spread,
        bps,
        fmt_age(status.age),
        rate,
        status.state.value + (" (sim)" if status.simulated else ""),
    ]


# --------------------------------------------------------------------------------------------- feeders
def heartbeat_age(value: str | None, now: float) -> str:
    if value is None:
        return "-"
    try:
        at = float(value)
    except ValueError:
        return repr(value)
    if at > 1e11:  # milliseconds rather than seconds
        at /= 1000
    return f"{fmt_age(now - at)} ago"


def fmt_ttl(ttl: Any) -> str:
    if not isinstance(ttl, int):
        return "?"
    if ttl < 0:
        return "none (never expires)"
    return fmt_age(ttl / 1000)


def render_status(entries: list[dict[str, Any]], now: float, *, verbose: bool, width: int) -> str:
    """`md status` as an aligned table, one feeder a row; `verbose` adds each one's counters below it."""
    head = (
        "FEEDER",
        "STATE",
        "HEARTBEAT",
        "EXPIRES",
        "CONNS",
        "WRITTEN",
        "BOOKS/S",
        "MISSING",
        "HOST",
        "LAST ERROR",
    )
    rows: list[tuple[str, ...]] = []
    for e in entries:
        f = e["fields"]
        age = e.get("age")
        when = (
            "-"
            if age is None
            else (f"dead since {fmt_age(age)} ago" if e["state"] == "dead" else f"{fmt_age(age)} ago")
        )
        ttl = e.get("ttl_ms")
        conns = (
            f"{f.get('connections_up', '?')}/{f.get('connections_total', '?')}"
            if "connections_total" in f
            else "-"
        )
        rows.append((
            e["id"], e["state"], when, "-" if ttl is None else fmt_ttl(ttl), conns,
            _thousands(f.get("written")), _rate(e), _count_missing(f.get("missing", "")),
            f"{f.get('host', '?')}:{f.get('pid', '?')}" if "host" in f else "-",
            (e.get("error") or f.get("last_error", ""))[:60],
        ))  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    for e, row in zip(entries, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if verbose and e["fields"]:
            counters = " ".join(f"{k}={shell_value(v)}" for k, v in sorted(e["fields"].items()))
            lines += textwrap.wrap(counters, width=max(width, 40), initial_indent="    ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False)  # fmt: skip
    running = sum(1 for e in entries if e["state"] == "running")
    dead = sum(1 for e in entries if e["state"] in ("dead", "unreadable"))
    lines.append(f"{len(entries)} feeders: {running} running, {dead} dead")
    latency = render_latency([e for e in entries if e["state"] == "running"])
    if latency:
        lines += ["", *latency]
    return "\n".join(lines)


STAGES = (
    ("exchange_to_recv", "EXCHANGE->RECEIVED p50/p99"),
    ("recv_to_written", "RECEIVED->WRITTEN p50/p99"),
)


def render_latency(entries: list[dict[str, Any]]) -> list[str]:
    """Per feeder and exchange, p50/p99 in ms of each stage over the feeder's recent books (empty: none)."""
    rows = []
    for e in entries:
        for exchange, stages in sorted(stage_latency(e["fields"]).items()):
            cells = []
            for stage, _ in STAGES:
                got = stages.get(stage)
                cells.append("-" if got is None else f"{got['p50']:.3g} / {got['p99']:.3g}")
            rows.append((e["id"], exchange, *cells))
    if not rows:
        return []
    head = ("LATENCY (ms)", "EXCHANGE", *(title for _, title in STAGES))
    return render_table(list(head), [list(r) for r in rows], right=set())


def render_book_rows(rows: Sequence[WatchRow]) -> list[str]:
    """`md status --symbols`: every book by its feeder, with updates/s, age, and live or why not."""
    ordered = sorted(rows, key=lambda r: (r.status.feeder or "", r.status.exchange or "", r.status.symbol))
    cells = [
        [r.status.feeder or "-", r.status.exchange or "?", r.status.symbol,
         "-" if r.rate is None else f"{r.rate:.1f}", fmt_age(r.status.age),
         "live" if r.status.live else f"{r.status.state.value}: {r.status.detail}"[:60]]
        for r in ordered
    ]  # fmt: skip
    return render_table(["FEEDER", "EXCHANGE", "SYMBOL", "UPD/S", "AGE", "STATE"], cells, right={3, 4})


def _thousands(value: str | None) -> str:
    try:
        return f"{int(value):,}" if value is not None else "-"
    except ValueError:
        return value or "-"


def _rate(entry: dict[str, Any]) -> str:
    """Books written per second over the feeder's life (the record has no history to smooth over)."""
    fields = entry["fields"]
    try:
        span = float(entry["heartbeat"]) - float(fields["started"])
        return f"{int(fields['written']) / span:,.1f}" if span > 0 else "-"
    except (KeyError, ValueError, TypeError):
        return "-"


def _count_missing(value: str) -> str:
    if not value:
        return "-"
    head, _, more = value.partition(",+")
    count = len([s for s in head.split(",") if s])
    if more:
        count += int(more.split()[0]) if more.split()[0].isdigit() else 0
    return str(count)


def shell_value(value: str) -> str:
    """A field value that stays one token on the line: quoted when empty or holding spaces."""
    return json.dumps(value) if value == "" or any(c.isspace() or c in "\"'" for c in value) else value


# --------------------------------------------------------------------------------------------- formatting
def fmt_num(value: float | None) -> str:
    """A price or size in plain decimal notation (never ``1e-05``), without float noise or trailing zeros.

    Up to 8 decimals; below 1, up to 8 significant digits, so that a token priced 0.00000912 keeps its
    digits instead of turning into 0.00000001. The value starts from its shortest repr, which is exactly
    the text the feeder stored.
    """
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return _fmt_decimal(Decimal(repr(value)))


def fmt_spread(bid: float, ask: float) -> str:
    """``ask - bid`` computed in decimal, so 70000.02 - 70000.01 shows 0.01, not 0.00999999999.."""
    return _fmt_decimal(Decimal(repr(ask)) - Decimal(repr(bid)))


def _fmt_decimal(value: Decimal) -> str:
    if value.is_zero():
        return "0"
    if value.adjusted() > 40:  # no real price; a hand-edited hash must not make the CLI crash
        return str(value)
    decimals = max(8, 7 - value.adjusted())  # adjusted(): position of the first significant digit
    with localcontext() as context:
        context.prec = 80
        text = format(value.quantize(Decimal(1).scaleb(-decimals)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def fmt_bps(bid: float, ask: float) -> str:
    """Spread in basis points of the mid price."""
    mid = (bid + ask) / 2
    if not mid > 0:
        return "-"
    bps = (ask - bid) / mid * 10_000
    return f"{bps:.2f}" if abs(bps) >= 0.1 else f"{bps:.4f}"  # tight books (BTCUSDT) keep a digit to show


def fmt_age(seconds: float | None) -> str:
    """A duration a person reads at a glance: 0.3s, 42s, 5m03s, 2h10m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + fmt_age(-seconds)  # clocks of feeder and reader disagree
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    except (OverflowError, OSError, ValueError):
        return repr(epoch)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; the columns in `right` (numbers) aligned right."""
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers)] + [line(r) for r in rows]
