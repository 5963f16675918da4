"""The Redis session store: redis-py's asyncio client with the hiredis parser.

Hot path: :meth:`RedisStore.append` queues one ``XADD`` per session per loop
iteration (its new outbound payloads and both positions in one entry), and
:meth:`RedisStore.commit` sends everything queued in one pipelined round trip.
Commits are serialised (one in flight): appends made while one runs go out in
the next, so a session's entries reach Redis in counter order. Key names,
scripts and encodings are in :mod:`sessiond.store.keys`.

A move (a RESUME at this process of a session a live process holds) costs three
round trips and two pub/sub hops: :meth:`RedisStore.resume` reads what the claim is
decided from and asks the owner to release (one script); the owner's
:meth:`RedisStore.release_later` rides in its next pipelined commit, after the
session's last append, and answers from there; :meth:`RedisStore.claim_loaded`
claims (writing the rotated credential) and reads the session back in one
transaction. Both of the claimer's round trips use hiredis connections of their own
(:class:`~sessiond.store.wire.WirePool`) where the URL allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from sessiond_client.protocol import CloseCode

from ..tasks import end
from . import keys
from .errors import Fenced, Gone, StoreUnavailable
from .records import Claimable, Loaded, Positions, Rotation, SessionMeta, Terms
from .streams import StreamLog
from .wire import Wire, WireError, WirePool

log = logging.getLogger("sessiond.store")

#: Entries trimmable (entirely acknowledged) before an XTRIM is queued with an append.
TRIM_BATCH = 8


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands taken for one commit, and per command the session it writes (or None)."""

    commands: list[tuple[Any, ...]]
    owners: list[bytes | None]
    releases: int = 0  # how many of the commands are releases (release_later)


