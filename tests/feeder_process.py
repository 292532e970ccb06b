"""Run `md-feeder` as a real subprocess for end-to-end tests, with its log kept for failure messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Fast timings so that tests observe reconnects, stalls and expiry in well under a second or two.
FAST = {
    "MD_PING_INTERVAL": "0.3",
    "MD_PING_TIMEOUT": "0.3",
    "MD_HEARTBEAT_INTERVAL": "0.2",
    "MD_HEARTBEAT_TTL": "1.0",
    "MD_RECONNECT_MAX_DELAY": "0.5",
    "MD_SUMMARY_INTERVAL": "5",
    "MD_LOG_LEVEL": "INFO",
}


class FeederProcess:
    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="md-feeder-", suffix=".log")[1])
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
        full_env.update(FAST)
        full_env.update(env)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "feeder", *(args or [])],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # no stray .env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


def wait_until(predicate, timeout: float, *, interval: float = 0.02, message: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)
