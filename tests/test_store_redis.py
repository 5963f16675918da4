"""The Redis session store against a real redis-server (tests/redisserver.py).

Fencing by stream entry IDs, one winner among simultaneous claims, node leases,
TTL expiry of detached sessions, ended IDs, release requests over pub/sub, and
what survives a ``kill -9`` of Redis with and without an append-only file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from sessiond_client.protocol import CloseCode
from sessiond_client.protocol.credentials import digest, new_session_id

from bench.processes import free_port
from sessiond.store import Fenced, Gone, Positions, SessionMeta, StoreUnavailable, Terms, keys
from sessiond.store.redisstore import RedisStore

from .redisserver import RedisServer, proxied

MakeStore = Callable[..., Awaitable[RedisStore]]
TERMS = Terms(15.0, 45.0, 120.0, 1024, 1 << 20, (1 << 20) - 16)


def meta(sid: bytes, identity: object = "alice") -> SessionMeta:
    return SessionMeta(
        session_id=sid,
        identity=identity,
        credential_digest=digest(b"c" * 32),
        previous_digest=None,
        retired=(digest(b"r" * 32),),
        confirmed=True,
        terms=TERMS,
        data={"score": 3, "name": "x"},
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_create_append_load_round_trip(stores: MakeStore) -> None:
    store = await stores()
    sid = new_session_id()
    assert await store.create(meta(sid)) == 1
    store.append(sid, 1, 1, [b"a", b"b"], consumed=0, acked=0)
    store.append(sid, 1, 3, [b"c"], consumed=2, acked=1)
    store.append(sid, 1, 4, [], consumed=5, acked=1)
    assert store.pending
    await store.commit()
    assert not store.pending
    loaded = await (await stores()).load(sid)
    assert loaded.epoch == 1
    assert loaded.owner == store.node
    assert loaded.meta == meta(sid)
    assert loaded.positions == Positions(next_seq=4, acked=1, consumed=5, unacked=(b"b", b"c"))


async def test_unix_socket_url(stores: MakeStore, redis_server: RedisServer) -> None:
    store = await stores(redis_server.unix_url)
    sid = new_session_id()
    await store.create(meta(sid))
    store.append(sid, 1, 1, [b"x"], consumed=0, acked=0)
    await store.commit()
    assert (await store.load(sid)).positions.unacked == (b"x",)


async def test_acknowledged_entries_are_trimmed_but_positions_kept(
    stores: MakeStore,
) -> None:
    store = await stores()
    sid = new_session_id()
    await store.create(meta(sid))
    for seq in range(1, 41):
        store.append(sid, 1, seq, [b"%d" % seq], consumed=seq, acked=seq - 1)
        await store.commit()
    length = await store.client.xlen(f"t:{{{sid.hex()}}}:o")
    assert length < 20  # trimmed in batches, the newest entries kept
    loaded = await store.load(sid)
    assert loaded.positions == Positions(41, 39, 40, (b"40",))


async def test_late_write_from_old_epoch_is_rejected(stores: MakeStore) -> None:
    owner, thief = await stores(), await stores()
    fenced: list[bytes] = []
    owner.on_fenced = fenced.append
    sid = new_session_id()
    await owner.create(meta(sid))
    owner.append(sid, 1, 1, [b"before"], consumed=0, acked=0)
    await owner.commit()
    assert await thief.claim(sid, 1) == 2
    owner.append(sid, 1, 2, [b"late"], consumed=7, acked=0)
    await owner.commit()
    assert fenced == [sid]
    loaded = await thief.load(sid)
    assert loaded.epoch == 2
    assert loaded.owner == thief.node
    assert loaded.positions == Positions(2, 0, 0, (b"before",))  # nothing of the late write
    with pytest.raises(Fenced):
        await owner.save(sid, 1, meta(sid))  # metadata writes are fenced too
    thief.append(sid, 2, 2, [b"new owner"], consumed=1, acked=1)
    await thief.commit()
    assert (await thief.load(sid)).positions == Positions(3, 1, 1, (b"new owner",))


async def test_one_winner_among_a_thousand_simultaneous_claims(
    stores: MakeStore,
) -> None:
    creator = await stores()
    claimers = [await stores() for _ in range(4)]
    sid = new_session_id()
    await creator.create(meta(sid))

    async def claim(store: RedisStore) -> int | None:
        try:
            return await store.claim(sid, 1)
        except Fenced:
            return None

    results = await asyncio.gather(*(claim(claimers[i % 4]) for i in range(1000)))
    winners = [result for result in results if result is not None]
    assert winners == [2]
    assert (await creator.load(sid)).epoch == 2


async def test_lease_expires_when_its_node_cannot_reach_redis(
    stores: MakeStore, redis_server: RedisServer
) -> None:
    observer = await stores()
    async with proxied(redis_server) as proxy:
        host, port = proxy.address
        lost: list[bool] = []
        node = await stores(f"redis://{host}:{port}/0", lease_ttl=1.0, renew_every=0.2, timeout=0.3)
        node.on_lease_lost = lambda: lost.append(True)
        assert await observer.owner_alive(node.node)
        proxy.blackhole(later=True)
        await wait_for(lambda: bool(lost))  # the node gives up before its lease runs out
        assert node.lease_lost
        await wait_for_async(lambda: observer.owner_alive(node.node), False)
        sid = new_session_id()
        await observer.create(meta(sid))
        node.append(sid, 1, 1, [b"x"], consumed=0, acked=0)
        with pytest.raises(StoreUnavailable):
            await node.commit()


async def test_a_store_whose_redis_is_unreachable_closes_in_bounded_time_and_ends_its_tasks(
    stores: MakeStore, redis_server: RedisServer
) -> None:
    """An operator stopping a daemon whose Redis stopped answering: close() cancels the
    lease renewer and the release listener (again, should a cancel be lost:
    sessiond/tasks.py), gives up the lease's DELETE after the store's timeout, and
    returns, with no task of the store left running. The bound (10 s against a 0.3 s
    timeout) only catches a hang."""
    async with proxied(redis_server) as proxy:
        host, port = proxy.address
        store = await stores(f"redis://{host}:{port}/0", renew_every=0.1, timeout=0.3)
        tasks = list(store._tasks)
        assert tasks and not any(task.done() for task in tasks)
        proxy.blackhole(later=True)
        await asyncio.sleep(0.3)  # a renewal is in flight, waiting on the dead connection
        await asyncio.wait_for(store.close(), 10.0)
        assert all(task.done() for task in tasks)


async def wait_for_async(
    probe: Callable[[], Awaitable[object]], expected: object, timeout: float = 10.0
) -> None:
    async with asyncio.timeout(timeout):
        while await probe() != expected:
            await asyncio.sleep(0.05)


async def test_delayed_redis_adds_latency_only(
    stores: MakeStore, redis_server: RedisServer
) -> None:
    async with proxied(redis_server) as proxy:
        host, port = proxy.address
        store = await stores(f"redis://{host}:{port}/0")
        proxy.delay(0.05)
        sid = new_session_id()
        await store.create(meta(sid))
        for seq in range(1, 6):
            store.append(sid, 1, seq, [b"m%d" % seq], consumed=seq, acked=0)
            await store.commit()
        loaded = await store.load(sid)
        assert loaded.positions.unacked == tuple(b"m%d" % seq for seq in range(1, 6))


async def test_detached_session_expires_by_ttl(stores: MakeStore) -> None:
    store = await stores()
    sid = new_session_id()
    await store.create(meta(sid))
    await store.save(sid, 1, ttl=0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(Gone) as caught:
        await store.load(sid)
    assert caught.value.code is CloseCode.UNKNOWN_SESSION
    store.append(sid, 1, 1, [b"x"], consumed=0, acked=0)
    fenced: list[bytes] = []
    store.on_fenced = fenced.append
    await store.commit()  # NOMKSTREAM: an expired session's stream is not re-created
    assert fenced == [sid]
    assert not await store.client.exists(f"t:{{{sid.hex()}}}:o")


async def test_attaching_again_clears_the_ttl(stores: MakeStore) -> None:
    store = await stores()
    sid = new_session_id()
    await store.create(meta(sid))
    await store.save(sid, 1, ttl=0.3)
    await store.save(sid, 1, ttl=0)
    await asyncio.sleep(0.5)
    assert (await store.load(sid)).epoch == 1


async def test_ended_session_is_answered_with_its_reason(
    stores: MakeStore,
) -> None:
    store = await stores()
    sid = new_session_id()
    await store.create(meta(sid))
    await store.end(sid, 1, CloseCode.SESSION_EXPIRED)
    with pytest.raises(Gone) as caught:
        await store.load(sid)
    assert caught.value.code is CloseCode.SESSION_EXPIRED
    with pytest.raises(Gone):
        await (await stores()).claim(sid, 1)
    fenced: list[bytes] = []
    store.on_fenced = fenced.append
    store.append(sid, 1, 1, [b"x"], consumed=0, acked=0)
    await store.commit()
    assert fenced == [sid]


async def test_live_owner_releases_on_request(stores: MakeStore) -> None:
    owner, asker = await stores(), await stores()
    sid = new_session_id()
    await owner.create(meta(sid))
    requests: list[bytes] = []

    def release(requested: bytes) -> None:
        requests.append(requested)
        meta_now = meta(requested)
        meta_now.data["moved"] = True
        positions = Positions(1, 0, 4, ())
        asyncio.get_running_loop().create_task(
            owner.save(requested, 1, meta_now, positions, ttl=60.0, release=True)
        )

    owner.on_release_request = release
    assert await asker.owner_alive(owner.node)
    assert await asker.ask_release(owner.node, sid, timeout=5.0)
    assert requests == [sid]
    loaded = await asker.load(sid)
    assert loaded.owner == ""
    assert loaded.meta.data["moved"] is True
    assert loaded.positions.consumed == 4
    assert await asker.claim(sid, loaded.epoch) == 2


async def test_a_release_answers_in_its_own_round_trip_and_the_claim_reads_it(
    stores: MakeStore,
) -> None:
    """release_from + claim_loaded (the move path): the owner's release script answers
    the asker; the claim and the read of what it stored are one transaction. A
    fenced release answers nobody (the asker must not take a session someone holds)."""
    owner, asker = await stores(), await stores()
    sid, other = new_session_id(), new_session_id()
    await owner.create(meta(sid))
    await owner.create(meta(other))
    assert await asker.claim(other, 1) == 2  # *other* is no longer the owner's

    def release(requested: bytes) -> None:
        meta_now = meta(requested)
        meta_now.data["moved"] = True
        asyncio.get_running_loop().create_task(save(requested, meta_now))

    async def save(requested: bytes, meta_now: SessionMeta) -> None:
        with contextlib.suppress(Fenced):  # *other*: fenced out
            await owner.save(requested, 1, meta_now, Positions(1, 0, 4, ()), ttl=60.0, release=True)

    owner.on_release_request = release
    assert await asker.release_from(owner.node, sid, timeout=5.0)
    epoch, loaded = await asker.claim_loaded(sid, 1)
    assert epoch == loaded.epoch == 2
    assert loaded.owner == asker.node and loaded.meta.data["moved"] is True
    assert loaded.positions.consumed == 4
    with pytest.raises(Fenced):
        await asker.claim_loaded(sid, 1)  # the epoch moved on
    assert not await asker.release_from(owner.node, other, timeout=0.3)  # fenced: no answer
    assert await asker.release_from("no-lease", sid, timeout=600.0)  # no lease: at once


def cancel_after_answer(
    store: RedisStore, sid: bytes, task: asyncio.Task[bool], offset: int
) -> list[bool]:
    """Cancel *task* *offset* loop iterations after the one in which *store*'s listener
    heard that *sid* was released (a callback run every iteration watches the waiter
    the answer completes: nothing public marks that instant); the list returned says,
    once the callback has stopped, whether it cancelled the task while it still ran."""
    loop = asyncio.get_running_loop()
    cancelled: list[bool] = []
    answered: list[asyncio.Future[None]] = []
    left = offset

    def look() -> None:
        nonlocal left
        if task.done():
            cancelled.append(False)
            return
        waiter = store._released.get(sid)
        if waiter is not None and not answered:
            answered.append(waiter)
        if answered and answered[0].done():
            if left == 0:
                cancelled.append(task.cancel())
                return
            left -= 1
        loop.call_soon(look)

    loop.call_soon(look)
    return cancelled


@pytest.mark.parametrize("wait", ["released", "release_from"])
async def test_a_wait_for_a_release_cancelled_as_the_answer_arrives_raises_cancelled(
    stores: MakeStore, wait: str
) -> None:
    """A resume's task cancelled (the server's close() cancels its tasks) in the loop
    iteration the owner's answer arrives, or any of the seven after, raises
    CancelledError: on Python 3.11 asyncio.wait_for returned instead when its future
    was done by then (python/cpython#86296, sessiond/tasks.py), and the resume went on
    to claim the session for a server that had closed."""
    owner, asker = await stores(), await stores()

    def release(requested: bytes) -> None:
        positions = Positions(1, 0, 0, ())
        asyncio.get_running_loop().create_task(
            owner.save(requested, 1, meta(requested), positions, ttl=60.0, release=True)
        )

    owner.on_release_request = release
    hit: list[int] = []  # offsets at which the cancel came while the wait ran
    lost: list[int] = []  # and the wait returned all the same
    for offset in range(8):
        sid = new_session_id()
        await owner.create(meta(sid))
        if wait == "released":
            found = await asker.resume(sid, digest(b"c" * 32))
            assert found is not None and found.listeners == 1
            task = asyncio.create_task(asker.released(sid, found, 10.0))
        else:
            task = asyncio.create_task(asker.release_from(owner.node, sid, 10.0))
        cancelled = cancel_after_answer(asker, sid, task, offset)
        async with asyncio.timeout(10.0):
            await asyncio.wait([task])
        assert cancelled, offset
        if cancelled[0]:
            hit.append(offset)
            if not task.cancelled():
                lost.append(offset)
        else:
            assert task.result() is True, offset
        assert sid not in asker._released, offset  # the waiter is dropped either way
    assert hit and lost == [], (hit, lost)


async def test_an_owner_that_let_a_session_go_answers_while_redis_still_names_it(
    stores: MakeStore,
) -> None:
    """disown_later (a process asked to release a session it no longer holds): with its
    next commit it answers the asker while Redis names it, or nobody, the owner, and the
    claim reads the stream as after a crash (the owner field is left as it was: positions
    stored by an earlier release are not taken for the last word). No answer once another
    node owns the session, nor once it ended."""
    owner, asker = await stores(), await stores()
    mine, taken, ended = new_session_id(), new_session_id(), new_session_id()
    await owner.create(meta(mine), Positions(1, 0, 0, ()))  # positions of an old release
    await owner.create(meta(taken))
    await owner.create(meta(ended))
    owner.append(mine, 1, 1, [b"a", b"b"], consumed=3, acked=0)
    await owner.commit()
    assert await asker.claim(taken, 1) == 2
    await owner.end(ended, 1, CloseCode.SESSION_EXPIRED)

    def disown(requested: bytes) -> None:
        assert owner.disown_later(requested)
        asyncio.get_running_loop().create_task(owner.commit())

    owner.on_release_request = disown
    assert await asker.release_from(owner.node, mine, timeout=5.0)
    epoch, loaded = await asker.claim_loaded(mine, 1)
    assert epoch == 2 and loaded.owner == asker.node
    assert loaded.positions.unacked == (b"a", b"b") and loaded.positions.consumed == 3
    assert not await asker.release_from(owner.node, taken, timeout=0.3)
    assert not await asker.release_from(owner.node, ended, timeout=0.3)
    assert not owner.disown_later(mine)  # nobody asked: nothing queued
    assert not owner.pending


async def test_an_idle_release_channel_hears_its_pings_and_stays_connected(
    stores: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The release channel is pinged every renewal period and reconnected only when it
    heard nothing for a lease TTL: an idle, healthy one is never reconnected."""
    owner, asker = await stores(lease_ttl=0.5, renew_every=0.1), await stores()
    subscribed = owner._pubsub.connection
    await asyncio.sleep(1.5)  # three lease TTLs without a message
    assert owner._pubsub.connection is subscribed
    assert not [r for r in caplog.records if "release channel" in r.getMessage()]
    requests: list[bytes] = []
    owner.on_release_request = requests.append
    sid = new_session_id()
    assert not await asker.ask_release(owner.node, sid, timeout=0.3)  # nobody answers
    assert requests == [sid]  # but the request was heard


async def test_ask_release_of_a_silent_owner_times_out(
    stores: MakeStore,
) -> None:
    asker = await stores()
    assert not await asker.ask_release("nobody", new_session_id(), timeout=0.2)


async def test_a_killed_owner_is_not_waited_for_beyond_its_lease(
    stores: MakeStore,
) -> None:
    """A process killed with its lease still valid has nobody listening for release
    requests: the ask fails at once (not after its timeout), and the claimer waits for
    the lease's end instead."""
    asker = await stores()
    ghost = "ghost-node"  # what a kill -9 leaves: a lease, and nobody subscribed
    await asker.client.set(keys.lease_key(asker.prefix, ghost), ghost, px=600)
    assert await asker.owner_alive(ghost)
    asked = asyncio.get_running_loop().create_task(
        asker.ask_release(ghost, new_session_id(), timeout=600.0)
    )
    assert not await asyncio.wait_for(asked, 60.0)  # answered well before its timeout
    assert await asker.lease_gone(ghost, timeout=60.0)
    assert not await asker.owner_alive(ghost)
    killed = "killed-node"  # the move path: release_from waits for the lease, then says yes
    await asker.client.set(keys.lease_key(asker.prefix, killed), killed, px=600)
    assert await asker.release_from(killed, new_session_id(), timeout=600.0)
    assert not await asker.owner_alive(killed)
    await asker.client.set(keys.lease_key(asker.prefix, "forever"), "forever")
    assert not await asker.lease_gone("forever", timeout=0.2)  # no expiry: never gone


async def test_close_disconnects_every_connection(redis_server: RedisServer) -> None:
    # The pool's connections too: a store built on a pool it made itself closes it, or a
    # connection stays open until the garbage collector finds it (and reports it to
    # whichever event loop runs then: in CI, another test's).
    store = RedisStore(redis_server.url, "t:")
    await store.start()
    sid = new_session_id()
    await store.create(meta(sid))
    store.append(sid, 1, 1, [b"x"], consumed=0, acked=0)
    await store.commit()
    await store.load(sid)
    assert await store.claim(sid, 1) == 2
    assert await store.client.exists(keys.lease_key(store.prefix, store.node))
    assert redis_server.clients() > 0
    await store.close()
    await wait_for(lambda: redis_server.clients() == 0, timeout=5.0)


async def test_unreachable_redis_is_a_clear_start_up_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(url, timeout=1.0)
    with pytest.raises(StoreUnavailable, match=url.replace("/", ".")):
        await store.start()


async def test_acknowledged_entries_survive_kill_9_with_aof(
    stores: MakeStore, redis_aof: RedisServer
) -> None:
    store = await stores(redis_aof.url)
    sids = [new_session_id() for _ in range(20)]
    for sid in sids:
        await store.create(meta(sid))
    for seq in range(1, 51):
        for sid in sids:
            store.append(sid, 1, seq, [b"%d" % seq], consumed=seq, acked=0)
        await store.commit()  # acknowledged by Redis: must survive
    redis_aof.kill()
    redis_aof.start()
    fresh = await stores(redis_aof.url)
    for sid in sids:
        loaded = await fresh.load(sid)
        assert loaded.positions == Positions(51, 0, 50, tuple(b"%d" % seq for seq in range(1, 51)))


async def test_without_aof_a_restarted_redis_answers_with_a_typed_reason(
    stores: MakeStore, redis_server: RedisServer
) -> None:
    store = await stores()
    sid = new_session_id()
    await store.create(meta(sid))
    redis_server.restart()
    fresh = await stores()
    with pytest.raises(Gone) as caught:
        await fresh.load(sid)
    assert caught.value.code is CloseCode.UNKNOWN_SESSION


async def test_the_database_number_of_the_url_is_used_by_every_connection(
    stores: MakeStore, redis_server: RedisServer
) -> None:
    store = await stores(f"redis://127.0.0.1:{redis_server.port}/3")
    sid = new_session_id()
    await store.create(meta(sid))
    store.append(sid, 1, 1, [b"in db 3"], consumed=0, acked=0)  # the hiredis connection
    await store.commit()
    assert (await store.load(sid)).positions.unacked == (b"in db 3",)
    default = await stores()
    with pytest.raises(Gone):
        await default.load(sid)