class RedisStore:
    """Sessions in Redis, shared by every process that uses the same server and prefix.

    Call :meth:`start` (connects, takes the node lease, listens for release
    requests) before anything else and :meth:`close` at the end.
    """

    shared = True

    def __init__(
        self,
        url: str,
        key_prefix: str = "sessiond:",
        *,
        lease_ttl: float = 3.0,
        renew_every: float = 1.0,
        ended_ttl: float = 3600.0,
        timeout: float = 2.0,
        max_connections: int = 16,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.node = secrets.token_hex(8)
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every
        self.ended_ttl = ended_ttl
        self.timeout = timeout
        #: Called with a session ID whose append was refused (fenced out or gone).
        self.on_fenced: Callable[[bytes], None] = lambda sid: None
        #: Called once when the lease could not be renewed before it ran out.
        self.on_lease_lost: Callable[[], None] = lambda: None
        #: Called with a session ID that another node asks this one to release.
        self.on_release_request: Callable[[bytes], None] = lambda sid: None
        # A bounded pool whose users wait for a free connection: a burst of resumes
        # (every client of a network cut at once) must not open a connection each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,  # waiting for a free connection is not a fault
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        # from_pool: the client owns the pool, so its aclose() disconnects the pool's
        # connections too (Redis(connection_pool=...) leaves them to the caller).
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        # The hot path and the lease each have a connection of their own: neither
        # waits behind a burst of claims, and commits reach Redis in order.
        self._writer = aioredis.Redis.from_url(
            url,
            single_connection_client=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        #: The hot path's connection: hiredis encoding and parsing (sessiond/store/wire.py)
        #: where the URL allows, else redis-py on a connection of its own.
        self._wire = Wire(url, timeout) if Wire.supports(url) else None
        #: The claim path's connections (resume, claim_loaded): hiredis too, a few, so a
        #: burst of resumes neither waits behind the hot path nor pays redis-py's cost.
        self._claims = WirePool(url, timeout, max_connections) if Wire.supports(url) else None
        #: Exchanges with Redis this store made (pub/sub and the lease excluded): each
        #: a round trip (a first use of a script through redis-py may add two).
        self.round_trips = 0
        self._leaser = aioredis.Redis.from_url(
            url,
            single_connection_client=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._logs: dict[bytes, StreamLog] = {}
        self._commands: list[tuple[Any, ...]] = []
        self._owners: list[bytes | None] = []  # per queued command: the session it writes
        self._releases = 0  # releases among the queued commands
        self._commit_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._released: dict[bytes, asyncio.Future[None]] = {}
        self._asked: dict[bytes, str] = {}  # session -> node that asked for its release
        self._lease_renewed = 0.0
        self._lease_lost = False
        self._renew_failed = False
        self._scripts: dict[str, Any] = {}
        self._stopping = False  # set by close(): the loops stop at their next turn

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, take this process's lease and subscribe to release requests.

        Raises :class:`StoreUnavailable` naming the URL when Redis cannot be reached.
        """
        try:
            await self.client.ping()
            for name, source in (
                ("claim", keys.CLAIM),
                ("claim_load", keys.CLAIM_LOAD),
                ("resume", keys.RESUME),
                ("fenced_hset", keys.FENCED_HSET),
                ("release", keys.RELEASE),
                ("end", keys.END),
            ):
                self._scripts[name] = self.client.register_script(source)
            await self._renew()
            self._pubsub = self.client.pubsub()
            await self._pubsub.subscribe(
                keys.release_channel(self.prefix, self.node),
                keys.released_channel(self.prefix, self.node),
            )
        except (RedisError, OSError) as exc:
            await self._disconnect()
            raise StoreUnavailable(f"session store {self.url}: {exc}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._renew_forever()),
            loop.create_task(self._listen()),
        ]

    async def close(self) -> None:
        """Stop renewing the lease, drop it, and disconnect."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        # Every task has ended before its client closes: one that went on after its
        # cancel was lost (in redis-py's send: sessiond/tasks.py) would open a new
        # connection that nothing closes.
        running = await end(tasks, self.timeout)
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(keys.lease_key(self.prefix, self.node))
        await self._disconnect()
        if running:  # stuck (Redis unreachable): the closes above end their reads
            await end(running, self.timeout)

    async def _disconnect(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
        if self._wire is not None:
            self._wire.close()
        if self._claims is not None:
            self._claims.close()
        for client in (self.client, self._writer, self._leaser):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    # ------------------------------------------------------------------ lease

    async def _renew(self) -> None:
        await self._leaser.set(
            keys.lease_key(self.prefix, self.node), self.node, px=int(self.lease_ttl * 1000)
        )
        self._lease_renewed = time.monotonic()

    async def _renew_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.renew_every)
            try:
                async with asyncio.timeout(self.renew_every):
                    await self._renew()
                self._renew_failed = False
                if self._lease_lost:
                    # Every session was dropped when the lease was lost; others may
                    # have claimed them since. This process can take new ones again.
                    log.warning("session store: reachable again, lease taken anew")
                    self._lease_lost = False
            except (RedisError, OSError, TimeoutError) as exc:
                self._renew_failed = True
                log.warning("session store: lease renewal failed: %s", exc or type(exc).__name__)
            # Give up one renewal period before the lease runs out: sessions this
            # process can no longer write must be detached while it still owns them.
            if (
                not self._lease_lost
                and time.monotonic() - self._lease_renewed > self.lease_ttl - self.renew_every
            ):
                self._lease_lost = True
                log.error("session store: lease about to run out; detaching every session")
                self.on_lease_lost()

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost

    @property
    def lease_renewed(self) -> float:
        """When (``time.monotonic()``) Redis last renewed this process's lease."""
        return self._lease_renewed

    @property
    def healthy(self) -> bool:
        """False while the lease cannot be renewed (Redis unreachable or too slow)."""
        return not self._renew_failed and not self._lease_lost

    async def owner_alive(self, node: str) -> bool:
        """True while *node* holds its lease."""
        if not node:
            return False
        if node == self.node:
            return not self._lease_lost
        return bool(await self._call(self.client.exists(keys.lease_key(self.prefix, node))))

    async def lease_gone(self, node: str, timeout: float) -> bool:
        """Wait (at most *timeout*) until *node*'s lease has run out; True if it has.

        A process killed with its lease still valid answers no release request: its
        sessions can be claimed as soon as the lease expires, not a timeout later.
        """
        deadline = time.monotonic() + timeout
        key = keys.lease_key(self.prefix, node)
        while True:
            left = await self._call(self.client.pttl(key))  # -2: gone, -1: no expiry
            if left == -2:
                return True
            wait = deadline - time.monotonic()
            if left < 0 or wait <= 0:
                return False
            await asyncio.sleep(min(left / 1000 + 0.005, wait))

    # --------------------------------------------------------------- hot path

    def append(
        self,
        sid: bytes,
        epoch: int,
        first_seq: int,
        payloads: Sequence[bytes],
        consumed: int,
        acked: int,
        mark: str | None = None,
    ) -> None:
        """Queue one entry: the session's payloads numbered from *first_seq* (maybe
        none), its positions and its app's *mark*. Sent by the next :meth:`commit`."""
        stream = self._logs.get(sid)
        if stream is None:
            self._logs[sid] = stream = StreamLog(epoch)
        key = keys.stream_key(self.prefix, sid)
        counter = stream.add(epoch, first_seq + len(payloads) - 1)
        command: tuple[Any, ...] = (
            "XADD",
            key,
            "NOMKSTREAM",
            f"{epoch}-{counter}",
            keys.FIRST,
            first_seq,
            keys.CONSUMED,
            consumed,
            keys.ACKED,
            acked,
        )
        if payloads:
            command = (*command, keys.PAYLOADS, keys.pack(list(payloads)))
        if mark is not None:
            command = (*command, keys.MARK, mark)
        self._commands.append(command)
        self._owners.append(sid)
        minid = stream.trim(acked, TRIM_BATCH)
        if minid is not None:
            self._commands.append(("XTRIM", key, "MINID", minid))
            self._owners.append(None)

    def put_data(self, sid: bytes, epoch: int, data: bytes, ttl: float) -> None:
        """Queue ``session.data`` (*data*, msgpack) for the next commit, after the
        session's append: written only while *epoch* is current (a script, queued only
        when the data changed), with the keys' TTL set to *ttl* seconds."""
        meta, stream = keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)
        ms = int(ttl * 1000)
        self._commands.append(
            ("EVAL", keys.FENCED_HSET, 2, meta, stream, epoch, ms, keys.DATA, data)
        )
        self._owners.append(None)  # fenced out: the append before it reports it

    def refresh(self, sid: bytes, ttl: float) -> None:
        """Queue a TTL of *ttl* seconds on the session's keys (with the next commit): an
        attached session's keys outlive a crash of its owner by its lifetime, no more."""
        ms = int(ttl * 1000)
        self._commands.append(("PEXPIRE", keys.meta_key(self.prefix, sid), ms))
        self._commands.append(("PEXPIRE", keys.stream_key(self.prefix, sid), ms))
        self._owners += [None, None]

    @property
    def pending(self) -> bool:
        """True when appends are waiting for a :meth:`commit`."""
        return bool(self._commands)

    def take(self) -> Batch:
        """Everything appended so far, for :meth:`commit` (a caller that must do other
        writes first takes the batch at the moment it takes its other work)."""
        batch = Batch(self._commands, self._owners, self._releases)
        self._commands, self._owners, self._releases = [], [], 0
        return batch

    async def commit(self, batch: Batch | None = None) -> None:
        """Send *batch* (default: everything appended so far) in one pipelined round trip.

        Returns once it is stored. A session whose entry Redis refused (fenced
        out, or its keys expired) is reported to :attr:`on_fenced`. Raises
        :class:`StoreUnavailable` if the round trip failed (whether it was
        applied is then unknown: treat the batch's sessions as lost here).
        """
        async with self._commit_lock:
            if batch is None:
                batch = self.take()
            commands, owners = batch.commands, batch.owners
            if not commands:
                return
            self.round_trips += 1
            try:
                if self._wire is not None:
                    results = await self._wire.execute(commands)
                else:
                    pipe = self._writer.pipeline(transaction=False)
                    for command in commands:
                        pipe.execute_command(*command)
                    async with asyncio.timeout(self.timeout):
                        results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError, WireError) as exc:
                raise StoreUnavailable(f"session store: {exc}") from None
            for sid, result in zip(owners, results, strict=True):
                if sid is not None and (
                    result is None or isinstance(result, Exception | hiredis.ReplyError)
                ):
                    self._logs.pop(sid, None)
                    self.on_fenced(sid)
            if batch.releases:
                for command, result in zip(commands, results, strict=True):
                    if command[1] is keys.RELEASE and result != 1:
                        # Fenced out (someone else holds it): nobody was answered. The
                        # session was let go here already; its new owner has it.
                        log.warning("session store: release of %s refused: %s", command[3], result)

    # --------------------------------------------------------------- lifecycle

    async def create(self, meta: SessionMeta, positions: Positions | None = None) -> int:
        """Store a new session owned by this node; returns its epoch (1)."""
        sid = meta.session_id
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.meta_key(self.prefix, sid), mapping=self._meta_fields(meta, 1))  # type: ignore[arg-type]
        pipe.xadd(keys.stream_key(self.prefix, sid), {keys.CLAIMED: self.node}, id="1-0")
        if positions is not None:
            pipe.hset(keys.meta_key(self.prefix, sid), keys.POSITIONS, _pack_positions(positions))
        await self._call(pipe.execute())
        self._logs[sid] = StreamLog(1)
        return 1

    async def load(self, sid: bytes) -> Loaded:
        """The stored session; raises :class:`Gone` with the reason when there is none."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.meta_key(self.prefix, sid))
        pipe.xrange(keys.stream_key(self.prefix, sid))
        fields, entries = await self._call(pipe.execute())
        if not fields:
            raise Gone(CloseCode.UNKNOWN_SESSION)
        if b"x" in fields:
            raise Gone(CloseCode(int(fields[b"x"])))
        return _decode(sid, fields, entries, self._logs)

    async def claim(self, sid: bytes, expected_epoch: int) -> int:
        """Take the session over from epoch *expected_epoch*; returns the new epoch.

        Raises :class:`Fenced` if someone else moved the epoch first, :class:`Gone`
        if the session is not there. Check :meth:`owner_alive` (or ask the owner to
        release) first: a claim does not look at leases.
        """
        result = int(
            await self._call(
                self._scripts["claim"](
                    keys=[keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)],
                    args=[str(expected_epoch), self.node],
                )
            )
        )
        if result == 0:
            raise Fenced(f"session {sid.hex()[:8]}: epoch moved past {expected_epoch}")
        if result == -1:
            raise Gone(CloseCode.UNKNOWN_SESSION)
        if result == -2:
            raise Gone(CloseCode.SESSION_REVOKED)
        stream = self._logs.get(sid)
        if stream is not None:
            stream.claimed(result)
        else:
            self._logs[sid] = StreamLog(result)
        return result

    async def resume(self, sid: bytes, presented: bytes) -> Claimable | None:
        """The first step of a move, one round trip: what the claim is decided from,
        and, if *presented* (a credential's digest) is one the session ever had and
        another node owns it, a request to that owner to release it (answered to
        :meth:`released`, which must be called next). None: a credential the session
        never had (nobody was asked). Raises :class:`Gone` with the reason when the
        session is not there."""
        meta_key = keys.meta_key(self.prefix, sid)
        request = f"{self.node}:{sid.hex()}"
        channels = keys.release_channel(self.prefix, "")
        # Listening before asking: the answer cannot come before its waiter.
        waiter = self._released.get(sid)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._released[sid] = waiter
        asked = False
        try:
            args = (presented, self.node, channels, request)
            if self._claims is not None:
                (reply,) = await self._claim_path([("EVAL", keys.RESUME, 1, meta_key, *args)])
            else:
                reply = await self._call(self._scripts["resume"](keys=[meta_key], args=args))
            status = int(reply[0])
            if status == -1:
                raise Gone(CloseCode.UNKNOWN_SESSION)
            if status == -2:
                raise Gone(CloseCode(int(reply[1])))
            if status == 0:
                return None
            _, epoch, owner, listeners, current, previous, retired, confirmed, salt, *rest = reply
            identity, terms = rest
            asked = int(listeners) > 0
            return Claimable(
                epoch=int(epoch),
                owner=_text(owner),
                listeners=int(listeners),
                identity=keys.unpack(identity),
                credential_digest=current,
                previous_digest=previous or None,
                retired=keys.split_digests(retired),
                confirmed=bool(confirmed),
                rotation_salt=salt or None,
                lifetime=Terms.from_list(keys.unpack(terms)).lifetime,
            )
        finally:
            if not asked and self._released.get(sid) is waiter:
                del self._released[sid]

    async def released(self, sid: bytes, found: Claimable, timeout: float) -> bool:
        """After :meth:`resume`: True once *found*'s owner released the session (at once
        if none was asked); if nobody listened for the request (a killed owner), once its
        lease runs out (within ``lease_ttl``); if the owner did not answer within
        *timeout*, only if it holds no lease (alive without it, it dropped its sessions)."""
        waiter = self._released.get(sid)
        try:
            if found.listeners < 0:
                return True
            if found.listeners == 0 or waiter is None:
                return await self.lease_gone(found.owner, self.lease_ttl)
            # Not asyncio.wait_for: on Python 3.11 it returns when the task is cancelled
            # as the answer arrives (sessiond/tasks.py), and a resume cancelled by the
            # server's close() would go on to claim the session. Shielded: concurrent
            # resumes of one session share the waiter.
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(waiter)
            except TimeoutError:
                return not await self.owner_alive(found.owner)
            return True
        finally:
            if waiter is not None and self._released.get(sid) is waiter:
                del self._released[sid]

    async def claim_loaded(
        self,
        sid: bytes,
        expected_epoch: int,
        ttl: float = 0.0,
        rotation: Rotation | None = None,
    ) -> tuple[int, Loaded]:
        """:meth:`claim`, and the session as the claim left it (:meth:`load`), in one
        round trip (one script): what a released owner stored is read after the epoch
        moved on, so no later write of that owner can be missing from it. The keys get
        a TTL of *ttl* seconds (0: none); a *rotation* is written with the claim if the
        credential is still the one it was decided from (the returned meta says)."""
        meta_key, stream_key = keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)
        args: list[Any] = [str(expected_epoch), self.node]
        if ttl > 0 or rotation is not None:
            args.append(int(ttl * 1000))
        if rotation is not None:
            args += [rotation.from_digest, b"1" if rotation.from_previous else b""]
            args += [keys.DIGEST, rotation.credential_digest]
            args += [keys.PREVIOUS, rotation.previous_digest]
            args += [keys.RETIRED, keys.join_digests(rotation.retired)]
            args += [keys.CONFIRMED, b"", keys.SALT, rotation.rotation_salt]
        if self._claims is not None:
            (reply,) = await self._claim_path(
                [("EVAL", keys.CLAIM_LOAD, 2, meta_key, stream_key, *args)]
            )
            if isinstance(reply, hiredis.ReplyError):  # the script failed (a bug)
                raise StoreUnavailable(f"session store: {reply}")
        else:
            reply = await self._call(
                self._scripts["claim_load"](keys=[meta_key, stream_key], args=args)
            )
        result, flat, raw = reply if isinstance(reply, list) else (reply, [], [])
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        entries = [(eid, dict(zip(kv[::2], kv[1::2], strict=True))) for eid, kv in raw]
        epoch = int(result)
        if epoch == 0:
            raise Fenced(f"session {sid.hex()[:8]}: epoch moved past {expected_epoch}")
        if epoch == -1:
            raise Gone(CloseCode.UNKNOWN_SESSION)
        if epoch == -2:
            raise Gone(CloseCode.SESSION_REVOKED)
        # The stream read ends with this claim's marker: the log starts the new epoch.
        return epoch, _decode(sid, fields, entries, self._logs)

    async def save(
        self,
        sid: bytes,
        epoch: int,
        meta: SessionMeta | None = None,
        positions: Positions | None = None,
        ttl: float = 0.0,
        release: bool = False,
    ) -> None:
        """Write metadata (and the positions) if *epoch* is still current, then set the
        keys' TTL (*ttl* seconds: detached; 0: attached, no TTL). With *release*,
        ownership is given up, and *positions* are required (the next claim reads them
        instead of the stream). Raises :class:`Fenced` when another node owns it."""
        if release and positions is None:
            raise ValueError("a release stores the positions")
        fields: list[Any] = []
        if meta is not None:
            for name, value in self._meta_fields(meta, epoch).items():
                fields += [name, value]
        if positions is not None:
            fields += [keys.POSITIONS, _pack_positions(positions)]
        if release:
            fields += [keys.OWNER, ""]
        waiter = self._pubsub_reply(sid) if release else None
        meta_key, stream_key = keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)
        if waiter is not None and ttl > 0:  # the asker is answered in the same round trip
            script, args = self._scripts["release"], [str(epoch), int(ttl * 1000), *waiter]
        else:
            script, args = self._scripts["fenced_hset"], [str(epoch), int(ttl * 1000)]
        done = await self._call(script(keys=[meta_key, stream_key], args=[*args, *fields]))
        if not done:
            self._logs.pop(sid, None)
            raise Fenced(f"session {sid.hex()[:8]}: epoch {epoch} is no longer current")
        if release:
            self._logs.pop(sid, None)
            if waiter is not None and ttl <= 0:
                await self._call(self.client.publish(*waiter))

    async def end(self, sid: bytes, epoch: int, code: CloseCode) -> None:
        """Replace the session by its end *code* (kept ``ended_ttl`` to answer resumes)."""
        self._logs.pop(sid, None)
        await self._call(
            self._scripts["end"](
                keys=[keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)],
                args=[str(epoch), int(code), int(self.ended_ttl * 1000)],
            )
        )

    def save_later(self, sid: bytes, epoch: int, meta: SessionMeta, ttl: float) -> None:
        """:meth:`save` of *meta* with a TTL of *ttl* seconds, queued for the next
        :meth:`commit` (after the session's appends queued so far) instead of a round
        trip of its own. Fenced out, it changes nothing and is not reported: whoever
        holds the session now has it, and this process's next append is refused."""
        fields: list[Any] = []
        for name, value in self._meta_fields(meta, epoch).items():
            fields += [name, value]
        meta_key, stream_key = keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)
        ms = int(ttl * 1000)
        self._commands.append(
            ("EVAL", keys.FENCED_HSET, 2, meta_key, stream_key, epoch, ms, *fields)
        )
        self._owners.append(None)

    def release_later(
        self, sid: bytes, epoch: int, meta: SessionMeta, positions: Positions, ttl: float
    ) -> None:
        """Queue the release of *sid* (its metadata and *positions*, no owner, a TTL of
        *ttl* seconds) for the next :meth:`commit`, after the session's appends queued
        so far; fenced by *epoch* like every write. The node that asked for it is
        answered by the same script: no round trip of its own."""
        fields: list[Any] = []
        for name, value in self._meta_fields(meta, epoch).items():
            fields += [name, value]
        fields += [keys.POSITIONS, _pack_positions(positions), keys.OWNER, ""]
        channel, message = self._pubsub_reply(sid) or ("", "")
        meta_key, stream_key = keys.meta_key(self.prefix, sid), keys.stream_key(self.prefix, sid)
        ms = int(ttl * 1000)
        self._commands.append(
            ("EVAL", keys.RELEASE, 2, meta_key, stream_key, epoch, ms, channel, message, *fields)
        )
        self._owners.append(None)  # refused: logged by commit (the session is gone here)
        self._releases += 1
        self._logs.pop(sid, None)

    def disown_later(self, sid: bytes) -> bool:
        """Answer the node that asked this one to release *sid*, which this process does
        not hold (it let it go, and its release or last writes may not have landed), with
        the next :meth:`commit`, after every write of this process queued so far: if Redis
        still names this node the owner, or nobody, the asker may claim it (reading the
        stream, as after a dead owner); if another node owns it, nobody is answered. No
        round trip of its own. False if nobody asked (nothing queued)."""
        reply = self._pubsub_reply(sid)
        if reply is None:
            return False
        self._commands.append(
            ("EVAL", keys.DISOWN, 1, keys.meta_key(self.prefix, sid), self.node, *reply)
        )
        self._owners.append(None)
        return True

    def decline(self, sid: bytes) -> None:
        """Leave the request to release *sid* unanswered (the asker refuses its resume
        as busy once its wait is over; the client retries)."""
        self._asked.pop(sid, None)

    def forget(self, sid: bytes) -> None:
        """This process no longer holds the session (fenced, or dropped)."""
        self._logs.pop(sid, None)

    # ---------------------------------------------------------------- release

    async def ask_release(self, owner: str, sid: bytes, timeout: float) -> bool:
        """Ask live node *owner* to release *sid*; True once it says it has."""
        return await self._ask(owner, sid, timeout, alive_check=False)

    async def release_from(self, owner: str, sid: bytes, timeout: float) -> bool:
        """Have node *owner* let go of *sid*: True once it released it, at once if it
        holds no lease (then no one serves it), or, if nobody listens for its requests
        (killed), once its lease runs out (within ``lease_ttl``). One round trip asks both: the
        lease is checked in the request's pipeline (:meth:`owner_alive`, then
        :meth:`ask_release`, without the wait between them)."""
        return await self._ask(owner, sid, timeout, alive_check=True)

    async def _ask(self, owner: str, sid: bytes, timeout: float, alive_check: bool) -> bool:
        waiter = self._released.get(sid)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._released[sid] = waiter
        try:
            pipe = self.client.pipeline(transaction=False)
            if alive_check:
                pipe.exists(keys.lease_key(self.prefix, owner))
            pipe.publish(keys.release_channel(self.prefix, owner), self.node + ":" + sid.hex())
            *alive, listeners = await self._call(pipe.execute())
            if alive and not alive[0]:
                # No lease: as when it was checked first, it is claimable now (a process
                # left alive without its lease has dropped its sessions; the request it
                # may get is answered by a fenced release, which changes nothing).
                return True
            if not listeners:  # its process is gone (a kill -9): only its lease is left
                # Nobody will answer: claimable once the lease runs out, not a timeout later.
                return alive_check and await self.lease_gone(owner, self.lease_ttl)
            async with asyncio.timeout(timeout):  # not wait_for: as in released()
                await asyncio.shield(waiter)
            return True
        except TimeoutError:
            return False
        finally:
            if self._released.get(sid) is waiter:
                del self._released[sid]

    def _pubsub_reply(self, sid: bytes) -> tuple[str, str] | None:
        asker = self._asked.pop(sid, None)
        if asker is None:
            return None
        return keys.released_channel(self.prefix, asker), sid.hex()

    async def _listen(self) -> None:
        release = keys.release_channel(self.prefix, self.node).encode()
        pubsub = self._pubsub
        # A subscribed connection only reads: one whose path died without a reset (a
        # half-open TCP connection) would never fail, and every release request would be
        # lost while the lease, on a connection of its own, goes on being renewed (every
        # resume elsewhere refused as busy). So it is pinged every renewal period, and
        # silent for a lease TTL, it is reconnected (redis-py subscribes again).
        heard = pinged = time.monotonic()
        while not self._stopping:
            try:
                now = time.monotonic()
                if now - heard > self.lease_ttl:
                    heard = now
                    raise ConnectionError(f"no answer for {self.lease_ttl:g} s")
                if now - pinged >= self.renew_every:
                    pinged = now
                    await pubsub.ping()
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(1.0, self.renew_every)
                )
            except (RedisError, OSError) as exc:
                log.warning("session store: release channel: %s", exc)
                if pubsub.connection is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.connection.disconnect()  # the next read reconnects
                await asyncio.sleep(self.renew_every)
                continue
            if message is None:
                continue
            heard = time.monotonic()
            if message["type"] != "message":  # the answer to a ping
                continue
            data: bytes = message["data"]
            if message["channel"] == release:
                asker, _, hexid = data.decode().partition(":")
                sid = bytes.fromhex(hexid)
                self._asked[sid] = asker
                self.on_release_request(sid)
            else:
                waiter = self._released.get(bytes.fromhex(data.decode()))
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    # --------------------------------------------------------------- helpers

    def _meta_fields(self, meta: SessionMeta, epoch: int) -> dict[str, Any]:
        return {
            keys.EPOCH: str(epoch),
            keys.OWNER: self.node,
            keys.IDENTITY: keys.pack(meta.identity),
            keys.DIGEST: meta.credential_digest,
            keys.PREVIOUS: meta.previous_digest or b"",
            keys.RETIRED: keys.join_digests(meta.retired),
            keys.CONFIRMED: b"1" if meta.confirmed else b"",
            keys.SALT: meta.rotation_salt or b"",
            keys.TERMS: keys.pack(meta.terms.to_list()),
            keys.DATA: keys.pack(meta.data),
        }

    async def _claim_path(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        assert self._claims is not None
        self.round_trips += 1
        try:
            return await self._claims.execute(commands)
        except WireError as exc:
            raise StoreUnavailable(f"session store: {exc}") from None

    async def _call(self, pending: Any) -> Any:
        # The socket timeout bounds each command; a wait for a pooled connection
        # behind a burst of claims is not counted against it.
        self.round_trips += 1
        try:
            return await pending
        except ResponseError:
            raise
        except (RedisError, OSError, TimeoutError, RedisTimeout) as exc:
            raise StoreUnavailable(f"session store: {exc or type(exc).__name__}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pack_positions(positions: Positions) -> bytes:
    fields = [positions.next_seq, positions.acked, positions.consumed, list(positions.unacked)]
    if positions.mark is not None:
        fields.append(positions.mark)
    return keys.pack(fields)


def _gather(runs: list[tuple[int, list[bytes]]], start: int, end: int) -> tuple[bytes, ...]:
    """The payloads numbered *start* .. *end* - 1 from *runs* of consecutive ones, each
    ``(number of its first, payloads)``; raises :class:`Gone` if one is in none.

    A number is given to one payload only (a fenced owner's append is refused, not
    stored), so any run holding it will do: slices of the runs, not one dict entry per
    payload (a move reads a whole window of them twice: the release's and the stream's).
    """
    out: list[bytes] = []
    seq = start
    while seq < end:
        best_first, best = 0, None
        for first, batch in runs:  # of the runs holding seq, the one reaching furthest
            if first <= seq < first + len(batch) and (
                best is None or first + len(batch) > best_first + len(best)
            ):
                best_first, best = first, batch
        if best is None:
            raise Gone(CloseCode.REPLAY_UNAVAILABLE)
        stop = min(end, best_first + len(best))
        out += best[seq - best_first : stop - best_first]
        seq = stop
    return tuple(out)


def _decode(
    sid: bytes,
    fields: dict[bytes, bytes],
    entries: list[tuple[bytes, dict[bytes, bytes]]],
    logs: dict[bytes, StreamLog],
) -> Loaded:
    epoch = int(fields[b"e"])
    meta = SessionMeta(
        session_id=sid,
        identity=keys.unpack(fields[b"i"]),
        credential_digest=fields[b"d"],
        previous_digest=fields.get(b"pd") or None,
        retired=keys.split_digests(fields.get(b"r", b"")),
        confirmed=bool(fields.get(b"cf")),
        terms=Terms.from_list(keys.unpack(fields[b"t"])),
        data=keys.unpack(fields[b"data"]),
        rotation_salt=fields.get(b"rs") or None,
    )
    next_seq, acked, consumed = 1, 0, 0
    mark: str | None = None
    runs: list[tuple[int, list[bytes]]] = []  # (sequence number of the first, payloads)
    if b"pos" in fields:
        next_seq, acked, consumed, unacked, *more = keys.unpack(fields[b"pos"])
        mark = more[0] if more else None
        runs.append((acked + 1, unacked))
    stream = StreamLog(epoch)
    for raw_id, entry in entries:
        entry_epoch, counter = keys.parse_entry_id(raw_id)
        if b"s" not in entry:  # a claim marker
            stream.loaded(entry_epoch, counter, 0)
            continue
        first = int(entry[b"s"])
        batch = keys.unpack(entry[b"p"]) if b"p" in entry else []
        if batch:
            runs.append((first, batch))
        next_seq = max(next_seq, first + len(batch))
        acked = max(acked, int(entry[b"a"]))
        consumed = max(consumed, int(entry[b"c"]))
        if b"k" in entry:
            mark = keys.later_mark(mark, entry[b"k"].decode())
        stream.loaded(entry_epoch, counter, first + len(batch) - 1)
    unacked_payloads = _gather(runs, acked + 1, next_seq)
    logs[sid] = stream
    return Loaded(
        epoch=epoch,
        owner=fields.get(b"o", b"").decode(),
        meta=meta,
        positions=Positions(next_seq, acked, consumed, unacked_payloads, mark),
    )
