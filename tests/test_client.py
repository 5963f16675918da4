"""The asyncio client against the real daemon: transparent reconnect and resume through
the fault proxy, offline sends, SessionLost with its reason, credentials per attempt,
and the reconnect policy with an injected random source."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest
import sessiond_client
from sessiond_client import CloseCode, Params, ReconnectPolicy, SessionLost, State
from sessiond_client.client import parse_url
from sessiond_client.protocol import GoawayReceived, SessionLostEvent

import sessiond
from tests.faultproxy import C2S, S2C, Direction, FaultProxy, ProxyConnection
from tests.test_faults import CLIENT_PARAMS, IDLE_TIMEOUT, MARGIN, daemon_and_proxy, echo_daemon

FAST = ReconnectPolicy(base=0.01, cap=0.1)


def url_of(proxy: FaultProxy) -> str:
    host, port = proxy.address
    return f"tcp://{host}:{port}"


async def drain_echoes(session: sessiond_client.Session, count: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await session.recv())
    return got


async def receive_into(session: sessiond_client.Session, received: list[bytes], count: int) -> None:
    """Append every payload *session* yields to *received* until it holds *count* (run as
    a task beside the sends; the test then awaits it, bounded)."""
    async for payload in session:
        received.append(payload)
        if len(received) == count:
            return


async def test_echo_survives_random_cuts_exactly_once_in_order() -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    async with daemon_and_proxy() as (_server, proxy):
        url = url_of(proxy)
        session = await sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST)
        states: list[State] = []
        session.on_state_change(states.append)
        sent = [f"n{i}".encode() for i in range(3000)]
        received: list[bytes] = []
        task = asyncio.create_task(receive_into(session, received, len(sent)))
        cut: set[int] = set()  # the proxy connections a cut hit
        for i, payload in enumerate(sent):
            await session.send(payload, timeout=10)
            if i == 1_500 or rng.random() < 0.004:
                cut.update(conn.index for conn in proxy.active)
                proxy.cut()  # both directions, messages in flight both ways
            if i % 200 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(task, 30)
        assert received == sent, f"seed={seed}"
        # The cuts happened: each connection cut was replaced, and the session resumed.
        assert cut and len(proxy.connections) >= len(cut) + 1, f"seed={seed}"
        assert all(proxy.connections[index].closed for index in cut), f"seed={seed}"
        assert states.count(State.ACTIVE) >= 1 and session.state is State.ACTIVE
        await session.close()
        assert states[-1] is State.CLOSED  # the listener saw every change


async def test_sends_while_offline_go_out_after_the_replay() -> None:
    async with daemon_and_proxy() as (_server, proxy):
        session = await sessiond_client.connect(url_of(proxy), params=CLIENT_PARAMS, policy=FAST)
        await session.send(b"before")
        assert await drain_echoes(session, 1, 5) == [b"before"]
        proxy.blackhole()  # half-open: only the idle timeout can tell
        for i in range(20):
            await session.send(f"offline {i}".encode())
        got = await drain_echoes(session, 20, IDLE_TIMEOUT + MARGIN + 5)
        assert got == [f"offline {i}".encode() for i in range(20)]
        await session.close()


async def test_credentials_callable_is_called_before_every_attempt() -> None:
    calls: list[int] = []

    async def token() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    async with daemon_and_proxy() as (_server, proxy):
        session = await sessiond_client.connect(
            url_of(proxy), credentials=token, params=CLIENT_PARAMS, policy=FAST
        )
        assert len(calls) == 1
        proxy.cut()
        await session.send(b"x")
        assert await drain_echoes(session, 1, 5) == [b"x"]
        assert len(calls) >= 2
        await session.close()


async def test_server_restart_is_session_lost_with_the_reason() -> None:
    async with daemon_and_proxy() as (server, proxy):
        url = url_of(proxy)
        session = await sessiond_client.connect(url, params=CLIENT_PARAMS, policy=FAST)
        await session.send(b"echoed")
        assert await drain_echoes(session, 1, 5) == [b"echoed"]
        server.sessions.clear()  # as after a restart with in-memory sessions
        proxy.cut()
        with pytest.raises(SessionLost) as lost:
            for _ in range(100):
                await session.send(b"into the void", timeout=5)
                await asyncio.sleep(0.02)
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION
        assert any(isinstance(n, SessionLostEvent) for n in session.notices)
        assert session.state is State.CLOSED


async def test_fresh_session_option_continues_with_a_new_session() -> None:
    async with daemon_and_proxy() as (server, proxy):
        url = url_of(proxy)
        session = await sessiond_client.connect(
            url, params=CLIENT_PARAMS, policy=FAST, fresh_session=True
        )
        first = session.id
        server.sessions.clear()
        proxy.cut()
        async with asyncio.timeout(5):
            while session.id == first:
                await asyncio.sleep(0.02)
        await session.send(b"new life")
        assert await drain_echoes(session, 1, 5) == [b"new life"]
        assert any(isinstance(n, SessionLostEvent) for n in session.notices)
        await session.close()


async def test_refused_connect_raises_after_the_policy_gives_up() -> None:
    async with daemon_and_proxy() as (server, _proxy):
        host, port = server.addresses[0]
    policy = ReconnectPolicy(base=0.01, cap=0.02, max_attempts=3)
    with pytest.raises(SessionLost) as lost:
        await sessiond_client.connect(f"tcp://{host}:{port}", policy=policy, wait_for_server=True)
    assert "3 attempts" in str(lost.value)


def test_backoff_follows_the_policy_with_an_injected_random_source() -> None:
    values = iter([1.0, 0.5, 1.0, 1.0, 0.25])
    policy = ReconnectPolicy(base=0.1, cap=1.0, random=lambda: next(values))
    assert policy.delay(0, CloseCode.IDLE_TIMEOUT) == 0.0  # immediate first attempt
    assert policy.delay(1, CloseCode.IDLE_TIMEOUT) == pytest.approx(0.2)  # 1.0 * 0.1 * 2
    assert policy.delay(2, CloseCode.TRANSPORT_LOST) == pytest.approx(0.2)  # 0.5 * 0.4
    assert policy.delay(5, CloseCode.HANDSHAKE_TIMEOUT) == pytest.approx(1.0)  # capped
    assert policy.delay(0, CloseCode.GOING_AWAY, retry_after=3.0) == 3.0  # retry-after wins
    assert policy.delay(1, CloseCode.LIMIT_EXCEEDED, retry_after=2.0) == pytest.approx(2.05)
    assert ReconnectPolicy(max_attempts=2).gives_up(2, 0.0)
    assert ReconnectPolicy(max_elapsed=1.0).gives_up(0, 1.5)


def test_backoff_stays_at_the_cap_however_many_attempts() -> None:
    # A client waiting for its server (wait_for_server=True) retries without bound:
    # 2.0**1024 overflowed a float before the exponent was capped.
    policy = ReconnectPolicy(base=0.1, cap=30.0, random=lambda: 1.0)
    for attempt in (1023, 1024, 5000, 10**9):
        assert policy.delay(attempt, CloseCode.TRANSPORT_LOST) == 30.0


def test_urls_are_checked() -> None:
    assert parse_url("tcp://127.0.0.1:7420") == ("127.0.0.1", 7420, False)
    assert parse_url("tls://[::1]:7443") == ("::1", 7443, True)
    for bad in ("http://x:1", "tcp://nohost", "127.0.0.1:7420"):
        with pytest.raises(ValueError):
            parse_url(bad)


FAULTS = ["cut", "one-way-to-client", "one-way-to-server", "blackhole", "chunk-1-byte"]


def stopped_by(fault: str) -> tuple[Direction, ...]:
    """The directions *fault* stops for good."""
    return {"one-way-to-client": (S2C,), "one-way-to-server": (C2S,)}.get(fault, (C2S, S2C))


@pytest.mark.parametrize("fault", FAULTS)
async def test_ten_thousand_each_way_through_faults(fault: str) -> None:
    """10,000 messages to the echo app and 10,000 back while the proxy injects *fault*
    four times: every message arrives exactly once, in order, on both sides. Through
    one-byte chunks (every frame split at every byte, both ways) 2,000 are enough: each
    of ~60,000 proxy writes per direction is a split point, at a fifth of the time."""
    count = 2_000 if fault == "chunk-1-byte" else 10_000
    async with daemon_and_proxy() as (server, proxy):
        if fault == "chunk-1-byte":
            proxy.chunk(1)
        session = await sessiond_client.connect(url_of(proxy), params=CLIENT_PARAMS, policy=FAST)
        sent = [f"{fault}:{i}".encode() for i in range(count)]
        received: list[bytes] = []

        states: list[State] = []
        session.on_state_change(states.append)
        task = asyncio.create_task(receive_into(session, received, count))
        faulted: list[ProxyConnection] = []  # the transport each fault hit
        stops: list[dict[Direction, int]] = []  # what it had forwarded where it stopped
        for i, payload in enumerate(sent):
            await session.send(payload, timeout=IDLE_TIMEOUT + MARGIN + 10)
            if i % 2_500 == 1_000 and fault != "chunk-1-byte":
                faulted.append(proxy.last)
                stopped = {d: proxy.last.forwarded(d) for d in stopped_by(fault)}
                if fault == "cut":
                    proxy.cut()
                elif fault == "one-way-to-client":
                    proxy.cut_one_way(S2C)
                elif fault == "one-way-to-server":
                    proxy.cut_one_way(C2S)
                elif fault == "blackhole":
                    proxy.blackhole()
                stops.append(stopped)
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(task, 60)
        assert received == sent
        (entry,) = server.sessions.values()  # one session throughout: never replaced
        assert entry.core.sequence_numbers[2] == count  # the daemon received each once
        if fault == "chunk-1-byte":  # one byte per write, both ways
            for direction in (C2S, S2C):
                assert proxy.forwarded(direction) > 2 * count
                for conn in proxy.connections:
                    assert conn.writes(direction) == conn.forwarded(direction)
        else:
            # Four faults, each on a transport that carried messages since the last one;
            # each stopped what it was meant to, and each was followed by a resume.
            assert len({id(conn) for conn in faulted}) == 4
            for conn, stopped in zip(faulted, stops, strict=True):
                assert {d: conn.forwarded(d) for d in stopped} == stopped, conn
            assert len(proxy.connections) >= 5
            assert states.count(State.ACTIVE) >= 4, states
        await session.close()


@pytest.mark.parametrize("fault", ["blackhole", "s2c"])
async def test_a_half_open_transport_is_detected_within_the_idle_timeout(fault: str) -> None:
    async with daemon_and_proxy() as (_server, proxy):
        session = await sessiond_client.connect(url_of(proxy), params=CLIENT_PARAMS, policy=FAST)
        await session.send(b"before")
        assert await drain_echoes(session, 1, 5) == [b"before"]
        reconnecting = asyncio.Event()

        def on_change(state: State) -> None:
            if state is State.RECONNECTING:
                reconnecting.set()

        session.on_state_change(on_change)
        if fault == "blackhole":
            proxy.blackhole()  # nothing passes, no FIN, no RST: only silence tells
        else:
            proxy.cut_one_way(S2C)  # the client still sends, hears nothing
        # Silence is noticed by the idle timeout (plus slack for a loaded machine).
        await asyncio.wait_for(reconnecting.wait(), IDLE_TIMEOUT + MARGIN)
        await session.send(b"after")
        assert await drain_echoes(session, 1, 5) == [b"after"]
        await session.close()


async def test_goaway_redirect_and_retry_after_are_obeyed() -> None:
    async with echo_daemon() as old, echo_daemon() as new:
        host, port = new.addresses[0]
        attempts: list[float] = []
        loop = asyncio.get_running_loop()

        def credentials() -> None:
            attempts.append(loop.time())  # called just before every connection attempt

        session = await sessiond_client.connect(
            "tcp://{}:{}".format(*old.addresses[0]),
            credentials=credentials,
            params=CLIENT_PARAMS,
            policy=FAST,
            fresh_session=True,  # the new daemon does not know the session
        )
        await session.send(b"on the old one")
        assert await drain_echoes(session, 1, 5) == [b"on the old one"]
        retry_after = 0.3
        drained_at = loop.time()
        first = session.id
        assert await old.drain(5.0, retry_after, redirect=f"tcp://{host}:{port}")
        async with asyncio.timeout(10):
            while session.id == first:  # the new daemon gave it a fresh session
                await asyncio.sleep(0.02)
        await session.send(b"on the new one")
        assert await drain_echoes(session, 1, 10) == [b"on the new one"]
        assert len(new.sessions) == 1 and len(attempts) == 2
        assert attempts[1] - drained_at >= retry_after  # it waited as told
        assert any(isinstance(n, GoawayReceived) for n in session.notices)
        await session.close()


async def test_a_session_expiring_during_the_backoff_is_lost_cleanly() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    params = dataclasses.replace(CLIENT_PARAMS, detached_lifetime=0.2)
    slow = ReconnectPolicy(base=2.0, cap=2.0, random=lambda: 1.0)  # 2 s between attempts
    async with daemon_and_proxy() as (server, proxy):
        session = await sessiond_client.connect(url_of(proxy), params=params, policy=slow)
        await session.send(b"x")
        assert await drain_echoes(session, 1, 5) == [b"x"]
        await server.close()  # nothing to reconnect to: the first retry fails at once
        with pytest.raises(SessionLost) as lost:
            await asyncio.wait_for(session.recv(), 5)
        assert lost.value.reason is CloseCode.SESSION_EXPIRED
        await asyncio.sleep(2.2)  # past the backoff: no attempt on the ended session
        assert session.state is State.CLOSED
        reconnect = session._reconnect
        assert reconnect is not None and reconnect.done() and reconnect.exception() is None
    assert errors == []


async def test_send_waits_for_window_then_everything_arrives_in_order() -> None:
    """send()'s fast path (the message fits the window) and its general path (the window
    is full: it waits) interleave without reordering; async iteration ends with the
    session; a send after close raises SessionLost."""
    release = asyncio.Event()
    got: list[bytes] = []

    async def app(session: sessiond.Session) -> None:
        await release.wait()  # reads nothing yet: the client's window fills
        async for payload in session:
            got.append(payload)
            await session.send(payload)

    config = sessiond.ServerConfig(params=Params(window_messages=8, window_bytes=4096))
    async with sessiond.serve(app, "127.0.0.1", 0, config=config) as server:
        host, port = server.addresses[0]
        session = await sessiond_client.connect(f"tcp://{host}:{port}")
        sent = [f"m{i}".encode() for i in range(200)]

        async def sender() -> None:
            for payload in sent:
                await session.send(payload)

        task = asyncio.create_task(sender())
        async with asyncio.timeout(5):
            while session.core.unacked_count < 8:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not task.done() and session.core.unacked_count == 8  # waiting: backpressure
        release.set()
        echoed: list[bytes] = []
        async with asyncio.timeout(20):
            async for payload in session:
                echoed.append(payload)
                if len(echoed) == len(sent):
                    break
            await task
        assert echoed == sent and got == sent
        await session.close()
        async for _ in session:
            raise AssertionError("a closed session yields nothing")
        with pytest.raises(SessionLost):
            await session.send(b"late")
