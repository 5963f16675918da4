"""Issue 6, faults: the daemon process killed (SIGKILL) or drained (SIGTERM) under its clients.

``sessiond serve`` runs as a subprocess with in-memory sessions, and library clients talk
to its echo app while it dies and comes back on the same port:

* SIGKILL, then a restart: the new daemon does not know the sessions, so every client's
  ``send`` and ``recv`` raise ``SessionLost`` with the reason (UNKNOWN_SESSION); what it
  received before is still handed over in order, and the messages in doubt (sent, never
  acknowledged) are listed in the notice, never silently dropped.
* SIGTERM: the daemon drains (GOAWAY, waits for acknowledgements, CLOSE GOING_AWAY, exit
  0). Every message it acknowledged was consumed by the app and its echo reached the
  client; after the restart the clients learn that the session is gone, with nothing in
  doubt but what was sent after the drain had finished.

tests/test_daemon.py already checks that SIGTERM and SIGINT stop the daemon with exit 0 and
a drain in its log, and tests/test_drain.py the drain itself in-process; these tests add the
clients' side: messages in flight, the restart and what each client is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sessiond_client
from sessiond_client import CloseCode, SessionLost, State
from sessiond_client.protocol import GoawayReceived, SessionLostEvent

from bench.processes import free_port
from tests.test_client import FAST
from tests.test_faults import CLIENT_PARAMS

SESSIONS = 10
STARTUP_TIMEOUT = 20.0  # a Python process starting on a loaded machine
LOST_TIMEOUT = 20.0  # from the restart until every client has been told

#: The daemon's settings (protocol.md names): accept the clients' 0.2 s heartbeat, ask
#: drained clients to come back soon.
DAEMON_SETTINGS = {
    "SESSIOND_PROTOCOL_HEARTBEAT_MIN": "0.05",
    "SESSIOND_SERVER_RETRY_AFTER": "0.2",
    "SESSIOND_SERVER_DRAIN_TIMEOUT": "10",
}


class Daemon:
    """``python -m sessiond serve`` on 127.0.0.1:*port*, its output in *log*."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        # SESSIOND_* variables are settings to the daemon: keep only ours, whatever the
        # environment the suite runs in sets.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
        env.update(DAEMON_SETTINGS, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "sessiond", "serve", "--app", "echo"]
        command += ["--listen", f"tcp://127.0.0.1:{port}"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    async def wait_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"the daemon exited: {self.output()}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, f"the daemon never listened: {self.output()}"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def wait_exit(self, timeout: float) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.asynccontextmanager
async def daemon(port: int, log: Path) -> AsyncIterator[Daemon]:
    """A running daemon; killed on the way out if the test left it running."""
    process = Daemon(port, log)
    try:
        await process.wait_listening()
        yield process
    finally:
        process.stop()


class Talker:
    """One library-client session: numbered messages out, the echo app's replies in."""

    def __init__(self, session: sessiond_client.Session, name: int) -> None:
        self.session = session
        self.name = name
        self.sent: list[bytes] = []
        self.echoes: list[bytes] = []
        self.send_lost: SessionLost | None = None
        self.recv_lost: SessionLost | None = None

    async def send(self, count: int, pause: float) -> None:
        """Send up to *count* messages, *pause* seconds apart (0: a burst that still lets
        the loop run), until the session is lost."""
        for n in range(count):
            payload = b"%d:%d" % (self.name, len(self.sent))
            try:
                await self.session.send(payload, timeout=30)
            except SessionLost as lost:
                self.send_lost = lost
                return
            self.sent.append(payload)
            if pause:
                await asyncio.sleep(pause)
            elif n % 10 == 9:
                await asyncio.sleep(0)

    async def receive(self) -> None:
        for _ in range(1_000_000):
            try:
                self.echoes.append(await self.session.recv())
            except SessionLost as lost:
                self.recv_lost = lost
                return

    def told(self) -> SessionLostEvent:
        """Check what the client was told when the session could not be resumed."""
        assert self.recv_lost is not None and self.recv_lost.reason is CloseCode.UNKNOWN_SESSION
        assert self.session.state is State.CLOSED
        (lost,) = [n for n in self.session.notices if isinstance(n, SessionLostEvent)]
        assert lost.reason is CloseCode.UNKNOWN_SESSION
        # What arrived came once, in order (and includes what was still unread).
        assert self.echoes == self.sent[: len(self.echoes)]
        # The messages in doubt are listed, oldest first: exactly the ones never
        # acknowledged, the tail of what was sent.
        doubt = len(lost.unacked)
        assert list(lost.unacked) == self.sent[len(self.sent) - doubt :]
        return lost


async def connect_talkers(port: int) -> list[Talker]:
    url = f"tcp://127.0.0.1:{port}"
    sessions = await asyncio.gather(
        *(sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST) for _ in range(SESSIONS))
    )
    return [Talker(session, i) for i, session in enumerate(sessions)]


