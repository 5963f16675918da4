"""A move: a RESUME at one process of a session a live process holds (README "The
session store"). Three round trips to Redis and two pub/sub hops: the resume script
(credential check and release request), the owner's release in its next pipelined
commit, the claim that reads the session back (sessiond/store/redisstore.py).
Counted two ways: each store's :attr:`~RedisStore.round_trips`, and Redis's own
``INFO commandstats``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sessiond_client.protocol import CloseCode, SessionResumed
from sessiond_client.protocol import Session as CoreSession
from sessiond_client.protocol.credentials import digest, new_session_id

import sessiond
from sessiond.apps import echo
from sessiond.durable import credential_state, plan_rotation
from sessiond.server import Server
from sessiond.store import Claimable, Gone, Positions, keys
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .faultproxy import FaultProxy
from .pair import Pair
from .redisserver import RedisServer
from .test_store_redis import meta

MakeStore = Callable[..., Awaitable[RedisStore]]
CREDENTIAL = b"c" * 32  # meta()'s current credential
RETIRED = b"r" * 32  # meta()'s retired one


async def command_calls(store: RedisStore) -> dict[str, int]:
    """Calls per command since Redis started (``INFO commandstats``), scripts' included."""
    info = await store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0) and name != "info"
    }


def requests_of(store: RedisStore) -> list[bytes]:
    asked: list[bytes] = []
    store.on_release_request = asked.append
    return asked


async def test_a_credential_the_session_never_had_asks_nobody_to_release(
    stores: MakeStore,
) -> None:
    owner, asker = await stores(), await stores()
    sid = new_session_id()
    await owner.create(meta(sid))
    asked = requests_of(owner)
    before = await command_calls(asker)
    assert await asker.resume(sid, digest(b"x" * 32)) is None
    assert await asker.resume(sid, b"") is None  # not even a digest
    calls = delta(await command_calls(asker), before)
    assert "publish" not in calls  # nobody was asked, in Redis's own count
    assert calls.get("eval") == 2
    loaded = await asker.load(sid)
    assert (loaded.epoch, loaded.owner) == (1, owner.node)  # nothing moved
    # The current credential and a retired one (theft: the core's to judge after the
    # claim) do ask; the owner hears each request.
    found = await asker.resume(sid, digest(CREDENTIAL))
    assert found is not None and found.listeners == 1 and found.owner == owner.node
    assert found.epoch == 1 and found.identity == "alice" and found.confirmed
    assert found.retired == (digest(RETIRED),) and found.lifetime == meta(sid).terms.lifetime
    await wait_until(lambda: asked == [sid])
    assert not await asker.released(sid, found, timeout=0.05)  # it never answers here
    theft = await asker.resume(sid, digest(RETIRED))
    assert theft is not None and theft.listeners == 1
    await wait_until(lambda: asked == [sid, sid])


async def test_the_resume_script_answers_unknown_and_ended_sessions(stores: MakeStore) -> None:
    store = await stores()
    with pytest.raises(Gone) as unknown:
        await store.resume(new_session_id(), digest(CREDENTIAL))
    assert unknown.value.code is CloseCode.UNKNOWN_SESSION
    sid = new_session_id()
    await store.create(meta(sid))
    await store.end(sid, 1, CloseCode.SESSION_EXPIRED)
    with pytest.raises(Gone) as ended:
        await store.resume(sid, digest(CREDENTIAL))
    assert ended.value.code is CloseCode.SESSION_EXPIRED
    # Its own session (a process that dropped it): claimable without asking anyone.
    other = new_session_id()
    await store.create(meta(other))
    found = await store.resume(other, digest(CREDENTIAL))
    assert found is not None and found.listeners == -1
    assert await store.released(other, found, timeout=0.05)


