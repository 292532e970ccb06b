"""The md CLI as a real process (python -m md_cli) against a private redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.backends import Backend
from support.book_helpers import feeder_write as write_book
from support.book_helpers import set_feeder_state

from client import OrderBookSnapshot, __version__

BTC = OrderBookSnapshot(
    "KRW-BTC",
    1746601573.804,
    [(137001000.0, 0.03656812), (137000000.0, 0.33543284), (136999000.0, 1.5)],
    [(137002000.0, 0.10623869), (137003000.0, 2.0)],
)


def test_python_m_md_cli_against_a_real_redis(real_backend: Backend, tmp_path: Path) -> None:
    assert real_backend.url is not None
    set_feeder_state(real_backend.sync, "f1")
    write_book(real_backend.sync, BTC, "f1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}

    def md_process(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "md_cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )

    done = md_process("get", "upbit", "KRW-BTC", "--redis-url", real_backend.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("upbit:KRW-BTC  live") and "137001000" in done.stdout
    done = md_process("--redis-url", real_backend.url, "get", "KRW-BTC", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bids"] == [list(level) for level in BTC.bids]
    done = md_process("--redis-url", real_backend.url, "status")
    assert done.returncode == 0 and done.stdout.splitlines()[1].split()[:2] == ["f1", "running"]
    done = md_process("--redis-url", real_backend.url, "get", "upbit", "KRW-XRP")
    assert done.returncode == 1 and done.stdout == "" and "no book for upbit:KRW-XRP" in done.stderr


@pytest.mark.parametrize("module", ["md_cli", "feeder", "exchange_sim"])
def test_every_entry_point_tells_its_version(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert done.stdout.split()[-1] == __version__ != "0+unknown"
