"""The pictures `make bench` draws from the raw samples the benchmarks keep (`Context.series`).

- ``latency_cdf.png``: for each arrival pattern, the cumulative distribution of simulator send → book seen by
  a client, and of its two stages (send → feeder receive, feeder receive → client), in ms;
- ``e2e_rate.png``: books written per second against frames offered per second, one line per case, with the
  line where every frame would be written;
- ``reconnect_timeline.png``: after each dropped connection, when its books went down, came back live and
  caught up (ms from the drop), one row per scenario.

matplotlib draws off screen (Agg). A benchmark that did not run leaves its picture out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_plots(series: dict[str, list[dict[str, Any]]], outdir: Path) -> list[Path]:
    """Draw what `series` holds into `outdir`; the files written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename, draw in (
        ("latency", "latency_cdf.png", _latency),
        ("e2e", "e2e_rate.png", _e2e),
        ("reconnect", "reconnect_timeline.png", _reconnect),
    ):
        data = series.get(name)
        if data:
            path = outdir / filename
            figure = draw(data)
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
    return written


def _latency(data: list[dict[str, Any]]) -> Any:
    arrivals = sorted({d["arrival"] for d in data})
    figure, axes = plt.subplots(1, len(arrivals), figsize=(6 * len(arrivals), 4), squeeze=False)
    for ax, arrival in zip(axes[0], arrivals, strict=True):
        for d in (d for d in data if d["arrival"] == arrival):
            ms = sorted(d["ms"])
            if ms:
                ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=d["stage"])
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of books")
        ax.set_title(f"latency per stage, {arrival}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return figure


def _e2e(data: list[dict[str, Any]]) -> Any:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    top = 0.0
    for case in dict.fromkeys(d["case"] for d in data):
        points = sorted((d["offered"], d["written"]) for d in data if d["case"] == case)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=case)
        top = max(top, *(p[0] for p in points))
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="every frame written")
    ax.set_xlabel("frames offered / s")
    ax.set_ylabel("books written / s")
    ax.set_title("one feeder: books written against the offered rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return figure


_EVENTS = (("down", "first book down"), ("all_down", "all down"), ("live", "first live again"),
           ("all_live", "all live again"), ("caught_up", "caught up"))  # fmt: skip


def _reconnect(data: list[dict[str, Any]]) -> Any:
    figure, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * len(data)))
    for row, d in enumerate(data):
        for n, (key, label) in enumerate(_EVENTS):
            values = d.get(key) or []
            ax.scatter(values, [row] * len(values), s=18, color=f"C{n}", label=label if row == 0 else None)
    ax.set_yticks(range(len(data)), [d["case"] for d in data], fontsize=8)
    ax.set_xlabel("ms after the connection was dropped")
    ax.set_title("reconnect timeline: every drop of every scenario")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure
