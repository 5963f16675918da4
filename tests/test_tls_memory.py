"""What idle TLS costs the daemon (issue 18), read from /proc, at a small scale.

``python -m sessiond serve`` (uvloop) with a ``tls://`` listener and a ``gen-cert``
certificate. ``python -m bench idle`` measures the same at 1,000 and 3,000 sessions
(README, "Memory"); the bounds here are generous, well above what the daemon pays and
well below what it paid before sessiond/heap.py and TlsAccept's deferred TLS state.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sessiond_client import tls_context
from sessiond_client.protocol import Params

import sessiond
import sessiond.apps
from bench.loadgen import close_idle, open_idle
from bench.processes import free_port
from sessiond import heap
from sessiond.config import load
from sessiond.daemon import server_config
from sessiond.server import ServerConfig
from sessiond.tls import generate, server_context
from tests.coreclient import CoreClient
from tests.test_attacks import echo, rss_kib

HOST = "127.0.0.1"
SESSIONS = 200
#: Server RSS per idle TLS session: 23-24 KiB with the shared ciphertext buffer (26-27
#: with uvloop's TLS protocol and sessiond/heap.py, 37-40 with neither, at 1,000 sessions
#: in ``bench idle``), of which OpenSSL's own state is 16 KiB. A guard against gross
#: regressions: asyncio's TLS protocol with a buffer of its own costs 279 KiB.
SESSION_BOUND_KIB = 32
#: Server RSS per TCP connection to the TLS listener that has sent nothing yet: 1.7 KiB
#: measured (48 KiB when the TLS state was made at accept).
SILENT_BOUND_KIB = 12


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The echo daemon on a tls:// listener; yields it, its port and the CA file."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the daemon's RSS")
    certs = generate(tmp_path / "certs", [HOST])
    port = free_port()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "sessiond", "serve", "--app", "echo"),
            *("--listen", f"tls://{HOST}:{port}", "--log-level", "WARNING"),
            *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, port, certs.ca
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def listening(proc: subprocess.Popen[bytes], port: int) -> None:
    async with asyncio.timeout(120):  # the daemon's imports take seconds on a loaded machine
        while True:
            assert proc.poll() is None, "the daemon exited"
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return


async def settled_rss(pid: int) -> int:
    """The daemon's RSS once it has handled what was sent (a moment to settle)."""
    await asyncio.sleep(0.5)
    return rss_kib(pid)


async def test_idle_tls_sessions_and_silent_connections_cost_the_daemon_little(
    tls_daemon: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, ca = tls_daemon
    await listening(proc, port)
    context = tls_context(ca)
    params = Params(heartbeat_interval=15.0)
    # One session first: what its first use allocates is not each session's.
    await close_idle(await open_idle(port, 1, 1, params, lambda _: HOST, 30.0, context), 10.0)

    before = await settled_rss(proc.pid)
    sessions = await open_idle(port, SESSIONS, 20, params, lambda _: "127.0.0.2", 60.0, context)
    try:
        with_sessions = await settled_rss(proc.pid)
        assert all(s.open and s.failure is None for s in sessions)
        # Measured while the sessions are open: no memory they freed is there to reuse.
        silent = [
            await asyncio.open_connection(HOST, port, local_addr=("127.0.0.3", 0))
            for _ in range(SESSIONS)
        ]
        with_silent = await settled_rss(proc.pid)
        for _, writer in silent:
            writer.close()
    finally:
        await close_idle(sessions, 30.0)
    per_session = (with_sessions - before) / SESSIONS
    per_silent = (with_silent - with_sessions) / SESSIONS
    assert per_session < SESSION_BOUND_KIB, f"{per_session:.1f} KiB per idle TLS session"
    assert per_silent < SILENT_BOUND_KIB, f"{per_silent:.1f} KiB per silent connection"


class LateHello(CoreClient):
    """Connects over TCP, says nothing for *delay* seconds, then starts TLS."""

    delay = 0.5

    async def open_transport(self, timeout: float = 5.0) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.sleep(self.delay)
        assert self.ssl is not None
        await self.writer.start_tls(self.ssl, server_hostname=self.host)


async def test_tls_state_waits_for_the_client_hello_within_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    """A TLS transport is counted from accept but has no TLS state until its first bytes.
    A client that speaks late (within handshake_timeout) completes TLS and echoes; one
    that never speaks is closed at handshake_timeout; one that leaves first is uncounted."""
    certs = generate(tmp_path / "certs", [HOST])
    config = ServerConfig(params=Params(handshake_timeout=2.0))
    context = server_context(certs.server_cert, certs.server_key)
    async with sessiond.serve(sessiond.apps.echo, HOST, 0, ssl=context, config=config) as server:
        port = server.addresses[0][1]
        silent_reader, silent = await asyncio.open_connection(HOST, port)
        _, leaver = await asyncio.open_connection(HOST, port)
        late = LateHello(HOST, port, ssl=tls_context(certs.ca))
        opening = asyncio.create_task(late.open(timeout=30))
        async with asyncio.timeout(30):
            while server.tls_pending < 3:  # the three, counted from accept
                await asyncio.sleep(0.01)
        leaver.close()
        await opening
        await echo(late, b"a late ClientHello is served")
        async with asyncio.timeout(30):
            assert await silent_reader.read() == b""  # closed at handshake_timeout
            while server.tls_pending or server.per_host != {HOST: 1}:  # the late session's
                await asyncio.sleep(0.01)
        await late.close()
        silent.close()


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def mapped_blocks(size: int, count: int, fix: bool = True) -> int:
    """Of *count* blocks of *size* bytes malloc'd at once, how many got their own mapping
    (``mallinfo2().hblks``), after :func:`sessiond.heap.map_large_blocks` (with *fix*)."""
    libc = heap._glibc()
    assert libc is not None
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # As in a daemon that has run a while: a freed 1 MiB mapping raises glibc's dynamic
    # threshold to 1 MiB (without the fix, 256 KiB blocks would then come from the heap).
    libc.free(libc.malloc(1 << 20))
    if fix:
        assert heap.map_large_blocks()
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(size) for _ in range(count)]
    mapped = int(libc.mallinfo2().hblks - before)
    for block in blocks:
        libc.free(block)
    return mapped


