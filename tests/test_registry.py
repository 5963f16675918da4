"""The session registry, and that an expired session leaves nothing behind in memory."""

from __future__ import annotations

import asyncio
import gc

from sessiond_client.protocol import CloseCode, Params, Role
from sessiond_client.protocol import Session as CoreSession

import sessiond
import sessiond.apps
from sessiond.registry import MemoryRegistry
from sessiond.server import ServerConfig
from tests.coreclient import CoreClient


def alive(session_id: bytes) -> list[object]:
    """The server's objects for a session that the garbage collector can still reach."""
    gc.collect()
    return [
        obj
        for obj in gc.get_objects()
        if (isinstance(obj, CoreSession) and obj.role is Role.SERVER and obj.id == session_id)
        or (isinstance(obj, sessiond.Session) and obj.id == session_id.hex())
    ]


def test_memory_registry_operations() -> None:
    registry: MemoryRegistry[str] = MemoryRegistry(remember=2)
    registry.create(b"a", "session a")
    registry.attach(b"a")
    assert registry.find(b"a") == "session a" and len(registry) == 1
    registry.detach(b"a", 10.0)
    assert registry.detached == 1
    registry.attach(b"a")
    assert registry.detached == 0
    registry.expire(b"a", CloseCode.SESSION_EXPIRED)
    assert registry.find(b"a") is None and len(registry) == 0
    assert registry.missing_reason(b"a") is CloseCode.SESSION_EXPIRED
    assert registry.missing_reason(b"z") is CloseCode.UNKNOWN_SESSION
    for sid in (b"b", b"c", b"d"):
        registry.create(sid, "x")
        registry.expire(sid, CloseCode.NORMAL)
    assert registry.missing_reason(b"a") is CloseCode.UNKNOWN_SESSION  # only 2 remembered
    assert registry.missing_reason(b"d") is CloseCode.NORMAL


async def test_expired_session_is_freed() -> None:
    params = Params(detached_lifetime=0.2, heartbeat_min=0.05)
    config = ServerConfig(params=params)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        client = CoreClient(*server.addresses[0], params=Params(detached_lifetime=0.2))
        await client.open()
        client.send(b"held in the replay buffer")
        await client.pump_until(lambda: bool(client.received))
        sid = client.session.id
        assert sid is not None and len(alive(sid)) == 2
        await client.kill()
        deadline = asyncio.get_running_loop().time() + 5.0
        while len(server.sessions):
            assert asyncio.get_running_loop().time() < deadline, "session never expired"
            await asyncio.sleep(0.05)
        # The handler task ends on the loop's next iterations: wait for that, not a time.
        while alive(sid):
            assert asyncio.get_running_loop().time() < deadline, (
                f"something still holds the expired session: {alive(sid)}"
            )
            await asyncio.sleep(0.02)
        assert server.sessions.missing_reason(sid) is CloseCode.SESSION_EXPIRED
