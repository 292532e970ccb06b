"""Run `md-feeder` as a real subprocess for end-to-end tests, with its log kept for failure messages."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from launch.child import ChildProcess, clean_environment, feeder_command

# Fast timings so that tests observe reconnects, stalls and expiry in well under a second or two.
FAST = {
    "MD_PING_INTERVAL": "0.3",
    "MD_PING_TIMEOUT": "0.3",
    "MD_HEARTBEAT_INTERVAL": "0.2",
    "MD_HEARTBEAT_TTL": "1.0",
    "MD_RECONNECT_MAX_DELAY": "0.5",
    "MD_SUMMARY_INTERVAL": "5",
    "MD_LOG_LEVEL": "INFO",
    # a test that forgets the simulator's URLs must not reach the real exchanges: tests talk only to 127.0.0.1
    "MD_UPBIT_URL": "ws://127.0.0.1:1/websocket/v1",
    "MD_BINANCE_URL": "ws://127.0.0.1:1",
    "MD_BINANCE_FALLBACK_URLS": "",
    "MD_BITHUMB_URL": "ws://127.0.0.1:1/websocket/v1",
    "MD_COINONE_URL": "ws://127.0.0.1:1",
    "MD_BYBIT_URL": "ws://127.0.0.1:1/v5/public/spot",
    "MD_OKX_URL": "ws://127.0.0.1:1/ws/v5/public",
}


class FeederProcess(ChildProcess):
    """``python -m feeder`` with the fast test timings plus `env`, run in the temp directory (no stray .env)."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        log_path = Path(tempfile.mkstemp(prefix="md-feeder-", suffix=".log")[1])
        super().__init__(
            feeder_command(*(args or [])),
            log_path,
            # each test feeder paces its connections as a host of its own: tests share one Redis, and one
            # test's reconnects must not eat the next one's budget (tests/integration/test_pacing.py shares)
            env=clean_environment({**FAST, "MD_PACING_HOST": f"test-{uuid.uuid4().hex[:12]}", **env}),
            cwd=tempfile.gettempdir(),
        )

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


def wait_until(
    predicate: Callable[[], object], timeout: float, *, interval: float = 0.02, message: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)
