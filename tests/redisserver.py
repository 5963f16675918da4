"""A real ``redis-server`` for tests: started on a free port and a unix socket in a
temporary directory, stopped by PID.

:class:`RedisServer` runs Debian's ``redis-server`` (installed by ``.ci/run``) on
127.0.0.1 with no persistence unless ``aof=True`` (append-only file, ``everysec``:
Redis writes the file before it replies, so a ``kill -9`` of the process loses no
acknowledged write; only a machine crash could lose the last second). Faults:

* :meth:`~RedisServer.kill` (SIGKILL) and :meth:`~RedisServer.restart` on the same
  port, socket and directory (with AOF, the data comes back);
* :func:`proxied`: a :class:`~tests.faultproxy.FaultProxy` in front of it, whose
  ``blackhole`` / ``delay`` / ``stall`` controls make Redis unreachable or slow
  for whoever connects through ``redis://127.0.0.1:<proxy port>``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.processes import free_port

from .faultproxy import FaultProxy

REDIS_SERVER = "/usr/bin/redis-server"
HOST = "127.0.0.1"
READY_TIMEOUT = 20.0


class RedisServer:
    """One ``redis-server`` process; :attr:`url` and :attr:`unix_url` reach it."""

    def __init__(self, directory: Path, aof: bool = False) -> None:
        self.directory = directory
        self.aof = aof
        self.port = free_port()
        self.socket_path = directory / "redis.sock"
        self.log_path = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.aof
            else ["--appendonly", "no"]
        )
        return [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--save",
            "",
            *persistence,
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
        ]

    def start(self) -> None:
        """Start the process and wait until it serves data commands."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a killed server leaves its socket file
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._pong():
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"redis-server exited with {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def _pong(self) -> bool:
        # Not PING: Redis answers it while still loading its AOF, and refuses data
        # commands (-LOADING) until the file is read.
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(b"EXISTS redisserver:probe\r\n")
                return sock.recv(64).startswith(b":")
        except OSError:
            return False

    def clients(self) -> int:
        """How many connections the server holds, not counting this query's own
        (``CLIENT LIST``: a bulk string with one line per connection)."""
        with socket.create_connection((HOST, self.port), timeout=2.0) as sock:
            sock.sendall(b"CLIENT LIST\r\n")
            reply = b""
            while b"\r\n" not in reply or len(reply) < reply.index(b"\r\n") + 2 + int(
                reply[1 : reply.index(b"\r\n")]
            ):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"redis-server closed the connection: {reply!r}")
                reply += chunk
        assert reply.startswith(b"$"), reply
        lines = reply.split(b"\r\n", 1)[1].splitlines()
        return sum(1 for line in lines if line.startswith(b"id=")) - 1

    def kill(self) -> None:
        """``kill -9`` the server (by its PID) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Kill the server, then start it again on the same port, socket and directory."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not exited within 10 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def proxied(server: RedisServer) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of *server*: connect to ``redis://HOST:PORT`` of ``proxy.address``."""
    async with FaultProxy(HOST, server.port) as proxy:
        yield proxy
