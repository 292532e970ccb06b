"""`md watch` on a terminal (rich): fits 80 columns, thousands separators, live green and the rest red."""

from __future__ import annotations

from rich.console import Console

from client import BookState, OrderBookSnapshot, SnapshotStatus
from md_cli.live_view import grouped, watch_table
from md_cli.render import WatchRow


def row(symbol: str, state: BookState, bid: float, ask: float, rate: float | None = 3.25) -> WatchRow:
    status = SnapshotStatus("upbit", symbol, state, age=0.2, seq=7, feeder="f1")
    return WatchRow(status, OrderBookSnapshot(symbol, 1.7e9, [(bid, 1.0)], [(ask, 1.0)]), rate)


def rendered(table: object, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=True, color_system="truecolor")
    console.print(table)
    return console.export_text(styles=True)


def test_the_table_fits_80_columns_with_separators_and_colours() -> None:
    rows = [
        row("KRW-BTC", BookState.LIVE, 120399000.0, 120401000.0),
        row("KRW-ETH", BookState.CONNECTION_DOWN, 4199000.0, 4200000.0, None),
    ]
    for width in (80, 120):
        text = rendered(
            watch_table(rows, "redis://127.0.0.1:6379/0", "md", max_rows=None, width=width), width
        )
        assert "120,399,000" in text and "120,401,000" in text
        assert "\x1b[32m" in text.split("KRW-BTC", 1)[1].split("\n", 1)[0]  # live: green
        assert "\x1b[1;31m" in text.split("KRW-ETH", 1)[1].split("\n", 1)[0]  # not live: bold red
        assert "redis://127.0.0.1:6379/0" in text
        console = Console(width=width, record=True)
        console.print(watch_table(rows, "redis://127.0.0.1:6379/0", "md", max_rows=None, width=width))
        plain = console.export_text()
        assert max(len(line.rstrip()) for line in plain.splitlines()) <= width
        if width >= 100:
            assert "SPREAD" in plain and "2,000" in plain
        else:
            assert "SPREAD" not in plain  # 80 columns: the spread in basis points only
        assert "…" not in plain  # nothing cut short
        assert "1 live, 1 not live" in plain and "down" in plain


def test_rows_that_do_not_fit_keep_the_books_that_are_not_live() -> None:
    rows = [row(f"KRW-C{i}", BookState.LIVE, 1.0, 2.0) for i in range(10)]
    rows.insert(5, row("KRW-BAD", BookState.FEEDER_DEAD, 1.0, 2.0))
    console = Console(width=100, record=True)
    console.print(watch_table(rows, "redis://x:1/0", "md", max_rows=3))
    text = console.export_text()
    assert "KRW-BAD" in text and "8 live books not shown" in text


def test_grouping_leaves_decimals_alone() -> None:
    assert [grouped(x) for x in ("120399000", "1234.5678", "0.00000912", "-", "2.2")] == [
        "120,399,000", "1,234.5678", "0.00000912", "-", "2.2"
    ]  # fmt: skip
