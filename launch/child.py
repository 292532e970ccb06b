"""`ChildProcess`: a process the demo, a test or a benchmark starts, owns and always stops.

Its output goes to a log file (kept for failure messages and for operators of the demo); `stop` asks it to
end with SIGTERM (a feeder then flushes and marks itself offline) and kills it after a grace period, so every
child is reaped by its owner. It is stopped only through its own PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def clean_environment(overrides: Mapping[str, str] = {}) -> dict[str, str]:
    """This process's environment without any ``MD_*`` setting, plus `overrides`: a child reads only what
    it is given, whatever the caller's shell exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env.update(overrides)
    return env


class ChildProcess:
    """One child process with its log file."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        new_session: bool = False,
    ) -> None:
        """Start `args` now; `env` replaces the environment (None: inherit it); `new_session` keeps the
        terminal's Ctrl-C from reaching the child, so that its owner can stop children in order."""
        self.args = list(args)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            env=dict(env) if env is not None else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=new_session,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaped. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log()[-chars:]


def feeder_command(*args: str) -> list[str]:
    """``md-feeder`` as this interpreter runs it (no console script needed on the PATH)."""
    return [sys.executable, "-m", "feeder", *args]
