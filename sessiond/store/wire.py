"""The hot path's own Redis connection: commands encoded with ``hiredis.pack_command``
and replies parsed by ``hiredis.Reader`` (never a hand-written RESP parser); and
:class:`WirePool`, a few such connections for the claim path (a resume of a session
held by another process), where a burst of resumes runs many claims at once.

Measured on this machine (100 sessions x one 64-byte XADD per iteration, one connection):
redis-py's asyncio pipeline costs about 54 us of client CPU per XADD, this about 7 us
(see the notes of issue 16). ``rediss://`` URLs keep redis-py (its TLS set-up); this
path serves ``redis://`` and ``unix://``, with AUTH and SELECT from the URL.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class WireError(Exception):
    """The connection failed or timed out: whether the batch was applied is unknown."""


class Wire:
    """One connection that sends a batch of commands and returns their replies in order.

    Error replies come back as ``hiredis.ReplyError`` objects in the list, not raised.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def supports(url: str) -> bool:
        return urlsplit(url).scheme in ("redis", "unix")

    async def _connect(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            self._reader, self._writer = await asyncio.open_unix_connection(parts.path)
            database = parse_qs(parts.query).get("db", ["0"])[0]
        else:
            self._reader, self._writer = await asyncio.open_connection(
                parts.hostname, parts.port or 6379
            )
            database = parts.path.lstrip("/") or "0"
        setup: list[tuple[Any, ...]] = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else "default"
            setup.append(("AUTH", user, unquote(parts.password)))
        if database != "0":
            setup.append(("SELECT", database))
        if setup:
            for reply in await self._exchange(setup):
                if isinstance(reply, hiredis.ReplyError):
                    raise WireError(str(reply))

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send *commands* in one write; return their replies (raises :class:`WireError`)."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    await self._connect()
                return await self._exchange(commands)
        except (OSError, TimeoutError, EOFError, hiredis.ProtocolError) as exc:
            self.close()
            raise WireError(str(exc) or type(exc).__name__) from None
        except BaseException:
            self.close()  # cancelled mid-batch: the replies would be out of step
            raise

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        writer.write(b"".join([hiredis.pack_command(command) for command in commands]))
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(1 << 16)
            if not data:
                raise EOFError("connection closed by Redis")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        return replies

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class WirePool:
    """At most *size* :class:`Wire` connections, opened when first needed; a caller
    beyond that waits for a free one (waiting is not counted against the timeout)."""

    def __init__(self, url: str, timeout: float, size: int) -> None:
        self.url = url
        self.timeout = timeout
        self._free: list[Wire] = []
        self._all: list[Wire] = []
        self._slots = asyncio.Semaphore(size)

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """:meth:`Wire.execute` on a free connection of the pool."""
        async with self._slots:
            wire = self._free.pop() if self._free else None
            if wire is None:
                wire = Wire(self.url, self.timeout)
                self._all.append(wire)
            try:
                return await wire.execute(commands)
            finally:
                self._free.append(wire)  # a failed one reconnects on its next use

    def close(self) -> None:
        for wire in self._all:
            wire.close()
