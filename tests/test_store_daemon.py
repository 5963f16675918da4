"""``sessiond serve --store``: start-up errors, and a SIGTERM restart under load that
loses nothing (the restarted daemon resumes the sessions its predecessor released)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import sessiond_client
from sessiond_client import ReconnectPolicy

from bench.processes import free_port

from .redisserver import RedisServer


def daemon(port: int, store: str, *more: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sessiond",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--app",
            "echo",
            "--store",
            store,
            *more,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SESSIOND_SERVER_DRAIN_TIMEOUT": "1",
            "SESSIOND_SERVER_RETRY_AFTER": "0.2",
        },
    )


def output(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.read().decode()


def test_an_unreachable_redis_stops_start_up_with_its_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = daemon(free_port(), url)
    assert proc.wait(timeout=30) == 1
    text = output(proc)
    assert f"session store {url}" in text


def test_a_bad_store_url_is_a_configuration_error() -> None:
    proc = daemon(free_port(), "ftp://127.0.0.1/0")
    assert proc.wait(timeout=30) != 0
    assert "store.url" in output(proc)


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert proc.poll() is None, output(proc)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_sigterm_restart_under_load_loses_nothing(redis_server: RedisServer) -> None:
    port = free_port()
    first = daemon(port, redis_server.url)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_listening(port, first)
        sessions = [
            await sessiond_client.connect(
                f"tcp://127.0.0.1:{port}", policy=ReconnectPolicy(base=0.05, cap=0.3)
            )
            for _ in range(5)
        ]
        total = 400
        received: list[list[bytes]] = [[] for _ in sessions]

        async def run(index: int) -> None:
            session = sessions[index]

            async def read() -> None:
                while len(received[index]) < total:
                    received[index].append(await session.recv())

            reader = asyncio.create_task(read())
            for n in range(total):
                await session.send(b"%d:%d" % (index, n))
                if n % 20 == 0:
                    await asyncio.sleep(0.01)
            await reader

        ids = [session.id for session in sessions]
        load = [asyncio.create_task(run(i)) for i in range(len(sessions))]
        while sum(map(len, received)) < total:  # well under way
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        second = daemon(port, redis_server.url)
        async with asyncio.timeout(60):
            await asyncio.gather(*load)
        for index, got in enumerate(received):
            assert got == [b"%d:%d" % (index, n) for n in range(total)]
        assert [session.id for session in sessions] == ids  # resumed, not replaced
        for session in sessions:
            await session.close()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert second is not None
    assert "recovered" in output(second)


async def test_kill_9_mid_stream_recovers_without_a_gap(redis_server: RedisServer) -> None:
    port = free_port()
    first = daemon(port, redis_server.url)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_listening(port, first)
        session = await sessiond_client.connect(
            f"tcp://127.0.0.1:{port}", policy=ReconnectPolicy(base=0.05, cap=0.5)
        )
        sid = session.id
        total = 600
        received: list[bytes] = []

        async def read() -> None:
            while len(received) < total:
                received.append(await session.recv())

        reader = asyncio.create_task(read())
        for n in range(total):
            await session.send(b"%d" % n)
            if n == total // 3:
                while len(received) < total // 4:
                    await asyncio.sleep(0.01)
                first.kill()  # SIGKILL: no drain, no release; its lease must run out
                first.wait()
                second = daemon(port, redis_server.url)
        async with asyncio.timeout(60):
            await reader
        assert received == [b"%d" % n for n in range(total)]  # no gap, no duplicate
        assert session.id == sid  # resumed once the dead owner's lease ran out
        await session.close()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
