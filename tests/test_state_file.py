"""``state_file=PATH``: a client process killed with SIGKILL resumes its session after a
restart, loses nothing ``send`` accepted and gets nothing twice; the file itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sessiond_client
from sessiond_client import CloseCode, SessionLost
from sessiond_client.protocol import Snapshot
from sessiond_client.state_file import StateFile, StateFileError

import sessiond
from sessiond.server import Server, ServerConfig
from tests.faultproxy import FaultProxy
from tests.test_faults import CLIENT_PARAMS, SERVER_PARAMS

ROOT = Path(__file__).parent.parent
TIMEOUT = 20.0  # generous: a behaviour bound on a loaded machine, not a benchmark


class Child:
    """``tests/state_child.py`` in its own process: commands in, lines out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.got: list[str] = []
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, path: Path) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.state_child",
            url,
            str(path),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("got "):
                self.got.append(line[4:])
            await self._lines.put(line)

    async def expect(self, wanted: str) -> str:
        """Wait for a line starting with *wanted*; return it."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self._lines.get()
                if line.startswith(wanted):
                    return line

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self._reader.cancel()

    async def finish(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.proc.wait()
        await self._reader
        assert self.proc.returncode == 0


@contextlib.asynccontextmanager
async def recording_daemon() -> AsyncIterator[tuple[Server, FaultProxy, list[bytes]]]:
    """An echo daemon that also records, in order, every message it received."""
    recorded: list[bytes] = []

    async def app(session: sessiond.Session) -> None:
        async for payload in session:
            recorded.append(payload)
            await session.send(payload)

    config = ServerConfig(params=SERVER_PARAMS)
    async with (
        sessiond.serve(app, "127.0.0.1", 0, config=config) as server,
        FaultProxy(*server.addresses[0]) as proxy,
    ):
        yield server, proxy, recorded


def numbered(first: int, last: int) -> list[str]:
    return [f"m{i}" for i in range(first, last + 1)]


async def test_a_killed_client_resumes_from_its_state_file_losing_nothing(tmp_path: Path) -> None:
    path = tmp_path / "session.db"
    async with recording_daemon() as (_server, proxy, recorded):
        host, port = proxy.address
        url = f"tcp://{host}:{port}"

        first = await Child.start(url, path)
        session_id = (await first.expect("ready")).split()[1]
        await first.command("send 1 40")
        await first.expect("got m40")  # every echo so far was received and handed over
        proxy.stall()  # from now on nothing gets through this transport either way
        await first.command("send 41 60")
        await first.expect("sent 60")  # send() accepted them: they must not be lost
        await first.kill()
        assert first.got == numbered(1, 40)
        assert [p.decode() for p in recorded] == numbered(1, 40)

        # What the killed process left behind: the session and its unacknowledged
        # messages, m41..m60 at least (the ACKs of the last echoed ones may be in flight).
        store = StateFile(path)
        saved = store.load()
        store.close()
        assert saved is not None and saved.session_id.hex() == session_id
        unacked = [p.decode() for p in saved.unacked]
        assert len(unacked) >= 20 and unacked == numbered(61 - len(unacked), 60)

        second = await Child.start(url, path)
        assert (await second.expect("ready")).split()[1] == session_id  # resumed, not new
        await second.command("send 61 80")
        await second.expect("got m80")
        await second.command("close")
        await second.expect("closed")
        await second.finish()

        assert first.got + second.got == numbered(1, 80)  # nothing twice, nothing lost
        assert [p.decode() for p in recorded] == numbered(1, 80)
        store = StateFile(path)
        assert store.load() is None  # the session ended: the file holds no session
        store.close()


async def test_a_restored_session_the_server_forgot_is_lost_and_the_file_cleared(
    tmp_path: Path,
) -> None:
    path = tmp_path / "session.db"
    async with recording_daemon() as (server, proxy, _recorded):
        host, port = proxy.address
        url = f"tcp://{host}:{port}"
        session = await sessiond_client.connect(url, state_file=path, params=CLIENT_PARAMS)
        await session.send(b"one")
        assert await session.recv() == b"one"
        session._shutdown()  # the process "dies": the file keeps the session
        server.sessions.clear()  # ... and so does the daemon (a restart)
        with pytest.raises(SessionLost) as lost:
            await sessiond_client.connect(url, state_file=path, params=CLIENT_PARAMS)
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION
        store = StateFile(path)
        assert store.load() is None
        store.close()
        fresh = await sessiond_client.connect(url, state_file=path, params=CLIENT_PARAMS)
        await fresh.send(b"two")
        assert await fresh.recv() == b"two"
        await fresh.close()


async def test_a_state_file_is_used_by_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "session.db"
    store = StateFile(path)
    with pytest.raises(StateFileError, match="locked"):
        StateFile(path)
    store.close()
    StateFile(path).close()


def test_saves_write_what_changed_and_load_checks_consistency(tmp_path: Path) -> None:
    path = tmp_path / "session.db"
    store = StateFile(path)
    sid, cred = os.urandom(16), os.urandom(32)
    store.save(Snapshot(sid, cred, 4, 1, 7, 64, 4096, 1000, (b"a", b"b")))
    later = Snapshot(sid, cred, 6, 2, 9, 64, 4096, 1000, (b"b", b"c", b"d"))
    store.save(later)
    store.close()
    store = StateFile(path)
    assert store.load() == later
    new_session = Snapshot(os.urandom(16), cred, 2, 0, 0, 64, 4096, 1000, (b"x",))
    store.save(new_session)
    store.close()
    store = StateFile(path)
    assert store.load() == new_session
    store._db.execute("DELETE FROM unacked")  # a file damaged by hand
    with pytest.raises(StateFileError, match="do not match"):
        store.load()
    store.close()
