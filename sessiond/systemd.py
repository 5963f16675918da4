"""systemd's readiness protocol (``Type=notify``), without a dependency: one datagram per
notification to the unix socket named by ``$NOTIFY_SOCKET`` (sd_notify(3)).

The daemon sends ``READY=1`` once every listener is bound, ``RELOADING=1`` then
``READY=1`` around a SIGHUP reload, ``STOPPING=1`` when it starts draining, and
``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when the unit sets ``WatchdogSec=``
(from the event loop itself, so a loop that hangs stops the pings and systemd
restarts the service). Outside systemd every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends notifications to systemd when ``$NOTIFY_SOCKET`` is set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace (leading NUL byte).
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval = _watchdog_interval(env)
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False if not under systemd or it failed."""
        if not self.address:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError:
            return False  # systemd went away: nothing to tell, nothing to stop for
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping the watchdog every half interval, from *loop*, until :meth:`stop_watchdog`."""
        if self.watchdog_interval is None or not self.address:
            return

        def ping() -> None:
            self.notify("WATCHDOG=1")
            assert self.watchdog_interval is not None
            self._watchdog = loop.call_later(self.watchdog_interval / 2, ping)

        ping()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds of ``$WATCHDOG_USEC`` if it is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 1e6
