"""Tables, the run context and the JSON report shared by every benchmark."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.redis_server import LocalRedisServer


@dataclass
class Table:
    """One benchmark's result: rows of numbers, and correctness checks that fail the run when false."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def check(self, ok: bool, message: str) -> bool:
        """A correctness check (not a speed target): a false one makes `python -m bench` exit 1."""
        if not ok:
            self.failures.append(message)
        return ok

    def render(self) -> str:
        cells = [[_fmt(v) for v in row] for row in self.rows]
        widths = [
            max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(self.columns)
        ]
        lines = [f"== {self.title} =="]
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(self.columns, widths, strict=False))
            )
        )
        for row in cells:
            lines.append(
                "  ".join(
                    v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=False))
                )
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  FAILED CHECK: {f}" for f in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
            "failures": self.failures,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.2f}"
        return f"{value:.2g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; samples need not be sorted."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def best_rate(fn: Any, items: int, *, repeat: int = 5, min_time: float = 0.2) -> float:
    """Items per second of `fn()` (which processes `items` items), best of `repeat` timed runs."""
    best = 0.0
    for _ in range(repeat):
        loops, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < min_time:
            fn()
            loops += 1
            elapsed = time.perf_counter() - start
        best = max(best, loops * items / elapsed)
    return best


@dataclass
class Context:
    """What every benchmark gets: the size, a private redis-server, a scratch directory."""

    quick: bool
    workdir: Path
    _redis: LocalRedisServer | None = None
    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Raw samples kept for the plots (`bench.plots`), by benchmark."""

    def keep(self, benchmark: str, **data: Any) -> None:
        self.series.setdefault(benchmark, []).append(data)

    def redis(self) -> LocalRedisServer:
        """The run's private redis-server, flushed (never the machine's own Redis)."""
        if self._redis is None:
            self._redis = LocalRedisServer()
            self._redis.start()
        import redis as redis_lib

        client = redis_lib.Redis.from_url(self._redis.url)
        client.flushall()
        client.close()
        return self._redis

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._redis is not None:
            self._redis.cleanup()
            self._redis = None


def machine() -> dict[str, Any]:
    def cmd(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis": cmd("redis-server", "--version"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
