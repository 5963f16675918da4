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
