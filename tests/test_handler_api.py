"""The handler's batch API: ``send_many`` waits for window like ``send`` and keeps order;
``recv_many`` hands over everything waiting; both end with SessionLost."""

from __future__ import annotations

import asyncio

import sessiond_client
from sessiond_client import Params, SessionLost
from sessiond_client.protocol import PayloadTooLarge

import sessiond


async def test_send_many_respects_the_window_and_recv_many_takes_all() -> None:
    batches: list[int] = []
    ended: list[str] = []

    async def app(session: sessiond.Session) -> None:
        await session.send_many([f"m{i}".encode() for i in range(3000)])  # > the window
        try:
            while True:
                batch = await session.recv_many()
                batches.append(len(batch))
                await session.send_many(batch)
        except SessionLost:
            ended.append("lost")

    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        host, port = server.addresses[0]
        params = Params(window_messages=64, window_bytes=4096)
        session = await sessiond_client.connect(f"tcp://{host}:{port}", params=params)
        async with asyncio.timeout(20):
            got = [await session.recv() for _ in range(3000)]
        assert got == [f"m{i}".encode() for i in range(3000)]
        for i in range(200):
            await session.send(f"e{i}".encode())
        async with asyncio.timeout(20):
            echoed = [await session.recv() for _ in range(200)]
        assert echoed == [f"e{i}".encode() for i in range(200)]
        assert sum(batches) == 200
        await session.close()
        async with asyncio.timeout(5):
            while not ended:
                await asyncio.sleep(0.01)


async def test_send_many_refuses_a_payload_larger_than_the_peer_takes() -> None:
    outcome: list[object] = []

    async def app(session: sessiond.Session) -> None:
        try:
            await session.send_many([b"fits", b"x" * 10_000])
        except PayloadTooLarge as exc:
            outcome.append(exc)

    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        host, port = server.addresses[0]
        session = await sessiond_client.connect(
            f"tcp://{host}:{port}", params=Params(max_frame_size=1024)
        )
        assert await asyncio.wait_for(session.recv(), 5) == b"fits"
        async with asyncio.timeout(5):
            while not outcome:
                await asyncio.sleep(0.01)
        assert isinstance(outcome[0], PayloadTooLarge)
        await session.close()


async def test_an_ended_session_returns_what_was_taken_and_drops_what_was_not() -> None:
    """The handler took three messages (acknowledged) and returned one; a fourth waits
    in the inbox, never acknowledged, when the client closes. After the end the handler
    still gets the two it took, then SessionLost: the fourth went with the session's
    buffers, and the client lists it as undelivered (not both)."""
    got: list[bytes] = []
    ended: list[str] = []
    took = asyncio.Event()
    held: list[int] = []

    async def app(session: sessiond.Session) -> None:
        while session.core.messages_waiting < 3:
            await asyncio.sleep(0.01)
        got.append(await session.recv())  # takes all three: two wait in its local buffer
        took.set()
        while not session.ended:
            await asyncio.sleep(0.01)
        held.append(session.core.held_bytes)  # released: the fourth is gone
        try:
            while True:
                got.append(await session.recv())
        except SessionLost:
            ended.append("lost")

    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        host, port = server.addresses[0]
        session = await sessiond_client.connect(f"tcp://{host}:{port}")
        for i in range(3):
            await session.send(b"m%d" % i)
        async with asyncio.timeout(5):
            await took.wait()
        await session.send(b"m3")
        try:
            await session.close(timeout=0.5)
        except SessionLost as lost:
            undelivered = lost.undelivered
        else:
            raise AssertionError("m3 was acknowledged")
        async with asyncio.timeout(5):
            while not ended:
                await asyncio.sleep(0.01)
    assert held == [0]
    assert got == [b"m0", b"m1", b"m2"]
    assert list(undelivered) == [b"m3"]


async def test_take_ready_and_wait_ready_are_recv_many_without_its_coroutine() -> None:
    """``wait_ready()`` is pending while nothing waits, done once input came (taken with
    ``take_ready()``), done at once while messages wait (in the core, or in the local
    buffer ``recv()`` left), and raises SessionLost once the session ended. While messages
    wait, the done waiter is reused (no Future per call)."""
    pending: list[bool] = []
    done_at_once: list[bool] = []
    ended: list[str] = []

    async def app(session: sessiond.Session) -> None:
        waiter = session.wait_ready()
        pending.append(waiter.done())
        got: list[bytes] = []
        while len(got) < 2:
            await waiter
            got += session.take_ready()
            waiter = session.wait_ready()
        await session.send_many(got)
        while session.core.messages_waiting < 2:
            await asyncio.sleep(0.01)
        done_at_once.append(session.wait_ready().done())  # in the core
        done_at_once.append(session.wait_ready() is session.wait_ready())
        first = await session.recv()  # takes both: the second waits in its local buffer
        done_at_once.append(session.wait_ready().done())
        await session.send_many([first, *session.take_ready()])
        try:
            while True:
                await session.wait_ready()
                assert session.take_ready() == []
        except SessionLost:
            try:
                session.wait_ready()  # ended, nothing waiting: raises too
            except SessionLost:
                ended.append("lost")

    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        host, port = server.addresses[0]
        session = await sessiond_client.connect(f"tcp://{host}:{port}")
        await session.send_many([b"a", b"b"])
        async with asyncio.timeout(5):
            assert [await session.recv(), await session.recv()] == [b"a", b"b"]
        await session.send_many([b"c", b"d"])
        async with asyncio.timeout(5):
            assert [await session.recv(), await session.recv()] == [b"c", b"d"]
        await session.close()
        async with asyncio.timeout(5):
            while not ended:
                await asyncio.sleep(0.01)
    assert pending == [False]
    assert done_at_once == [True, True, True]