def test_with_large_blocks_mapped_tls_read_buffers_get_their_own_mappings() -> None:
    """After :func:`sessiond.heap.map_large_blocks` (which a TLS listener calls with
    ``ServerConfig(tls_shared_buffer=False, map_large_blocks=True)``), blocks
    the size of uvloop's TLS read buffer are mmapped on their own (only their touched
    pages are resident), except the few that free heap space can hold (glibc maps only
    what the heap cannot serve); a 256,000-byte TCP read's copy still comes from the heap.
    In a fresh interpreter, whose heap has little free space."""
    libc = heap._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc 2.33+ only")
    code = (
        "from tests.test_tls_memory import mapped_blocks; "
        "print(mapped_blocks(256 * 1024, 32), mapped_blocks(256_000, 32))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    tls_buffers, tcp_reads = map(int, out.stdout.split())
    assert tls_buffers >= 28, out.stdout  # uvloop's SSL_READ_MAX_SIZE
    assert tcp_reads == 0, out.stdout  # uvloop's UV_STREAM_RECV_BUF_SIZE


def mapped_blocks_with_a_tls_listener(idle_memory: str) -> int:
    """:func:`mapped_blocks` of uvloop's TLS read buffer's size after a daemon-configured
    server (``tls.idle_memory`` from the environment, as ``serve`` reads it) has listened
    on tls:// (no certificate needed: nothing connects)."""
    settings = load(env={"SESSIOND_TLS_IDLE_MEMORY": idle_memory})

    async def listen() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server = sessiond.Server(sessiond.apps.echo, server_config(settings))
        await server.listen(HOST, 0, ssl=context)
        await server.close()

    asyncio.run(listen())
    return mapped_blocks(256 * 1024, 32, fix=False)


@pytest.mark.parametrize("idle_memory", ["compact", "fast"])
def test_tls_listener_leaves_glibc_mmap_threshold_alone(idle_memory: str) -> None:
    """``tls.idle_memory = "compact"`` (the default) needs no 256 KiB read buffer per
    TLS transport (they share one), and ``"fast"`` takes glibc's default: either way a
    tls:// listener leaves the threshold alone, so with glibc's dynamic threshold raised
    by a freed 1 MiB block, 256 KiB blocks come from the heap (no mmap/munmap per large
    batch). Only an embedder's ``ServerConfig(tls_shared_buffer=False,
    map_large_blocks=True)`` fixes it, as above."""
    libc = heap._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc 2.33+ only")
    code = (
        "from tests.test_tls_memory import mapped_blocks_with_a_tls_listener as m; "
        f"print(m({idle_memory!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout) == 0, out.stdout
