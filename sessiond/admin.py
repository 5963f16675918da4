"""The admin socket: ``sessiond sessions list`` and ``sessiond sessions end`` against a
running daemon (``--admin-socket PATH``, ``[admin] socket``; off by default).

A unix socket created with mode 0600, so only the daemon's own user (and root) can
use it; it never listens on a network. With ``--workers N`` the supervisor serves it
for every worker (sessiond/gather.py): ``list`` shows each session's worker and
``end`` finds the session on whichever worker holds it. One JSON request per connection, one JSON
answer: ``{"op": "list"}`` or ``{"op": "end", "id": PREFIX, "reason": TEXT}``.
Ending a session closes it with ``SESSION_REVOKED`` (protocol.md §12), the reason
sent to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from sessiond_client.protocol import CloseCode

from .server import Server

log = logging.getLogger("sessiond")

REQUEST_LIMIT = 4096
REQUEST_TIMEOUT = 10.0
MIN_PREFIX = 4  # hex digits of a session ID that `end` needs
MAX_REASON = 200  # characters of the reason sent to the client


class AdminError(Exception):
    """The admin socket cannot be used (message for the operator)."""


class UnixDoor:
    """One JSON request per connection on a unix socket (mode 0600), one JSON answer:
    :meth:`respond` says what. The admin socket is one; the private sockets between
    the supervisor of ``--workers`` and its workers are others (sessiond/gather.py)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the socket (mode 0600); ``AdminError`` if another daemon holds it."""
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise AdminError(f"admin socket {self.path}: exists and is not a socket")
            if _alive(self.path):
                raise AdminError(f"admin socket {self.path}: another daemon is listening on it")
            self.path.unlink()  # left by a daemon that was killed
        old = os.umask(0o177)  # created 0600: no window in which others could connect
        try:
            self.listener = await asyncio.start_unix_server(
                self._serve, str(self.path), limit=REQUEST_LIMIT
            )
        except OSError as exc:
            raise AdminError(f"admin socket {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(Exception):
                await self.listener.wait_closed()
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def respond(self, request: Any) -> dict[str, Any]:
        """The answer to one decoded request."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            try:
                request = json.loads(line)
            except ValueError:
                answer = {"ok": False, "error": "expected one JSON object on one line"}
            else:
                answer = await self.respond(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()


class AdminServer(UnixDoor):
    """Answers admin requests for *server* on a unix socket."""

    def __init__(self, server: Server, path: str) -> None:
        super().__init__(path)
        self.server = server

    async def respond(self, request: Any) -> dict[str, Any]:
        return self.answer(request)

    def answer(self, request: Any) -> dict[str, Any]:
        """The answer to one decoded request."""
        op = request.get("op") if isinstance(request, dict) else None
        if op == "list":
            return {"ok": True, "sessions": self.sessions()}
        if op == "end":
            return self.end(str(request.get("id", "")), str(request.get("reason", "")))
        return {"ok": False, "error": "expected op list or end"}

    def sessions(self) -> list[dict[str, Any]]:
        """Every live session: ID, identity, state, peer, age and buffered bytes."""
        now = self.server.loop.time()
        out: list[dict[str, Any]] = []
        for entry in self.server.sessions.values():
            core = entry.core
            replay, inbox = core.buffered_bytes
            identity = core.identity
            out.append(
                {
                    "id": (core.id or b"").hex(),
                    "identity": identity if identity is None else str(identity),
                    "state": core.state.value,
                    "peer": entry.peer,
                    "age": round(now - entry.created, 3),
                    "replay_bytes": replay,
                    "inbox_bytes": inbox,
                    "unacked": core.unacked_count,
                }
            )
        out.sort(key=lambda row: row["age"], reverse=True)
        return out

    def end(self, prefix: str, reason: str) -> dict[str, Any]:
        """End the one session whose ID starts with *prefix*."""
        prefix = prefix.lower()
        problem = prefix_problem(prefix)
        if problem is not None:
            return {"ok": False, "error": problem}
        found = [
            e for e in self.server.sessions.values() if (e.core.id or b"").hex().startswith(prefix)
        ]
        if not found:
            return {"ok": False, "error": f"no session {prefix}"}
        if len(found) > 1:
            return {"ok": False, "error": f"{len(found)} sessions start with {prefix}: give more"}
        entry = found[0]
        sid = (entry.core.id or b"").hex()
        text = ("ended by the operator: " + reason if reason else "ended by the operator")[
            :MAX_REASON
        ]
        log.warning(
            "session %s ended by the operator: %s",
            sid[:8],
            reason or "-",
            extra={"fields": {"event": "admin-end", "session": sid[:8], "reason": reason}},
        )
        try:
            entry.session.close(CloseCode.SESSION_REVOKED, text)
        except ValueError as exc:  # ended meanwhile
            return {"ok": False, "error": f"session {sid[:8]}: {exc}"}
        return {"ok": True, "ended": sid}


def prefix_problem(prefix: str) -> str | None:
    """Why *prefix* (lower case) cannot name a session for ``end``, or None."""
    if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        return f"give at least {MIN_PREFIX} hex digits of a session ID"
    return None


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def request(path: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the daemon's admin socket; its answer (``AdminError`` if none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(json.dumps(body).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise AdminError(f"admin socket {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise AdminError(f"admin socket {path}: no answer") from None
    if not isinstance(answer, dict):
        raise AdminError(f"admin socket {path}: unexpected answer")
    return answer


def format_table(sessions: list[dict[str, Any]]) -> str:
    """``sessiond sessions list`` output: one session a line (with the worker's slot
    when a supervisor of ``--workers`` answered)."""
    workers = any("worker" in s for s in sessions)
    header = ("ID", "IDENTITY", "STATE", "PEER", "AGE", "REPLAY", "INBOX") + (
        ("WORKER",) if workers else ()
    )
    rows = [header] + [
        (
            s["id"][:8],
            "-" if s["identity"] is None else s["identity"],
            s["state"],
            s["peer"] or "-",
            _age(s["age"]),
            str(s["replay_bytes"]),
            str(s["inbox_bytes"]),
        )
        + ((str(s.get("worker", "-")),) if workers else ())
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
