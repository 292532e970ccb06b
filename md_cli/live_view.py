"""`md watch` on a terminal: a `rich` table redrawn in place on the alternate screen.

The screen the user had comes back when md stops (nothing is left in the scrollback), live books are green and
the others red with their reason, prices carry thousands separators (``120,399,000``), update rates are
smoothed over a few seconds (`md_cli.commands.RATE_WINDOW`), and the table fits the terminal: on 80 columns
the header is one short line and the Redis address goes to the caption. Piped or with ``--once``, md watch
prints plain text instead (`md_cli.render.render_watch`), which scripts and the README show.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from md_cli.render import WatchRow, clock, fmt_age, fmt_bps, fmt_num, fmt_spread


def grouped(text: str) -> str:
    """``120399000`` -> ``120,399,000``; decimals untouched (``0.00000912`` stays as it is)."""
    if text in ("-", "") or not text[0].isdigit():
        return text
    whole, dot, fraction = text.partition(".")
    return f"{int(whole):,}{dot}{fraction}"


_SHORT_STATES = {
    "connection_down": "down",
    "feeder_dead": "dead",
    "too_old": "stale",
    "unavailable": "no redis",
}
NARROW = 100  # columns below which the SPREAD column is left out (BPS says the same, relative)


def watch_table(
    rows: Sequence[WatchRow], where: str, prefix: str, *, max_rows: int | None, width: int = 120
) -> Table:
    """The table for one refresh; when it does not fit, books that are not live are kept and live ones left
    out. Below `NARROW` columns the spread is shown in basis points only, so that 80 columns suffice."""
    not_live = sum(1 for r in rows if not r.status.live)
    shown = list(rows)
    if max_rows is not None and len(rows) > max_rows:
        keep = [r for r in rows if not r.status.live][:max_rows]
        keep += [r for r in rows if r.status.live][: max_rows - len(keep)]
        order = {id(r): i for i, r in enumerate(rows)}
        shown = sorted(keep, key=lambda r: order[id(r)])
    hidden = len(rows) - len(shown)
    title = Text.assemble(
        ("md watch", "bold"), f"  {clock()}  {len(rows)} books: ",
        (f"{len(rows) - not_live} live", "green"), ", ",
        (f"{not_live} not live", "bold red" if not_live else "dim"),
    )  # fmt: skip
    caption = f"{where}  prefix {prefix}" + (f"  ({hidden} live books not shown)" if hidden else "")
    table = Table(
        title=title, caption=caption, title_justify="left", caption_justify="left", expand=False,
        box=None, pad_edge=False, padding=(0, 1), header_style="bold",
    )  # fmt: skip
    narrow = width < NARROW
    columns = [("EXCHANGE", False), ("SYMBOL", False), ("BID", True), ("ASK", True), ("SPREAD", True),
               ("BPS", True), ("AGE", True), ("UPD/S", True), ("STATUS", False)]  # fmt: skip
    if narrow:
        columns.remove(("SPREAD", True))
    for name, right in columns:
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for row in shown:
        status, book = row.status, row.book
        bid = book.best_bid() if book is not None else None
        ask = book.best_ask() if book is not None else None
        state = _SHORT_STATES.get(status.state.value, status.state.value) + (
            " (sim)" if status.simulated else ""
        )
        cells: list[str | Text] = [
            status.exchange or "?",
            status.symbol,
            grouped(fmt_num(bid)),
            grouped(fmt_num(ask)),
        ]
        if not narrow:
            cells.append(grouped(fmt_spread(bid, ask)) if bid is not None and ask is not None else "-")
        cells += [
            fmt_bps(bid, ask) if bid is not None and ask is not None else "-",
            fmt_age(status.age), "-" if row.rate is None else f"{row.rate:.1f}",
            Text(state, style="green" if status.live else "bold red"),
        ]  # fmt: skip
        table.add_row(*cells)
    if not rows:
        table.add_row("", "no books", *[""] * (len(columns) - 2))
    return table
