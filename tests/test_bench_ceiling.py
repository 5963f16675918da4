"""``bench/ceiling.py`` over TLS: the daemon's own TLS transport (compact, the default)
or uvloop's (fast) echoes framed messages, and a client that fails its handshake costs
that transport only. (``python -m bench idle`` measures its memory; see test_bench_run.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bench.processes import HOST, Pinning, ServerProcess, free_port
from sessiond import tls


@pytest.mark.parametrize("mode", ["compact", "fast"])
async def test_the_tls_ceiling_echoes_and_survives_a_failed_handshake(
    tmp_path: Path, mode: str
) -> None:
    files = tls.generate(tmp_path / "certs", [HOST])
    port = free_port()
    command = [sys.executable, "-m", "bench.ceiling", "--listen", f"{HOST}:{port}",
               "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
               "--tls-idle-memory", mode]  # fmt: skip
    unpinned = Pinning(None, None, "unpinned")
    with ServerProcess(f"ceiling-{mode}", command, port, unpinned, tmp_path) as proc:
        # Not TLS at all: that handshake fails, the listener goes on.
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10.0) == b""
        writer.close()

        context = tls.client_context(files.ca)
        for _ in range(2):
            reader, writer = await asyncio.open_connection(HOST, port, ssl=context)
            frames = b"".join(len(p).to_bytes(4, "big") + p for p in (b"one", b"", b"three"))
            writer.write(frames[:5])
            await writer.drain()
            writer.write(frames[5:])
            assert await asyncio.wait_for(reader.readexactly(len(frames)), 10.0) == frames
            writer.close()
            await writer.wait_closed()
        proc.check_alive()
        assert proc.stop()["exit_code"] == 0
