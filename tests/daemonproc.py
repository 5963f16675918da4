"""``sessiond serve`` as a subprocess for the operator tests: its log, its address, signals.

The daemon's stderr goes to a file the test reads; :meth:`DaemonProcess.wait_for` waits
until a line matching a pattern has appeared (a given number of times), so tests wait on
what the daemon says rather than on time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

TIMEOUT = 60.0  # generous: the machine may be loaded


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without SESSIOND_* variables, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


class DaemonProcess:
    """One ``python -m sessiond serve ARGS`` with its log in *log_file*."""

    def __init__(self, *args: str, log_file: Path, env: dict[str, str] | None = None) -> None:
        self.log_file = log_file
        self.output = log_file.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sessiond", "serve", *args],
            stdout=self.output,
            stderr=subprocess.STDOUT,
            env=env if env is not None else clean_environment(),
        )

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> re.Match[str]:
        """The *count*-th match of *pattern* in the log, once it is there (blocking: use
        :meth:`until` from a coroutine, so the test's own clients keep running)."""
        deadline = time.monotonic() + timeout
        while (found := self._match(pattern, count, deadline)) is None:
            time.sleep(0.05)
        return found

    async def until(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> re.Match[str]:
        """:meth:`wait_for` for coroutines."""
        deadline = time.monotonic() + timeout
        while (found := self._match(pattern, count, deadline)) is None:
            await asyncio.sleep(0.05)
        return found

    def _match(self, pattern: str, count: int, deadline: float) -> re.Match[str] | None:
        exited = self.proc.poll() is not None
        found = list(re.finditer(pattern, self.log))  # read after poll(): all it wrote
        if len(found) >= count:
            return found[count - 1]
        if exited:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} (x{count}) in the log:\n{self.log}")
        return None

    def address(self, scheme: str = "tcp") -> tuple[str, int]:
        """The first address it listens on with *scheme* (waits for the line)."""
        found = self.wait_for(rf"listening on {scheme}://([0-9.]+):(\d+)")
        return found.group(1), int(found.group(2))

    def url(self, scheme: str = "tcp") -> str:
        host, port = self.address(scheme)
        return f"{scheme}://{host}:{port}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM, then the exit status (it drains first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill it if it still runs (test clean-up, by PID)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.output.close()
