"""``sessiond serve --workers N`` (sessiond/workers.py): what it refuses, and the
supervisor's pieces that need no worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sessiond_client
from sessiond_client import ReconnectPolicy

from bench.processes import free_port
from sessiond import config
from sessiond.workers import check, describe_status
from tests.daemonproc import DaemonProcess, clean_environment
from tests.faultproxy import FaultProxy
from tests.redisserver import RedisServer


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", *args],
        check=False,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )


def test_several_workers_with_the_memory_store_are_refused_at_start_up() -> None:
    done = serve("--workers", "2", "--listen", "127.0.0.1:7999")
    assert done.returncode == 2
    assert "server.workers = 2 (--workers) needs a shared store" in done.stderr
    assert "store.url" in done.stderr


def test_config_check_refuses_them_too(tmp_path: Path) -> None:
    file = tmp_path / "w.toml"
    file.write_text("[server]\nworkers = 3\n")
    done = subprocess.run(
        [sys.executable, "-m", "sessiond", "config", "check", str(file)],
        check=False,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )
    assert done.returncode == 2
    assert "server.workers = 3" in done.stderr and "shared store" in done.stderr


def test_workers_setting_has_a_range() -> None:
    with pytest.raises(config.ConfigError, match=r"server\.workers"):
        config.load(flags={"server.workers": "0"})
    assert config.load().server.workers == 1
    assert config.load(flags={"server.workers": "4"}).server.workers == 4


def test_one_worker_needs_nothing() -> None:
    check(config.load(flags={"server.workers": "1"}))


def test_exit_statuses_in_words() -> None:
    assert describe_status(0) == "exit status 0"
    assert describe_status(3) == "exit status 3"
    assert describe_status(-9) == "killed by SIGKILL"


# ------------------------------------------------------- a supervisor on real redis


def supervisor(tmp_path: Path, redis: RedisServer, port: int, name: str) -> DaemonProcess:
    """``sessiond serve --workers 2`` with the echo app on *port* and *redis*."""
    return DaemonProcess(
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--app",
        "echo",
        "--store",
        redis.url,
        log_file=tmp_path / f"{name}.log",
        env=clean_environment(
            SESSIOND_SERVER_DRAIN_TIMEOUT="2",
            SESSIOND_SERVER_RETRY_AFTER="0.2",
            SESSIOND_STORE_LEASE_TTL=str(LEASE_TTL),
        ),
    )


LEASE_TTL = 2.0
#: Recovery after a kill -9 waits out the dead worker's lease; the rest is a
#: loaded machine's slack (starting a worker takes seconds here).
RECOVERY_SLACK = 45.0


async def supervising(proc: DaemonProcess) -> dict[int, int]:
    """Wait until both workers listen; {slot: pid}."""
    found = await proc.until(r"supervising 2 workers: 0:pid=(\d+) 1:pid=(\d+)")
    return {0: int(found.group(1)), 1: int(found.group(2))}


def created_by(log: str) -> dict[str, int]:
    """{session prefix: worker slot} from the workers' "created" lines."""
    return {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"\[worker=(\d+) pid=\d+\]: session ([0-9a-f]+) created", log)
    }


def exited(pid: int) -> bool:
    """True once *pid* has exited (a zombie counts: its reaper is whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


class Streams:
    """*count* echo sessions, each sending *total* numbered messages at a bounded
    pace and keeping what comes back."""

    def __init__(self, url: str, count: int, total: int) -> None:
        self.url = url
        self.count = count
        self.total = total
        self.sessions: list[sessiond_client.Session] = []
        self.received: list[list[bytes]] = [[] for _ in range(count)]
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        for _ in range(self.count):
            self.sessions.append(
                await sessiond_client.connect(self.url, policy=ReconnectPolicy(base=0.05, cap=0.5))
            )
        self.ids = [session.id for session in self.sessions]
        self.tasks = [asyncio.create_task(self._run(i)) for i in range(self.count)]

    def expected(self, index: int) -> list[bytes]:
        return [b"%d:%d" % (index, n) for n in range(self.total)]

    async def _run(self, index: int) -> None:
        session = self.sessions[index]

        async def read() -> None:
            while len(self.received[index]) < self.total:
                self.received[index].append(await session.recv())

        reader = asyncio.create_task(read())
        for n in range(self.total):
            await session.send(b"%d:%d" % (index, n))
            if n % 10 == 0:
                await asyncio.sleep(0.02)
        await reader

    async def until_each_has(self, count: int) -> None:
        while min(map(len, self.received)) < count:
            await asyncio.sleep(0.01)

    async def finish(self, timeout: float = 120.0) -> None:
        """Every stream complete: no gap, no duplicate, same sessions; then close."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self.tasks)
        for index, got in enumerate(self.received):
            assert got == self.expected(index)
        assert [session.id for session in self.sessions] == self.ids  # resumed, not new
        for session in self.sessions:
            await session.close()