@pytest.mark.parametrize("wire", ["hiredis", "redis-py"])
async def test_a_move_is_three_round_trips_and_the_old_owners_late_writes_fail(
    stores: MakeStore, wire: str
) -> None:
    owner, asker = await stores(), await stores()
    if wire == "redis-py":  # what a rediss:// URL uses: the same scripts, through redis-py
        owner._wire = owner._claims = asker._wire = asker._claims = None
    sid = new_session_id()
    await owner.create(meta(sid))
    owner.append(sid, 1, 1, [b"a", b"b"], consumed=3, acked=0)
    await owner.commit()
    fenced: list[bytes] = []
    owner.on_fenced = fenced.append
    released = asyncio.Event()

    def release(requested: bytes) -> None:
        # What Durability does: the last output, then the release, queued for the next
        # commit; one pipelined round trip carries both, and answers the asker.
        owner.append(requested, 1, 3, [b"c"], consumed=4, acked=1)
        moved = dataclasses.replace(meta(requested), data={"moved": True})
        owner.release_later(requested, 1, moved, Positions(5, 1, 4, (b"b", b"c", b"d")), 60.0)
        asyncio.get_running_loop().create_task(owner.commit()).add_done_callback(
            lambda _: released.set()
        )

    owner.on_release_request = release
    if wire == "redis-py":  # a first use by SHA fails, loads the script and retries
        for source in (keys.RESUME, keys.CLAIM_LOAD):
            await asker.client.script_load(source)
    trips = owner.round_trips + asker.round_trips
    before = await command_calls(asker)
    found = await asker.resume(sid, digest(CREDENTIAL))
    assert found is not None
    rotation = plan_rotation(found, CREDENTIAL, "alice")
    assert rotation is not None
    assert await asker.released(sid, found, timeout=10.0)
    epoch, loaded = await asker.claim_loaded(sid, found.epoch, 60.0, rotation)
    await released.wait()
    assert owner.round_trips + asker.round_trips - trips == 3
    calls = delta(await command_calls(asker), before)
    calls.pop("set", None)  # a lease renewal meanwhile
    if wire == "redis-py":  # the claimer's scripts by SHA (loaded before, as a move would)
        calls["eval"] += calls.pop("evalsha")
    # Redis counts the commands scripts run too: this is all a move costs it. Sent by
    # the clients: three scripts (resume; release, pipelined after the owner's last
    # XADD; claim) and that XADD. No stream read: the release stored the positions.
    assert calls == {
        "eval": 3,
        "xadd": 2,  # the owner's last entry, the claim's marker
        "hmget": 1,
        "publish": 2,  # the request, the answer
        "hget": 4,
        "hexists": 2,
        "hset": 3,
        "pexpire": 4,
        "hgetall": 1,
    }, calls
    assert epoch == loaded.epoch == 2 and loaded.owner == asker.node
    assert loaded.meta.data == {"moved": True}
    assert loaded.positions == Positions(5, 1, 4, (b"b", b"c", b"d"))  # the release's
    # The rotation decided before the claim is what the claim stored.
    assert loaded.meta.credential_digest == rotation.credential_digest
    assert loaded.meta.previous_digest == digest(CREDENTIAL) and not loaded.meta.confirmed
    assert loaded.meta.retired == (digest(RETIRED), digest(CREDENTIAL))
    assert await asker.client.pttl(keys.meta_key("t:", sid)) > 0  # an attached TTL
    # The fenced old owner: its late append fails (Redis refuses the entry ID) and is
    # reported; its late metadata writes and release change nothing.
    owner.append(sid, 1, 4, [b"late"], consumed=9, acked=1)
    owner.save_later(sid, 1, dataclasses.replace(meta(sid), data={"late": True}), 60.0)
    owner.release_later(sid, 1, meta(sid), Positions(9, 1, 9, ()), 60.0)
    await owner.commit()
    assert fenced == [sid]
    again = await asker.load(sid)
    assert again.epoch == 2 and again.owner == asker.node
    assert again.meta.data == {"moved": True} and again.positions.consumed == 4
    assert b"late" not in again.positions.unacked


async def test_a_rotation_decided_from_a_credential_that_changed_is_not_written(
    stores: MakeStore,
) -> None:
    """The owner rotated (or the client confirmed) between the resume script and the
    claim: the claim writes no rotation, and the claimer's core rotates from what it
    reads (and stores that before its WELCOME, as for a resume in one process)."""
    owner, asker = await stores(), await stores()
    sid = new_session_id()
    unconfirmed = dataclasses.replace(meta(sid), previous_digest=digest(b"p" * 32), confirmed=False)
    await owner.create(unconfirmed)
    found = await asker.resume(sid, digest(b"p" * 32))  # the previous, unconfirmed
    assert found is not None
    rotation = plan_rotation(found, b"p" * 32, "alice")
    assert rotation is not None and rotation.from_previous
    await owner.save(sid, 1, dataclasses.replace(unconfirmed, confirmed=True))  # confirmed
    _, loaded = await asker.claim_loaded(sid, found.epoch, 60.0, rotation)
    assert loaded.meta.credential_digest == digest(CREDENTIAL) and loaded.meta.confirmed
    # From the current credential, the confirmation does not matter: written.
    sid = new_session_id()
    await owner.create(dataclasses.replace(unconfirmed, session_id=sid))
    found = await asker.resume(sid, digest(CREDENTIAL))
    assert found is not None
    rotation = plan_rotation(found, CREDENTIAL, "alice")
    assert rotation is not None and not rotation.from_previous
    await owner.save(sid, 1, dataclasses.replace(meta(sid), confirmed=True))
    _, loaded = await asker.claim_loaded(sid, found.epoch, 60.0, rotation)
    assert loaded.meta.credential_digest == rotation.credential_digest
    assert plan_rotation(found, CREDENTIAL, "mallory") is None  # another identity: none


