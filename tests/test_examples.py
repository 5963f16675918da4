"""The client examples (``client/examples``) run for real against the quick-start daemon,
``sessiond serve`` (the channels app), through the fault proxy; the README shows them
verbatim.

The daemon is started as the README's quick start starts it, with one flag more:
``--listen`` on a free port, since other tests (and other checkouts) share the machine
and its default port 7420. An observer subscribed with the channels helper records what
the examples published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import sessiond_client
from sessiond_client import Channels
from sessiond_client.envelopes import Message

from bench.processes import free_port
from tests.faultproxy import FaultProxy
from tests.test_daemon_killed import STARTUP_TIMEOUT

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "client" / "examples"
TIMEOUT = 60.0


@dataclass
class QuickStart:
    """``sessiond serve`` in a subprocess, a fault proxy in front, and an observer."""

    proc: subprocess.Popen[bytes]
    proxy: FaultProxy
    observed: list[Message]  # what the observer's subscriptions delivered, in order

    @property
    def url(self) -> str:
        return "tcp://{}:{}".format(*self.proxy.address)


async def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            assert proc.poll() is None, "sessiond serve exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


@contextlib.asynccontextmanager
async def quick_start(tmp_path: Path, *observe: str, app: str = "") -> AsyncIterator[QuickStart]:
    """``sessiond serve`` (with ``--app APP`` if given), observed on the *observe* patterns."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    command = [sys.executable, "-m", "sessiond", "serve", "--listen", f"tcp://127.0.0.1:{port}"]
    command += ["--app", app] if app else []
    with (tmp_path / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        await wait_listening(proc, port)
        observed: list[Message] = []
        async with (
            FaultProxy("127.0.0.1", port) as proxy,
            await sessiond_client.connect(f"tcp://127.0.0.1:{port}") as session,
            Channels(session) as observer,
        ):
            for pattern in observe:
                await observer.subscribe(pattern)

            async def record() -> None:
                async for event in observer:
                    if isinstance(event, Message):
                        observed.append(event)

            recorder = asyncio.create_task(record())
            try:
                yield QuickStart(proc, proxy, observed)
            finally:
                recorder.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    transports: int  # connections the example opened through the proxy


async def run_example(
    quick: QuickStart, name: str, *args: str, cuts: int = 0, cut_every: float = 0.0
) -> Run:
    """Run example *name* against *quick*, cutting its transport *cuts* times meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        quick.url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(proc.communicate())
    if cuts:  # the cuts count from its first connection (a loaded machine starts it slowly)
        await quick.proxy.wait_connections(1, TIMEOUT)
    for _ in range(cuts):
        await asyncio.wait([communicate], timeout=cut_every)
        if communicate.done():
            break
        quick.proxy.cut()
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await communicate
    assert proc.returncode is not None
    return Run(proc.returncode, stdout.decode(), stderr.decode(), len(quick.proxy.connections))


async def observed(quick: QuickStart, count: int) -> list[Message]:
    async with asyncio.timeout(TIMEOUT):
        while len(quick.observed) < count:
            await asyncio.sleep(0.02)
    return quick.observed


async def test_telemetry_keeps_publishing_through_network_loss(tmp_path: Path) -> None:
    async with quick_start(tmp_path, "devices/+/telemetry") as quick:
        run = await run_example(
            quick, "telemetry.py", "--count", "150", "--interval", "0.01", cuts=8, cut_every=0.2
        )
        assert run.returncode == 0, run.stderr
        got = await observed(quick, 150)
    readings = [json.loads(m.payload) for m in got]
    assert [r["n"] for r in readings] == list(range(150))  # every reading once, in order
    assert {m.channel for m in got} == {"devices/sensor-1/telemetry"}
    assert "reading 149 queued" in run.stdout
    assert run.transports > 1  # it did lose the network, and reconnected
    assert "connection lost" in run.stderr and "resumed in" in run.stderr  # its log


async def test_telemetry_prints_the_commands_it_receives(tmp_path: Path) -> None:
    async with quick_start(tmp_path, "devices/+/telemetry") as quick:
        example = asyncio.create_task(
            run_example(quick, "telemetry.py", "--count", "40", "--interval", "0.05")
        )
        await observed(quick, 1)  # it runs and is subscribed to its commands
        async with (
            await sessiond_client.connect(quick.url) as session,
            Channels(session) as operator,
        ):
            await operator.publish("devices/sensor-1/commands", b"calibrate")
        run = await example
    assert run.returncode == 0, run.stderr
    assert "command: calibrate" in run.stdout


async def test_telemetry_reports_the_readings_lost_with_the_daemon(tmp_path: Path) -> None:
    """The issue's run: the daemon SIGKILLed, readings 6-9 never acknowledged."""
    async with quick_start(tmp_path, "devices/+/telemetry") as quick:
        example = asyncio.create_task(
            run_example(quick, "telemetry.py", "--count", "10", "--interval", "0.3")
        )
        await observed(quick, 6)
        quick.proc.send_signal(signal.SIGKILL)
        run = await example
    assert run.returncode == 1, run.stdout
    assert "session lost (TRANSPORT_LOST); not acknowledged:" in run.stderr
    lost = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("   {")]
    assert lost, run.stderr
    assert [r["n"] for r in lost] == list(range(lost[0]["n"], 10))  # the tail, in order
    assert "reading 9 queued" in run.stdout


