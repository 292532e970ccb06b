"""`python -m bench --quick` keeps working: every benchmark runs at tiny sizes and its correctness checks hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_quick_benchmarks_run_and_their_checks_hold(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    names = {t["name"] for t in report["tables"]}
    assert set(BENCHMARKS) <= {n.split(":")[0] for n in names}, names
    for table in report["tables"]:
        assert table["rows"], f"{table['name']} printed no rows"
        assert not table["failures"], table
        assert table["title"] in done.stdout
    # the pictures, beside the numbers: real PNG files, one per benchmark that keeps samples
    for name in ("latency_cdf.png", "e2e_rate.png", "reconnect_timeline.png"):
        picture = tmp_path / name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5_000, name
        assert f"plot written to {picture}" in done.stdout