def claimable(snapshot: Any) -> Claimable:
    return Claimable(
        epoch=1,
        owner="",
        listeners=-1,
        identity=snapshot.identity,
        credential_digest=snapshot.credential_digest,
        previous_digest=snapshot.previous_digest,
        retired=snapshot.retired,
        confirmed=snapshot.confirmed,
        rotation_salt=snapshot.rotation_salt,
        lifetime=snapshot.lifetime,
    )


def test_the_planned_rotation_is_the_state_the_core_keeps() -> None:
    """plan_rotation follows the core's rule (protocol.md §10.4): the core restored from
    the planned state resumes without changing it and issues the planned credential; a
    core restored from the state before rotates the same way (its own salt aside)."""
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.cut()
    sid = pair.client.id
    client = pair.client.snapshot()
    assert sid is not None and client is not None
    before = pair.server.server_snapshot()
    planned = plan_rotation(claimable(before), client.credential, before.identity)
    assert planned is not None and not planned.from_previous
    rotated = dataclasses.replace(
        before,
        credential_digest=planned.credential_digest,
        previous_digest=planned.previous_digest,
        retired=planned.retired,
        confirmed=False,
        rotation_salt=planned.rotation_salt,
    )
    pair.registry.sessions[sid] = restored = CoreSession.restore_server(
        rotated, pair.registry.params
    )
    pair.connect()
    pair.pump()
    assert any(isinstance(e, SessionResumed) for e in pair.client_events)
    # Unchanged, the confirmation aside (the client confirms it once it has it).
    assert credential_state(restored.server_snapshot())[:3] == credential_state(rotated)[:3]
    issued = pair.client.snapshot()
    assert issued is not None and digest(issued.credential) == planned.credential_digest
    # The core's own rotation from the state before: the same shape.
    pair.cut()
    pair.registry.sessions[sid] = own = CoreSession.restore_server(before, pair.registry.params)
    pair.client = CoreSession.restore(client)
    pair.connect()
    pair.pump()
    mine = own.server_snapshot()
    assert (mine.previous_digest, mine.retired) == (planned.previous_digest, planned.retired)


def test_a_lost_welcome_plans_no_rotation_and_the_core_keeps_the_stored_one() -> None:
    """protocol.md §10.3: the previous credential presented while the current one is
    unconfirmed gets the current one again; nothing new to store with the claim."""
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.cut()
    pair.connect()
    pair.cut(to_server=1 << 20, to_client=0)  # HELLO arrives, WELCOME is lost
    sid = pair.client.id
    client = pair.client.snapshot()
    assert sid is not None and client is not None
    before = pair.server.server_snapshot()
    assert not before.confirmed and before.rotation_salt is not None
    assert plan_rotation(claimable(before), client.credential, before.identity) is None
    pair.registry.sessions[sid] = restored = CoreSession.restore_server(
        before, pair.registry.params
    )
    pair.connect()
    pair.pump()
    assert any(isinstance(e, SessionResumed) for e in pair.client_events)
    # The same credential again (the client confirms it once it has it).
    assert credential_state(restored.server_snapshot())[:3] == credential_state(before)[:3]
    issued = pair.client.snapshot()
    assert issued is not None and digest(issued.credential) == before.credential_digest


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def servers(redis_server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[Server]]]:
    stack: list[Any] = []

    async def make() -> Server:
        store = RedisStore(redis_server.url, "t:")
        await store.start()
        context = sessiond.serve(echo, "127.0.0.1", 0, store=store)
        stack.append(context)
        return await context.__aenter__()

    yield make
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def test_a_live_owner_move_between_servers_is_three_round_trips(
    servers: Callable[[], Awaitable[Server]],
) -> None:
    a, b = await servers(), await servers()
    assert a.durable is not None and b.durable is not None
    stores = (a.durable.store, b.durable.store)
    async with FaultProxy("127.0.0.1", a.addresses[0][1]) as proxy:
        client = CoreClient(*proxy.address)
        assert await client.connect()
        for n in range(10):
            client.send(b"m%d" % n)
        await client.run_until(lambda: len(client.received) >= 10, 20.0)
        await a.durable.settle()
        sid = client.session.id
        assert sid is not None
        old = a.sessions.find(sid)
        assert old is not None and old.protocol is not None and old.protocol.conn is not None
        conn = old.protocol.conn
        proxy.blackhole()  # A still holds it attached when the client comes to B
        await client.kill()
        trips = sum(store.round_trips for store in stores)
        before = await command_calls(stores[1])
        client.host, client.port = "127.0.0.1", b.addresses[0][1]
        assert await client.connect(10.0)
        assert sum(store.round_trips for store in stores) - trips == 3
        calls = delta(await command_calls(stores[1]), before)
        assert calls["eval"] == 3 and calls["publish"] == 2, calls
        assert conn.close_code is CloseCode.TAKEN_OVER
        assert a.sessions.find(sid) is None
        client.send(b"after")
        await client.run_until(lambda: len(client.received) >= 11, 20.0)
        assert client.received == [b"m%d" % n for n in range(10)] + [b"after"]
        await client.close()