async def test_game_loop_polls_every_frame_and_shows_the_state(tmp_path: Path) -> None:
    async with quick_start(tmp_path, "games/+/inputs") as quick:
        run = await run_example(quick, "game_loop.py", "--frames", "120", cuts=2, cut_every=0.5)
        assert run.returncode == 0, run.stderr
        summary = re.search(r"frames 120, updates applied (\d+), inputs dropped (\d+)", run.stdout)
        assert summary is not None, run.stdout
        delivered = 120 - int(summary[2])
        got = await observed(quick, delivered)
    inputs = [int(m.payload.split()[1]) for m in got]
    assert inputs == sorted(set(inputs))  # no input twice, none out of order
    assert len(inputs) == delivered  # each input either delivered or dropped
    assert 0 < int(summary[1]) <= delivered  # the player's own inputs came back to it
    assert "frame 0: connection active" in run.stdout
    assert run.transports > 1


async def test_the_examples_say_what_they_need_from_an_echo_daemon(tmp_path: Path) -> None:
    async with quick_start(tmp_path, app="echo") as quick:
        for name in ("telemetry.py", "game_loop.py"):
            run = await run_example(quick, name)
            assert run.returncode == 2, run.stdout
            assert "needs the channels app" in run.stderr


async def test_the_examples_name_the_address_when_nothing_listens(tmp_path: Path) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    for name in ("telemetry.py", "game_loop.py"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / name), url, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(TIMEOUT):
            _, stderr = await proc.communicate()
        assert proc.returncode == 2
        assert f"cannot connect to {url}: connection refused" in stderr.decode()


def test_the_readme_shows_the_examples_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    for example in sorted(EXAMPLES.glob("*.py")):
        assert example.read_text() in blocks, f"README lacks {example.name} verbatim"


async def test_telemetry_publishes_again_what_its_state_file_kept_for_a_lost_session(
    tmp_path: Path,
) -> None:
    """The README's ``--state-file`` run: the daemon SIGKILLed with readings unacknowledged,
    the device rebooted (the example SIGKILLed too), a new daemon: the next run publishes
    the readings its state file kept, then its own, instead of a traceback."""
    state = str(tmp_path / "tele.db")
    async with quick_start(tmp_path, "devices/+/telemetry") as quick:
        example = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "telemetry.py"), quick.url,
            "--count", "1000", "--interval", "0.05", "--state-file", state,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await observed(quick, 3)
            quick.proc.send_signal(signal.SIGKILL)
            assert example.stdout is not None
            async with asyncio.timeout(TIMEOUT):
                queued = 0
                while queued < 3:  # readings queued after the daemon died: kept on disk
                    line = await example.stdout.readline()
                    assert line, "the example ended"
                    queued += b"reconnecting" in line
        finally:
            example.kill()
            await example.wait()
    again = tmp_path / "again"
    again.mkdir()
    async with quick_start(again, "devices/+/telemetry") as quick:
        run = await run_example(quick, "telemetry.py", "--count", "2", "--state-file", state)
        assert run.returncode == 0, run.stderr
        assert "publishing them again" in run.stderr
        kept = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("   {")]
        assert kept, run.stderr  # at least the readings queued before the last line read
        got = await observed(quick, len(kept) + 2)
    readings = [json.loads(m.payload) for m in got]
    assert readings[: len(kept)] == kept  # the saved ones first, oldest first
    assert [r["n"] for r in readings[len(kept) :]] == [0, 1]
