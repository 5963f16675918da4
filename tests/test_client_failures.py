"""Issue 13: the client at its edges is never silent, fails fast with a clear reason.

Each test is one finding of the issue, on real sockets (the daemon a subprocess killed
with SIGKILL where the finding needs it):

1. ``close()`` (``async with``, ``connect_sync(...).close()``, ``with``) returns only when
   everything sent was acknowledged, else raises ``SessionLost`` with ``undelivered``;
   a ``state_file`` session the server lost raises with the payloads kept on disk.
2. The first connection fails with ``ConnectFailed`` in bounded time, naming the address
   and the cause (refused, an unresolvable name, TLS verification, handshake timeout,
   credentials refused); ``wait_for_server=True`` retries until the server appears.
3. ``send()`` of a payload that is not bytes-like raises ``TypeError`` at the call.
5. Notices are typed, and no public name stands for two things.
7. The ``sessiond_client`` logger tells connect, retry, resume and loss; DEBUG frame
   summaries never show a payload or a credential.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import pytest
import sessiond_client
from sessiond_client import (
    CloseCode,
    ConnectFailed,
    Params,
    ReconnectPolicy,
    SessionLost,
    SessionLostEvent,
    State,
)

import sessiond
import sessiond.apps
from bench.processes import free_port
from sessiond.auth import TokenFileAuthenticator
from sessiond.server import ServerConfig
from sessiond.tls import generate, server_context
from tests.faultproxy import FaultProxy
from tests.test_daemon_killed import Daemon, daemon
from tests.test_faults import CLIENT_PARAMS, echo_daemon
from tests.test_state_file import Child
from tests.threaded import daemon_thread

FAST = ReconnectPolicy(base=0.01, cap=0.1)
BOUND = 30.0  # "bounded time" on a loaded machine: generous, never a benchmark


async def echoed(session: sessiond_client.Session, payloads: list[bytes]) -> None:
    """Send *payloads*, wait for their echoes and for the server's acknowledgement (an
    echo can come back before the coalesced ACK)."""
    for payload in payloads:
        await session.send(payload)
    async with asyncio.timeout(BOUND):
        assert [await session.recv() for _ in payloads] == payloads
        while session.core.unacked_count:
            await asyncio.sleep(0.01)


async def kill(process: Daemon) -> None:
    process.proc.send_signal(signal.SIGKILL)
    assert await process.wait_exit(10) == -signal.SIGKILL


# ------------------------------------------------------------------- 1: close()


@pytest.mark.parametrize("how", ["close", "async with"])
async def test_close_after_sigkill_raises_with_the_undelivered_messages(
    tmp_path: Path, how: str
) -> None:
    """The issue's telemetry run: readings 6-9 sent while the daemon was dead."""
    port = free_port()
    readings = [b"reading %d" % n for n in range(10)]
    async with daemon(port, tmp_path / "daemon.log") as process:
        url = f"tcp://127.0.0.1:{port}"
        session = await sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST)
        await echoed(session, readings[:6])
        await kill(process)
        with pytest.raises(SessionLost) as lost:
            if how == "close":
                for reading in readings[6:]:
                    await session.send(reading)
                await session.close(timeout=0.5)
            else:
                async with session:
                    for reading in readings[6:]:
                        await session.send(reading)
    assert lost.value.undelivered == tuple(readings[6:])  # oldest first
    assert "4 message(s) not acknowledged" in str(lost.value)
    assert session.state is State.CLOSED
    with pytest.raises(SessionLost) as again:  # a second close says the same
        await session.close()
    assert again.value is lost.value


async def test_concurrent_closes_both_wait_and_raise_the_same() -> None:
    async with echo_daemon() as server, FaultProxy(*server.addresses[0]) as proxy:
        url = "tcp://{}:{}".format(*proxy.address)
        session = await sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST)
        await echoed(session, [b"through"])
        proxy.blackhole()  # half-open: nothing is acknowledged any more
        await session.send(b"swallowed")
        outcomes = await asyncio.gather(
            session.close(timeout=0.5), session.close(timeout=0.5), return_exceptions=True
        )
    first, second = outcomes
    assert isinstance(first, SessionLost) and first is second
    assert first.undelivered == (b"swallowed",)