async def test_sigkill_then_restart_every_client_is_told_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    tasks: list[asyncio.Task[None]] = []
    try:
        await _kill_and_restart(port, tmp_path, tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _kill_and_restart(port: int, tmp_path: Path, tasks: list[asyncio.Task[None]]) -> None:
    async with daemon(port, tmp_path / "first.log") as first:
        talkers = await connect_talkers(port)
        tasks += [asyncio.create_task(t.receive()) for t in talkers]
        tasks += [asyncio.create_task(t.send(100_000, 0.01)) for t in talkers]
        deadline = time.monotonic() + 20
        while min(len(t.echoes) for t in talkers) < 20:  # talking, messages in flight
            assert time.monotonic() < deadline, "the echoes do not come back"
            await asyncio.sleep(0.02)
        first.proc.send_signal(signal.SIGKILL)
        assert await first.wait_exit(10) == -signal.SIGKILL
    async with daemon(port, tmp_path / "second.log"):
        done, pending = await asyncio.wait(tasks, timeout=LOST_TIMEOUT)
        assert not pending, "some clients were never told: " + ", ".join(
            f"#{t.name} {t.session.state.value}" for t in talkers
        )
        for task in done:
            task.result()
        doubt = 0
        for talker in talkers:
            lost = talker.told()
            assert talker.send_lost is not None
            assert talker.send_lost.reason is CloseCode.UNKNOWN_SESSION
            doubt += len(lost.unacked)
        sent = sum(len(t.sent) for t in talkers)
        echoed = sum(len(t.echoes) for t in talkers)
        print(
            f"\nSIGKILL: {SESSIONS} clients told UNKNOWN_SESSION; {sent} messages sent,"
            f" {echoed} echoed before the kill, {doubt} reported as never acknowledged"
        )


async def test_sigterm_drains_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    port = free_port()
    tasks: list[asyncio.Task[None]] = []
    try:
        await _drain_and_restart(port, tmp_path, tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _drain_and_restart(port: int, tmp_path: Path, tasks: list[asyncio.Task[None]]) -> None:
    burst = 300
    async with daemon(port, tmp_path / "first.log") as first:
        talkers = await connect_talkers(port)
        readers = [asyncio.create_task(t.receive()) for t in talkers]
        senders = [asyncio.create_task(t.send(burst, 0.0)) for t in talkers]
        tasks += readers + senders
        deadline = time.monotonic() + 20
        while min(len(t.sent) for t in talkers) < burst // 3:
            assert time.monotonic() < deadline, "the bursts do not go out"
            await asyncio.sleep(0)
        first.proc.send_signal(signal.SIGTERM)  # with messages in flight both ways
        at_term = sum(len(t.sent) for t in talkers)
        in_flight = at_term - sum(len(t.echoes) for t in talkers)  # not yet echoed back
        await asyncio.wait_for(asyncio.gather(*senders), 30)
        assert await first.wait_exit(30) == 0, first.output()
        assert "drained: all acknowledged" in first.output()
        for talker in talkers:
            assert any(isinstance(n, GoawayReceived) for n in talker.session.notices)
        # Everything the daemon received before it closed was echoed and acknowledged:
        # the echoes are all here (in the client's buffer at worst), with no reconnect.
        deadline = time.monotonic() + 10
        while any(len(t.echoes) < len(t.sent) for t in talkers):
            if time.monotonic() > deadline:
                break  # sent after the drain: the restart below shows them in doubt
            await asyncio.sleep(0.02)
    async with daemon(port, tmp_path / "second.log"):
        await asyncio.wait_for(asyncio.gather(*readers), LOST_TIMEOUT)
        doubt = 0
        for talker in talkers:
            lost = talker.told()
            assert lost.unread == ()
            # Nothing the drained daemon acknowledged is missing: every message but the
            # ones in doubt (sent after the drain finished, if any) came back.
            assert talker.echoes == talker.sent[: len(talker.sent) - len(lost.unacked)]
            doubt += len(lost.unacked)
        sent = sum(len(t.sent) for t in talkers)
        print(
            f"\nSIGTERM: {SESSIONS} clients; at SIGTERM {at_term} messages sent of"
            f" {SESSIONS * burst}, {in_flight} of them not yet echoed; {sent} sent in all,"
            f" all acknowledged ones echoed; {doubt} sent after the drain reported as never"
            " acknowledged"
        )
