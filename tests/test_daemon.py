"""The daemon over real sockets on 127.0.0.1: echo, resume after a killed transport,
bad input costing one transport only, and ``sessiond serve`` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from sessiond_client.protocol import (
    CloseCode,
    FrameDecoder,
    Params,
    SessionResumed,
    SessionStarted,
    parse_frame,
)
from sessiond_client.protocol.frames import Close, Hello

import sessiond
import sessiond.apps
from bench.processes import free_port
from sessiond.server import ServerConfig
from tests.coreclient import CoreClient


@pytest.fixture
async def echo_server() -> AsyncIterator[sessiond.Server]:
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0) as server:
        yield server


def address(server: sessiond.Server) -> tuple[str, int]:
    return server.addresses[0]


async def test_echo_in_order(echo_server: sessiond.Server) -> None:
    client = CoreClient(*address(echo_server))
    await client.open()
    assert isinstance(client.events[0], SessionStarted)
    sent = [f"message {i}".encode() for i in range(2000)]
    pending = list(sent)
    while len(client.received) < len(sent):
        while pending and client.session.can_send(len(pending[0])):
            client.send(pending.pop(0))
        await client.pump_once(5.0)
    assert client.received == sent
    await client.close()


async def test_killed_transport_resumes_without_loss(echo_server: sessiond.Server) -> None:
    client = CoreClient(*address(echo_server))
    await client.open()
    sent = [f"m{i}".encode() for i in range(300)]
    for payload in sent[:100]:
        client.send(payload)
    await client.kill()  # whatever was in flight either way is now in doubt
    for payload in sent[100:200]:
        client.send(payload)  # queued while detached
    await client.open()
    assert any(isinstance(e, SessionResumed) for e in client.events)
    for payload in sent[200:]:
        client.send(payload)
    await client.pump_until(lambda: len(client.received) >= len(sent))
    assert client.received == sent
    await client.close()


async def test_garbage_closes_only_that_transport(echo_server: sessiond.Server) -> None:
    host, port = address(echo_server)
    canary = CoreClient(host, port)
    await canary.open()
    cases = {
        b"\xc1": CloseCode.PROTOCOL_ERROR,
        b"\x93\x03\xcf" + bytes(8) + b"\xc6\xff\xff\xff\xff": CloseCode.FRAME_TOO_LARGE,
        bytes.fromhex("9303cf0000000000000001c400"): CloseCode.UNEXPECTED_FRAME,  # DATA first
    }
    for garbage, code in cases.items():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(garbage)
        reply = await asyncio.wait_for(reader.read(), 5.0)  # read to EOF: the daemon closed
        frames = FrameDecoder(1 << 20).feed(reply)
        close = parse_frame(frames[-1])
        assert isinstance(close, Close) and close.code == code
        writer.close()
        canary.send(b"still here")
        await canary.pump_until(lambda: canary.received[-1:] == [b"still here"])
    await canary.close()


async def test_wrong_version_and_silence_close_with_their_codes() -> None:
    config = ServerConfig(params=Params(handshake_timeout=0.3))
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        host, port = address(server)
        canary = CoreClient(host, port)
        await canary.open()
        hello = Hello((99,), 15000, 1024, 1 << 20, 1 << 20, 0).encode()
        for opening, code in (
            (hello, CloseCode.UNSUPPORTED_VERSION),
            (b"", CloseCode.HANDSHAKE_TIMEOUT),
        ):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(opening)
            reply = await asyncio.wait_for(reader.read(), 5.0)
            close = parse_frame(FrameDecoder(1 << 20).feed(reply)[-1])
            assert isinstance(close, Close) and close.code == code
            writer.close()
        canary.send(b"fine")
        await canary.pump_until(lambda: canary.received == [b"fine"])
        await canary.close()


@pytest.mark.parametrize(
    ("stop", "log_format"), [(signal.SIGTERM, "text"), (signal.SIGINT, "json")]
)
async def test_sessiond_serve_subprocess_echoes_and_drains_on_signal(
    stop: signal.Signals, log_format: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sessiond",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            log_format,
            "--app",
            "echo",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client = CoreClient("127.0.0.1", port)
                await client.open()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.05)
        client.send(b"ping")
        await client.pump_until(lambda: client.received == [b"ping"])
        await client.close()
        proc.send_signal(stop)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    log = proc.stdout.read().decode()
    assert "listening on tcp://127.0.0.1" in log and "created" in log and "drained" in log
    if log_format == "json":
        events = [json.loads(line).get("event") for line in log.splitlines()]
        assert "created" in events and "closed" in events


async def test_the_close_frame_survives_input_the_daemon_never_read(
    echo_server: sessiond.Server,
) -> None:
    # Garbage, then much more behind it that the daemon will not read: closing the
    # socket outright would reset the connection and could destroy the CLOSE frame
    # before the client reads it. The daemon half-closes and drains instead.
    host, port = address(echo_server)
    for _ in range(10):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\xc1" + bytes(4 << 20))
        reply = await asyncio.wait_for(reader.read(), 5.0)  # to EOF: the daemon's FIN
        close = parse_frame(FrameDecoder(1 << 20).feed(reply)[-1])
        assert isinstance(close, Close) and close.code == CloseCode.PROTOCOL_ERROR
        writer.close()