def cancel_after_acknowledged(
    session: sessiond_client.Session, task: asyncio.Task[None], offset: int
) -> list[bool]:
    """Cancel *task* *offset* loop iterations after the one in which everything
    *session* sent was acknowledged (a callback run every iteration watches it); the
    list returned says, once the callback has stopped, whether it cancelled the task
    while it was still running."""
    loop = asyncio.get_running_loop()
    cancelled: list[bool] = []
    left = offset

    def look() -> None:
        nonlocal left
        if task.done():
            cancelled.append(False)
            return
        if session.core.unacked_count == 0:
            if left == 0:
                cancelled.append(task.cancel())
                return
            left -= 1
        loop.call_soon(look)

    loop.call_soon(look)
    return cancelled


async def test_a_close_cancelled_as_its_last_ack_arrives_raises_cancelled() -> None:
    """An application cancelling its task in close() has the cancel raised, whatever
    the loop iteration it arrives at relative to the last acknowledgement (on Python
    3.11 asyncio.wait_for returned instead when its future was done by then:
    python/cpython#86296, sessiond/tasks.py); the session ends all the same."""
    hit: list[int] = []  # offsets at which the cancel came while close() ran
    lost: list[int] = []  # and close() returned all the same
    async with echo_daemon() as server:
        url = "tcp://{}:{}".format(*server.addresses[0])
        for offset in range(8):
            session = await sessiond_client.connect(url, params=CLIENT_PARAMS)
            await session.send(b"last")
            closing = asyncio.create_task(session.close(timeout=BOUND))
            cancelled = cancel_after_acknowledged(session, closing, offset)
            async with asyncio.timeout(BOUND):
                await asyncio.wait([closing])
            assert cancelled, offset
            if cancelled[0]:
                hit.append(offset)
                if not closing.cancelled():
                    lost.append(offset)
            else:
                assert closing.result() is None, offset
            assert session.state is State.CLOSED, offset
    assert hit and lost == [], (hit, lost)


async def test_close_returns_when_everything_was_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    async with daemon(port, tmp_path / "daemon.log") as process:
        url = f"tcp://127.0.0.1:{port}"
        async with await sessiond_client.connect(url, params=CLIENT_PARAMS) as session:
            await echoed(session, [b"a", b"b"])
        await session.close()  # idempotent, nothing lost
        # A session lost with nothing in doubt: close() has nothing to report either.
        lost_clean = await sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST)
        await echoed(lost_clean, [b"c"])
        await kill(process)
    async with daemon(port, tmp_path / "second.log"):
        with pytest.raises(SessionLost) as lost:
            async with asyncio.timeout(BOUND):
                await lost_clean.recv()
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION and lost.value.undelivered == ()
        await lost_clean.close()


async def test_the_blocking_facade_raises_on_close_and_on_leaving_with(tmp_path: Path) -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"

    def run(process: Daemon) -> tuple[SessionLost, SessionLost]:
        first = sessiond_client.connect_sync(url, params=CLIENT_PARAMS, policy=FAST)
        second = sessiond_client.connect_sync(url, params=CLIENT_PARAMS, policy=FAST)
        first.send(b"acknowledged")
        assert first.recv(timeout=BOUND) == b"acknowledged"
        deadline = time.monotonic() + BOUND
        while first._session.core.unacked_count:  # the ACK may follow the echo
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.proc.send_signal(signal.SIGKILL)
        assert process.proc.wait(10) == -signal.SIGKILL
        first.send(b"in doubt 1")
        first.send(b"in doubt 2")
        with pytest.raises(SessionLost) as by_close:
            first.close(timeout=0.5)
        with pytest.raises(SessionLost) as by_with, second:
            second.send(b"in doubt 3")
        return by_close.value, by_with.value

    async with daemon(port, tmp_path / "daemon.log") as process:
        by_close, by_with = await asyncio.to_thread(run, process)
    assert by_close.undelivered == (b"in doubt 1", b"in doubt 2")
    assert by_with.undelivered == (b"in doubt 3",)