async def test_two_workers_serve_clients_through_one_port(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    proc = supervisor(tmp_path, redis_server, port, "sup")
    try:
        pids = await supervising(proc)
        streams = Streams(f"tcp://127.0.0.1:{port}", count=24, total=5)
        await streams.open()
        await streams.finish()
        await proc.until(r"session [0-9a-f]+ created", count=24)
        slots = created_by(proc.log)
        assert len(slots) == 24
        # SO_REUSEPORT spreads connections by their address hash: 24 all on one
        # worker would happen about once in 8 million runs.
        assert set(slots.values()) == {0, 1}
        assert pids[0] != pids[1]
        assert proc.stop() == 0
        assert "supervisor stopped" in proc.log
        for slot, pid in pids.items():
            assert f"worker {slot} pid={pid} exited: exit status 0" in proc.log
    finally:
        proc.close()


async def test_kill_9_of_a_worker_mid_stream_resumes_on_a_worker_without_loss(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    proc = supervisor(tmp_path, redis_server, port, "sup")
    try:
        pids = await supervising(proc)
        streams = Streams(f"tcp://127.0.0.1:{port}", count=8, total=400)
        await streams.open()
        await streams.until_each_has(50)
        slots = created_by(proc.log)
        victim = max((0, 1), key=lambda slot: list(slots.values()).count(slot))
        held = [sid for sid, slot in slots.items() if slot == victim]
        assert held  # it holds sessions, which must now move or wait for its return
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        await proc.until(rf"worker {victim} pid={pids[victim]} exited: killed by SIGKILL")
        await proc.until(rf"worker {victim} restarting in 0\.0 s")
        before = [len(got) for got in streams.received]

        def moved_on() -> bool:
            return all(
                len(got) > n or len(got) == streams.total
                for got, n in zip(streams.received, before, strict=True)
            )

        # Every session (those of the dead worker included) moves on, within the
        # dead worker's lease plus a loaded machine's slack.
        async with asyncio.timeout(LEASE_TTL + RECOVERY_SLACK):
            while not moved_on():
                await asyncio.sleep(0.01)
        print(f"every session moved on {time.monotonic() - killed_at:.2f} s after the kill")
        await streams.finish()
        for sid in held:  # its sessions were claimed by a worker through the store
            assert re.search(rf"session {sid} recovered", proc.log), proc.log
        await proc.until(rf"worker {victim} ready pid=(?!{pids[victim]})\d+")
        assert proc.stop() == 0
    finally:
        proc.close()


async def test_sigterm_drains_every_worker_and_a_new_supervisor_resumes_all(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    first = supervisor(tmp_path, redis_server, port, "first")
    second: DaemonProcess | None = None
    try:
        pids = await supervising(first)
        streams = Streams(f"tcp://127.0.0.1:{port}", count=8, total=300)
        await streams.open()
        await streams.until_each_has(40)
        first.signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.proc.wait, 60) == 0
        for slot, pid in pids.items():
            assert f"worker {slot} pid={pid} exited: exit status 0" in first.log
        assert "supervisor stopped" in first.log
        second = supervisor(tmp_path, redis_server, port, "second")
        await supervising(second)
        # Every session comes back through the store, also those whose stream ended during
        # the drain (an idle client reconnects too); waited for before finish() closes them.
        await second.until(r"session [0-9a-f]+ recovered", count=8, timeout=60)
        await streams.finish()
        assert second.stop() == 0
        assert len(re.findall(r"session [0-9a-f]+ recovered", second.log)) == 8
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_sighup_replaces_workers_one_at_a_time_losing_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    proc = supervisor(tmp_path, redis_server, port, "sup")
    try:
        pids = await supervising(proc)
        streams = Streams(f"tcp://127.0.0.1:{port}", count=8, total=400)
        await streams.open()
        await streams.until_each_has(40)
        proc.signal(signal.SIGHUP)
        await proc.until("SIGHUP: every worker replaced", timeout=120)
        await streams.finish()
        log = proc.log
        for slot, pid in pids.items():
            found = re.search(rf"SIGHUP: worker {slot} pid=(\d+) replaces pid={pid}\b", log)
            assert found is not None, log
            # rolling: the new one listened before the old one was told to stop
            assert log.index(f"worker {slot} ready pid={found.group(1)}") < found.start()
            assert f"worker {slot} pid={pid} exited: exit status 0" in log
        # the new worker 0 was listening while the old worker 1 drained, and so on
        assert log.index(f"replaces pid={pids[0]}") < log.index(f"replaces pid={pids[1]}")
        assert "restarting" not in log
        assert proc.stop() == 0
    finally:
        proc.close()


async def test_a_crash_looping_worker_is_restarted_with_a_growing_delay(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    proc = supervisor(tmp_path, redis_server, port, "sup")
    try:
        await supervising(proc)
        for n, delay in enumerate(("0.0", "0.5", "1.0")):
            started = await proc.until(r"worker 1 started pid=(\d+)", count=n + 1)
            os.kill(int(started.group(1)), signal.SIGKILL)
            await proc.until(rf"worker 1 restarting in {delay} s \({n + 1} unasked exit")
        await proc.until(r"worker 1 ready pid=\d+", count=2)
        assert proc.stop() == 0
    finally:
        proc.close()


async def test_workers_drain_when_the_supervisor_is_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    proc = supervisor(tmp_path, redis_server, free_port(), "sup")
    pids: dict[int, int] = {}
    try:
        pids = await supervising(proc)
        proc.proc.kill()
        proc.proc.wait()
        async with asyncio.timeout(60):  # the log outlives the supervisor: workers write it
            while not all(
                re.search(rf"\[worker=\d pid={pid}\]: stopped", proc.log) for pid in pids.values()
            ):
                await asyncio.sleep(0.05)
        assert "supervisor gone: draining" in proc.log
        async with asyncio.timeout(60):
            while pids:
                for slot, pid in list(pids.items()):
                    if exited(pid):
                        del pids[slot]
                await asyncio.sleep(0.05)
    finally:
        proc.close()
        for pid in pids.values():  # only those not seen gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_sighup_whose_new_worker_cannot_start_keeps_the_old_ones(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    file = tmp_path / "sessiond.toml"
    file.write_text('[server]\napp = "echo"\n')
    proc = DaemonProcess(
        "--workers", "2", "--listen", f"127.0.0.1:{port}", "--store", redis_server.url,
        "--config", str(file),
        log_file=tmp_path / "sup.log",
        env=clean_environment(SESSIOND_STORE_LEASE_TTL=str(LEASE_TTL)),
    )  # fmt: skip
    try:
        pids = await supervising(proc)
        file.write_text('[server]\napp = "no_such_module_here:app"\n')
        proc.signal(signal.SIGHUP)
        await proc.until(r"SIGHUP: new worker 0 pid=\d+ did not start; replacement stopped")
        streams = Streams(f"tcp://127.0.0.1:{port}", count=4, total=20)
        await streams.open()
        await streams.finish()
        assert all(not exited(pid) for pid in pids.values())
        assert "every worker replaced" not in proc.log
        assert proc.stop() == 0
    finally:
        proc.close()


async def test_workers_that_cannot_listen_stop_the_supervisor(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody else may bind the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = supervisor(tmp_path, redis_server, port, "sup")
        try:
            assert await asyncio.to_thread(proc.proc.wait, 120) == 1
            assert re.search(r"worker \d pid=\d+ did not start: stopping", proc.log), proc.log
            assert "cannot listen on" in proc.log
        finally:
            proc.close()


async def test_three_workers_behind_a_fault_proxy_move_sessions_without_loss(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    proc = DaemonProcess(
        "--workers", "3", "--listen", f"127.0.0.1:{port}", "--app", "echo",
        "--store", redis_server.url,
        log_file=tmp_path / "sup.log",
        env=clean_environment(SESSIOND_STORE_LEASE_TTL=str(LEASE_TTL)),
    )  # fmt: skip
    try:
        await proc.until(r"supervising 3 workers")
        async with FaultProxy("127.0.0.1", port) as proxy:
            host, proxy_port = proxy.address
            streams = Streams(f"tcp://{host}:{proxy_port}", count=8, total=300)
            await streams.open()
            for cut in range(1, 4):  # every transport reset; each reconnect may land
                await streams.until_each_has(min(streams.total, 60 * cut))  # elsewhere
                proxy.cut()
            await streams.finish()
        # A session resumed on another worker was released by its live owner and
        # claimed there; with 8 sessions, 3 cuts and 3 workers, none moving would
        # happen about once in 3**24 runs.
        assert re.search(r"session [0-9a-f]+ recovered", proc.log), proc.log
        assert "restarting" not in proc.log
        assert proc.stop() == 0
    finally:
        proc.close()