async def test_a_state_file_session_the_server_lost_raises_with_the_saved_payloads(
    tmp_path: Path,
) -> None:
    """A device's process dies with readings on disk; the daemon restarted meanwhile."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    path = tmp_path / "device.db"
    async with daemon(port, tmp_path / "first.log") as process:
        child = await Child.start(url, path)
        await child.expect("ready")
        await kill(process)
        await child.command("send 1 3")  # into the window: kept on disk, never acknowledged
        await child.expect("sent 3")
        await child.kill()
    async with daemon(port, tmp_path / "second.log"):
        with pytest.raises(SessionLost) as lost:
            await sessiond_client.connect(url, state_file=path, params=CLIENT_PARAMS)
        assert not isinstance(lost.value, ConnectFailed)  # it connected: the session is gone
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION
        assert lost.value.undelivered == (b"m1", b"m2", b"m3")
        # The application may send them again, on a new session from the same file.
        async with await sessiond_client.connect(url, state_file=path) as session:
            await echoed(session, list(lost.value.undelivered))


# ------------------------------------------------------- 2: the first connection


async def test_a_closed_port_fails_at_once_naming_the_address() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    async with asyncio.timeout(BOUND):  # before the fix: blocked forever
        with pytest.raises(ConnectFailed) as failed:
            await sessiond_client.connect(url)
    assert failed.value.address == url and url in str(failed.value)
    assert "refused" in str(failed.value)
    assert failed.value.reason is CloseCode.TRANSPORT_LOST and failed.value.undelivered == ()
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


async def test_connect_sync_fails_the_same_way() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectFailed, match="refused"):
        await asyncio.wait_for(asyncio.to_thread(sessiond_client.connect_sync, url), BOUND)


async def test_a_name_that_cannot_be_resolved_fails_naming_it() -> None:
    # A label longer than 63 characters is refused before any lookup leaves this
    # machine (its resolver is not on loopback); the message names the host.
    url = "tcp://" + "x" * 64 + ".invalid:7420"
    async with asyncio.timeout(BOUND):
        with pytest.raises(ConnectFailed, match="cannot resolve the host name") as failed:
            await sessiond_client.connect(url)
    assert url in str(failed.value)


async def test_an_unverified_tls_server_fails_with_the_ssl_reason(tmp_path: Path) -> None:
    certs = generate(tmp_path / "certs", ["127.0.0.1"], [])
    context = server_context(certs.server_cert, certs.server_key)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
        host, port = server.addresses[0]
        url = f"tls://{host}:{port}"
        async with asyncio.timeout(BOUND):
            with pytest.raises(ConnectFailed) as failed:  # the system store lacks our CA
                await sessiond_client.connect(url, policy=FAST, wait_for_server=True)
        assert url in str(failed.value)
        assert "certificate verification failed" in str(failed.value)
        assert "local issuer" in str(failed.value) or "self-signed" in str(failed.value)


async def test_a_server_that_never_answers_fails_after_the_handshake_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        params = Params(handshake_timeout=0.5)
        async with asyncio.timeout(BOUND):
            with pytest.raises(ConnectFailed) as failed:
                await sessiond_client.connect(f"tcp://127.0.0.1:{port}", params=params)
        assert failed.value.reason is CloseCode.HANDSHAKE_TIMEOUT
        assert "no handshake within 0.5 s" in str(failed.value)
        assert accepted
        for writer in accepted:
            writer.close()


async def test_refused_credentials_fail_with_auth_failed(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"sensor-1 {TokenFileAuthenticator.hash_token('right')}\n")
    config = ServerConfig(authenticator=TokenFileAuthenticator(tokens))
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        url = "tcp://{}:{}".format(*server.addresses[0])
        with pytest.raises(ConnectFailed) as failed:
            await sessiond_client.connect(url, credentials="wrong", policy=FAST)
        assert failed.value.reason is CloseCode.AUTH_FAILED and url in str(failed.value)
        async with await sessiond_client.connect(url, credentials="right") as session:
            await echoed(session, [b"in"])


async def test_wait_for_server_retries_until_the_server_appears(tmp_path: Path) -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    connecting = asyncio.create_task(
        sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST, wait_for_server=True)
    )
    await asyncio.sleep(0.5)
    assert not connecting.done()  # refused, and retrying
    async with daemon(port, tmp_path / "daemon.log"):
        async with asyncio.timeout(BOUND):
            session = await connecting
        async with session:
            await echoed(session, [b"late but there"])


# ------------------------------------------------------------------- 3: send()


@pytest.mark.parametrize("payload", ["text", 42, None, [b"a"]])
async def test_send_of_a_non_bytes_payload_raises_at_the_call(payload: object) -> None:
    async with echo_daemon() as server:
        url = "tcp://{}:{}".format(*server.addresses[0])
        async with await sessiond_client.connect(url, params=CLIENT_PARAMS) as session:
            with pytest.raises(TypeError, match="bytes-like"):
                await session.send(payload)  # type: ignore[arg-type]
            assert session.state is State.ACTIVE  # unaffected: what follows arrives
            await session.send(bytearray(b"bytearray"))
            await session.send(memoryview(b"memoryview"))
            await session.send(b"after")
            async with asyncio.timeout(BOUND):
                got = [await session.recv() for _ in range(3)]
            assert got == [b"bytearray", b"memoryview", b"after"]
        assert session.core.sequence_numbers[0] == 3


def test_send_of_a_str_raises_at_the_call_on_the_blocking_facade() -> None:
    with (
        daemon_thread(sessiond.apps.echo) as running,
        sessiond_client.connect_sync(running.url) as session,
    ):
        with pytest.raises(TypeError, match="not str"):
            session.send("text")  # type: ignore[arg-type]
        session.send(b"bytes")
        assert session.recv(timeout=BOUND) == b"bytes"


# --------------------------------------------------------- 5: names and notices


def test_no_public_name_stands_for_two_things() -> None:
    """What an application imports (the package, the channels helpers) and every event
    and exception class: one name, one thing. (The sans-I/O core keeps its own
    ``protocol.Session`` and ``protocol.Event``, used with their module's prefix.)"""
    from sessiond_client import channels, envelopes  # noqa: PLC0415
    from sessiond_client.protocol import errors, events  # noqa: PLC0415

    seen: dict[str, object] = {}
    for module in (sessiond_client, channels, envelopes, events, errors):
        for name in getattr(module, "__all__", None) or list(vars(module)):
            value = getattr(module, name)
            if module in (events, errors) and not isinstance(value, type):
                continue  # imports and helpers
            first = seen.setdefault(name, value)
            assert first is value, f"{name} names two things ({module.__name__})"
    assert issubclass(sessiond_client.SessionLost, Exception)
    assert not issubclass(SessionLostEvent, BaseException)


async def test_notices_hold_typed_events(tmp_path: Path) -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    async with daemon(port, tmp_path / "first.log") as process:
        session = await sessiond_client.connect(
            url, params=CLIENT_PARAMS, policy=FAST, fresh_session=True
        )
        await echoed(session, [b"before"])
        first = session.id
        await kill(process)
        await session.send(b"in doubt")
    async with daemon(port, tmp_path / "second.log"):
        async with asyncio.timeout(BOUND):
            while session.id == first:
                await asyncio.sleep(0.02)
        lost, started = list(session.notices)
        assert isinstance(lost, SessionLostEvent) and lost.unacked == (b"in doubt",)
        assert isinstance(started, sessiond_client.SessionStarted)
        assert started.replaces is CloseCode.UNKNOWN_SESSION
        await echoed(session, [b"fresh"])
        await session.close()


# ---------------------------------------------------------------- 7: logging


async def test_the_log_tells_connect_retry_resume_and_loss_but_never_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "bearer-7f3a9c1e5d"  # the HELLO credential
    payload = b"PAYLOAD-4b8e2d"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"sensor-1 {TokenFileAuthenticator.hash_token(token)}\n")
    config = ServerConfig(authenticator=TokenFileAuthenticator(tokens))
    policy = ReconnectPolicy(base=0.05, cap=0.1, max_attempts=3)
    caplog.set_level(logging.DEBUG, logger="sessiond_client")
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        async with FaultProxy(*server.addresses[0]) as proxy:
            url = "tcp://{}:{}".format(*proxy.address)
            session = await sessiond_client.connect(
                url, credentials={"token": token}, params=CLIENT_PARAMS, policy=policy
            )
            await echoed(session, [payload])
            proxy.cut()  # a resume
            await echoed(session, [payload + b" again"])
            saved = session.core.snapshot()
        # The proxy stopped listening: the retries are refused until the policy gives up.
        with pytest.raises(SessionLost, match="gave up after 3 attempts"):
            async with asyncio.timeout(BOUND):
                await session.recv()
    try:
        await session.close()
    except SessionLost as lost:  # its echo came, the ACK (coalesced) may not have
        assert lost.undelivered == (payload + b" again",)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "sessiond_client")
    for told in ("connecting", "started", "connection lost", "resumed in", "retrying in"):
        assert told in text, told
    assert "session lost: TRANSPORT_LOST (gave up after 3 attempts" in text
    assert "DATA seq 1" in text and "HELLO (resume)" in text  # DEBUG frame summaries
    assert saved is not None
    for secret in (token, payload.decode(), saved.credential.hex(), repr(saved.credential)):
        assert secret not in text, f"{secret!r} was logged"
