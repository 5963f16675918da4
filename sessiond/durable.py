"""Write-through of a server's sessions to a shared store (ARCHITECTURE.md guarantee 10).

With a store, a session's output does not go to its socket when the core makes
it. Once per loop iteration, :meth:`Durability.flush` takes every dirty
session's bytes from its connection and, in the same instant, appends to the
store the payloads sent since the last append and the inbound position the
handler consumed, i.e. is done with (one entry per session; when a message counts
as consumed: :class:`~sessiond_client.handoff.SettlingHandoff`), and
``session.data`` when the handler used it and it changed. A single writer task then, per
batch: runs the metadata writes that must precede it (a new session, a rotated
credential), commits all appends in one pipelined round trip, and only then
writes the bytes to the sockets. So no DATA frame leaves before the store has
it, and no ACK (which can only acknowledge what was consumed when the bytes
were taken) leaves before the consumed position is stored.

A RESUME of a session this process does not hold loads it from the store: a
live owner is asked to release it first; then this process claims it (epoch +
1, which fences the old owner out), rebuilds the core with
``Session.restore_server`` and starts a handler with ``session.recovered``.
With a live owner that is three round trips to Redis and two pub/sub hops
(sessiond/store/redisstore.py): the credential check with the release request,
the owner's release in its next commit, the claim with the rotated credential
(decided before it, :func:`plan_rotation`) and the read of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sessiond_client.protocol import CloseCode, Connection, ConnectionState, ServerSnapshot
from sessiond_client.protocol import Session as CoreSession
from sessiond_client.protocol.credentials import digest, matches, new_salt, rotated_credential
from sessiond_client.protocol.session import RETIRED_CREDENTIALS

from .store import (
    Claimable,
    Fenced,
    Gone,
    Loaded,
    Positions,
    Rotation,
    SessionMeta,
    StoreError,
    StoreUnavailable,
    Terms,
)
from .store.keys import later_mark, pack
from .tasks import end

if TYPE_CHECKING:
    from .server import Server, ServerProtocol, _Entry
    from .store.redisstore import RedisStore

log = logging.getLogger("sessiond.store")

#: How long a resume waits for a live owner to release the session.
RELEASE_TIMEOUT = 2.0
#: How often the TTL of attached sessions' keys is renewed (seconds).
REFRESH_EVERY = 10.0
#: retry_after given to a client refused because the store is unavailable.
STORE_RETRY_AFTER = 1.0
#: How long shutdown waits for the store to disconnect (and drop the lease).
CLOSE_TIMEOUT = 2.0


class Closing(Exception):
    """The server began closing before the claim: the session stays where it is."""


class Forged(Exception):
    """A resume presented a credential the stored session never had."""

    def __init__(self, loaded: Loaded) -> None:
        super().__init__("unknown credential")
        self.loaded = loaded


class _Stored:
    """What this process knows of one session's presence in the store."""

    __slots__ = ("claimed", "consumed", "data", "epoch", "fenced", "mark", "sent")

    def __init__(self, epoch: int, sent: int, consumed: int, data: bytes) -> None:
        self.epoch = epoch
        self.sent = sent  # the last outbound sequence number appended
        self.consumed = consumed  # the inbound position last appended
        self.data = data  # session.data as last written (msgpack)
        self.fenced = False
        #: The greatest app mark stored (Session.marker): a release stores it with the
        #: positions, so that the next claim needs none of the stream's entries.
        self.mark: str | None = None
        #: The credential state the claim stored, until the resume that claimed it is
        #: answered: if the core kept it, there is nothing more to store for that resume.
        self.claimed: tuple[Any, ...] | None = None


def credential_state(
    snapshot: ServerSnapshot | SessionMeta,
) -> tuple[bytes, bytes | None, tuple[bytes, ...], bool, bytes | None]:
    """The credential fields of a core's snapshot or of stored metadata, comparable."""
    return (
        snapshot.credential_digest,
        snapshot.previous_digest,
        snapshot.retired,
        snapshot.confirmed,
        snapshot.rotation_salt,
    )


def plan_rotation(found: Claimable, credential: bytes, identity: Any) -> Rotation | None:
    """The credential state a resume presenting *credential* leaves, decided before the
    claim so that the claim stores it (protocol.md §10.4: the rule of the core's
    ``Session._next_credential``). None when the core would not rotate (a credential
    it refuses, theft included, or another identity: it judges that after the claim),
    or when the rotation is already stored (the previous credential, presented while the
    current one is unconfirmed, gets that one again, §10.3).

    The core restored from the stored result is in the state this rotation leaves: the
    presented credential is its unconfirmed previous one, and its rotation salt issues
    the same new credential again, so the core stores nothing more for this resume.
    """
    presented = digest(credential)
    current, confirmed, salt = found.credential_digest, found.confirmed, found.rotation_salt
    previous = False
    if not matches(presented, current):
        previous = not confirmed and matches(presented, found.previous_digest)
        if not previous:
            return None
    if identity != found.identity:
        return None
    if (
        salt is not None
        and not confirmed
        and matches(digest(rotated_credential(credential, salt)), current)
    ):
        return None
    salt = new_salt()
    return Rotation(
        from_digest=current,
        from_previous=previous,
        credential_digest=digest(rotated_credential(credential, salt)),
        previous_digest=presented,
        retired=(*found.retired[1 - RETIRED_CREDENTIALS :], current),
        rotation_salt=salt,
    )


def to_snapshot(loaded: Loaded) -> ServerSnapshot:
    meta, positions, terms = loaded.meta, loaded.positions, loaded.meta.terms
    return ServerSnapshot(
        session_id=meta.session_id,
        identity=meta.identity,
        credential_digest=meta.credential_digest,
        previous_digest=meta.previous_digest,
        retired=meta.retired,
        confirmed=meta.confirmed,
        heartbeat=terms.heartbeat,
        idle_timeout=terms.idle_timeout,
        lifetime=terms.lifetime,
        window_messages=terms.window_messages,
        window_bytes=terms.window_bytes,
        max_payload=terms.max_payload,
        next_seq=positions.next_seq,
        acked=positions.acked,
        consumed=positions.consumed,
        unacked=positions.unacked,
        rotation_salt=meta.rotation_salt,
    )


def to_meta(entry: _Entry) -> SessionMeta:
    snap = entry.core.server_snapshot()
    return SessionMeta(
        session_id=snap.session_id,
        identity=snap.identity,
        credential_digest=snap.credential_digest,
        previous_digest=snap.previous_digest,
        retired=snap.retired,
        confirmed=snap.confirmed,
        terms=Terms(
            snap.heartbeat,
            snap.idle_timeout,
            snap.lifetime,
            snap.window_messages,
            snap.window_bytes,
            snap.max_payload,
        ),
        data=dict(entry.session.data),
        rotation_salt=snap.rotation_salt,
    )


class Durability:
    """The write-through path of one :class:`~sessiond.server.Server` to a store."""

    def __init__(self, server: Server, store: RedisStore) -> None:
        self.server = server
        self.store = store
        store.on_fenced = self._fenced
        store.on_release_request = self._release_requested
        store.on_lease_lost = self._lease_lost
        self._stored: dict[_Entry, _Stored] = {}
        self._staged: list[tuple[_Entry, ServerProtocol, bytes]] = []
        self._before: list[Callable[[], Awaitable[Any]]] = []  # metadata, before appends
        self._after: list[Callable[[], Awaitable[Any]]] = []  # releases, ends, TTLs
        self._closes: list[asyncio.Transport] = []  # half-closed by their peers
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = server.loop.create_task(self._write_forever())
        self._refresher = server.loop.create_task(self._refresh_forever())
        self.refresh_every = REFRESH_EVERY
        # When the last commit failed (None: it did not), until Redis answers again.
        self._failed: float | None = None
        #: Sessions ended here whose end is not known to be stored (its commit or its
        #: own round trip failed): session ID -> (epoch, end code, until when it is
        #: kept, time.monotonic()). Retried with each refresh, and at once when the
        #: session is asked for (a resume here, a release request from elsewhere), so
        #: that no process resumes it while Redis still says it is live.
        self._ending: dict[bytes, tuple[int, CloseCode, float]] = {}

    @property
    def accepting(self) -> bool:
        """False while the store is unavailable: HELLOs are refused (typed, retryable).

        After a failed commit, until the next commit succeeds or the lease is renewed
        (a commit that failed can leave no session to commit again)."""
        failed = self._failed
        if failed is not None and self.store.lease_renewed > failed:
            self._failed = failed = None
        return self.store.healthy and failed is None

    # ------------------------------------------------------------- hot path

    def flush(self, dirty: list[_Entry]) -> None:
        """Stage every dirty session's output and append its state (one loop tick)."""
        process = self.server.process
        for entry in dirty:
            entry.dirty = False
            protocol = entry.protocol
            if protocol is not None:
                self.stage(entry, protocol)
            process(entry, False)

    def stage(self, entry: _Entry, protocol: ServerProtocol) -> None:
        """Take *protocol*'s output now, append what it carries, write it after commit."""
        conn = protocol.conn
        if conn is None:
            return
        # A transport above its high water mark keeps its output in the core (issue 12's
        # backpressure); the state is stored anyway, the bytes go once it drains.
        data = b"" if protocol.write_paused and not conn.closed else conn.data_to_send()
        stored = self._stored.get(entry)
        if stored is not None:
            sent, acked, _, consumed = entry.core.sequence_numbers
            if sent > stored.sent or consumed > stored.consumed:
                unacked = entry.core.unacked_messages()
                payloads = unacked[stored.sent - acked :] if sent > stored.sent else []
                sid = entry.core.id or b""
                session = entry.session
                marker = session.marker
                mark = marker(len(session.unsent)) if marker is not None else None
                self.store.append(
                    sid, stored.epoch, stored.sent + 1, payloads, consumed, acked, mark
                )
                stored.mark = later_mark(stored.mark, mark)
                stored.sent, stored.consumed = sent, consumed
                used = entry.session.touched_data()
                if used is not None:  # written after the entry, in the same round trip
                    packed = pack(used)
                    if packed != stored.data:
                        stored.data = packed
                        self.store.put_data(sid, stored.epoch, packed, self.attached_ttl(entry))
        if data or conn.closed:
            self._staged.append((entry, protocol, data))
            self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._staged or self._before or self._after or self._closes or self.store.pending:
                try:
                    await self._write_batch()
                except Exception:  # a bug: never leave the sessions without a writer
                    log.exception("session store writer failed")
            self._idle.set()

    async def _write_batch(self) -> None:
        # Everything of this moment goes in this batch: a new session's creation (in
        # before) always precedes its first append (NOMKSTREAM would refuse it).
        staged, self._staged = self._staged, []
        before, self._before = self._before, []
        after, self._after = self._after, []
        closes, self._closes = self._closes, []
        appends = self.store.take()
        stats = self.server.stats
        try:
            for operation in before:
                await operation()
            started = time.perf_counter()
            await self.store.commit(appends)
            stats.store_seconds.observe(time.perf_counter() - started)
            self._failed = None
        except StoreError as exc:
            stats.store_error("commit")
            self._failed = time.monotonic()
            log.error("session store write failed: %s; dropping the batch's sessions", exc)
            for entry, protocol, _ in staged:
                if protocol.entry is entry:
                    self._drop(entry, CloseCode.GOING_AWAY)
                else:
                    protocol.abort_unwritten()  # a transport taken over this batch
            # And every session with an entry in the batch, output or not: an entry with
            # only a consumed position (its ACK waits for the ACK timer) is not staged,
            # and the ACK, taken later, would acknowledge what Redis may not have.
            find = self.server.sessions.find
            for sid in dict.fromkeys(appends.owners):
                held = find(sid) if sid is not None else None
                if held is not None and held in self._stored:
                    self._drop(held, CloseCode.GOING_AWAY)
            self._close_all(closes)
            return
        for entry, protocol, data in staged:
            stored = self._stored.get(entry)
            if stored is not None and stored.fenced:
                continue  # dropped: its CLOSE is written, its unstored output never
            transport = protocol.transport
            if transport is None or transport.is_closing():
                # Reset meanwhile (connection_lost follows): nothing to write to, and
                # uvloop would raise RuntimeError on the closed handle, ending the batch
                # before the other sessions' output and the after-operations.
                continue
            try:
                protocol.write_out(data)
            except OSError:  # reset meanwhile: connection_lost follows
                protocol.abort_unwritten()
        self._close_all(closes)
        for operation in after:
            try:
                await operation()
            except StoreError as exc:
                log.warning("session store: %s", exc)

    def close_when_written(self, transport: asyncio.Transport) -> None:
        """Close *transport*, whose peer half-closed it, once the output staged for it
        so far (in a batch being committed, or by this loop tick's flush) is written.

        Call it with ``call_soon`` after the transport's flush: it then runs after the
        tick's flush, and the writer takes both into one batch, writes before closes."""
        self._closes.append(transport)
        self._kick()

    @staticmethod
    def _close_all(transports: list[asyncio.Transport]) -> None:
        for transport in transports:
            transport.close()  # what is buffered goes first; then connection_lost

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait (at most *timeout*) until everything staged so far is stored and written.

        At once when the writer has ended (:meth:`close`: a ``Server.close()`` called
        again after one that was cancelled): nothing would ever be written."""
        if self._writer.done():
            return
        self._kick()
        await asyncio.sleep(0)
        # Not asyncio.wait_for: on Python 3.11 it returns when the task is cancelled as
        # the writer goes idle (sessiond/tasks.py), and a Server.close() cancelled here
        # went on as if it had not been.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    def attached_ttl(self, entry: _Entry) -> float:
        """An attached session's keys expire this long after its owner stops renewing
        them (a crash): its lifetime once the lease is gone, as if it had detached."""
        return self._attached_ttl(entry.core.server_snapshot().lifetime)

    def _attached_ttl(self, lifetime: float) -> float:
        return lifetime + self.store.lease_ttl + 2 * self.refresh_every

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_every)
            self.refresh()

    def refresh(self) -> None:
        """Renew the TTL of every attached session this process holds (with the next
        commit: one pipelined round trip), and store again the ends not yet stored."""
        for entry, stored in self._stored.items():
            if entry.protocol is not None and not stored.fenced:
                self.store.refresh(entry.core.id or b"", self.attached_ttl(entry))
        now = time.monotonic()
        for sid, (_, _, until) in list(self._ending.items()):
            if now > until:  # its keys have expired by now: nothing left to end
                del self._ending[sid]
            else:
                self._end_later(sid)
        if self.store.pending or self._after:
            self._kick()

    # ------------------------------------------------------- session events

    def created(self, entry: _Entry) -> None:
        """A new session: stored (epoch 1) before its WELCOME leaves."""
        meta = to_meta(entry)
        self._stored[entry] = _Stored(1, 0, 0, pack(meta.data))
        self._before.append(lambda: self.store.create(meta))
        self.store.refresh(entry.core.id or b"", self.attached_ttl(entry))
        self._kick()

    def resumed(self, entry: _Entry) -> None:
        """A resume rotated the credential: stored before the WELCOME carrying it leaves;
        the keys get an attached session's TTL (renewed by :meth:`refresh`)."""
        stored = self._stored.get(entry)
        if stored is None:
            return
        claimed, stored.claimed = stored.claimed, None
        if claimed is not None and claimed == credential_state(entry.core.server_snapshot()):
            # The claim stored this resume's credential (and its keys' TTL): the WELCOME
            # may leave now. The terms the HELLO renegotiated are not stored: every
            # resume renegotiates them, and the next metadata write carries them.
            return
        meta, sid, epoch = to_meta(entry), entry.core.id or b"", stored.epoch
        ttl = self.attached_ttl(entry)
        self._before.append(lambda: self.store.save(sid, epoch, meta, ttl=ttl))
        self._kick()

    def detached(self, entry: _Entry) -> None:
        """The transport is gone: the keys expire with the session unless it comes back."""
        stored = self._stored.get(entry)
        if stored is None or stored.fenced:
            return
        meta, sid, epoch = to_meta(entry), entry.core.id or b"", stored.epoch
        ttl = meta.terms.lifetime + self.store.lease_ttl
        # With the next commit (someone else holding it by then: its next append drops it).
        self.store.save_later(sid, epoch, meta, ttl)
        self._kick()

    def ended(self, entry: _Entry, code: CloseCode) -> None:
        """The session ended for good: the store answers later resumes with *code*."""
        stored = self._stored.pop(entry, None)
        if stored is None or stored.fenced:
            return
        sid = entry.core.id or b""
        self._ending[sid] = (stored.epoch, code, time.monotonic() + self.attached_ttl(entry))
        self._end_later(sid)
        self._kick()

    def _end_later(self, sid: bytes) -> None:
        self._after.append(lambda: self._end(sid))

    async def _end(self, sid: bytes) -> None:
        """Store the end of *sid* (raises StoreError); known stored, it is forgotten."""
        ending = self._ending.get(sid)
        if ending is None:  # stored meanwhile
            return
        epoch, code, _ = ending
        await self.store.end(sid, epoch, code)  # fenced out: someone else has it
        self._ending.pop(sid, None)

    # -------------------------------------------------------------- resume

    async def resume_elsewhere(
        self, protocol: ServerProtocol, conn: Connection, identity: Any, sid: bytes
    ) -> None:
        """A RESUME of a session this process does not hold: claim it from the store."""
        server = self.server
        hello = conn.hello
        credential = hello.resume.credential if hello and hello.resume else b""
        try:
            entry = await self._claim(sid, credential, identity)
        except Forged as forged:
            if conn.state is ConnectionState.HELLO_RECEIVED:
                decoy = CoreSession.restore_server(to_snapshot(forged.loaded), server.config.params)
                server.answer_hello(protocol, conn, identity, decoy=decoy)
                protocol.flush()
            return
        except Gone as gone:
            if conn.state is ConnectionState.HELLO_RECEIVED:
                server.answer_hello(protocol, conn, identity, gone.code)
                protocol.flush()
            return
        except Closing:
            if conn.state is ConnectionState.HELLO_RECEIVED:
                server.answer_hello(protocol, conn, identity)  # GOING_AWAY, retryable
                protocol.flush()
            return
        except (Fenced, StoreUnavailable, TimeoutError) as exc:
            server.stats.store_error("resume")
            log.warning("resume of %s refused: %s", sid.hex()[:8], exc)
            if conn.state is ConnectionState.HELLO_RECEIVED:
                conn.reject(
                    server.loop.time(), CloseCode.GOING_AWAY, "session busy", STORE_RETRY_AFTER
                )
                protocol.flush()
            return
        if conn.state is ConnectionState.HELLO_RECEIVED and not protocol.closed:
            server.answer_hello(protocol, conn, identity)
            protocol.flush()
        else:
            self.detached(entry)  # the client left meanwhile: it may come back here

    async def _claim(self, sid: bytes, credential: bytes, identity: Any) -> _Entry:
        store = self.store
        ending = self._ending.get(sid)
        if ending is not None:  # ended here, not yet stored: stored now, or "busy"
            await self._end(sid)
            raise Gone(ending[1])
        # Round trip 1: the credential checked against every one the session had, and
        # its live owner, if any, asked to release it.
        found = await store.resume(sid, digest(credential))
        if found is None:
            # A credential this session never had: answered by a copy of the session,
            # without disturbing the owner (a forger must not make the owner let go).
            raise Forged(await store.load(sid))
        rotation = plan_rotation(found, credential, identity)  # while the owner lets go
        # A live owner answers (round trip 2, its own: the release with its next commit);
        # a killed one lets go when its lease ends.
        if not await store.released(sid, found, RELEASE_TIMEOUT):
            raise TimeoutError(f"owner {found.owner} did not release it")
        existing = self.server.sessions.find(sid)
        if existing is not None:  # a concurrent resume here claimed it meanwhile
            return existing
        server = self.server
        if server.closing:
            # A resume that went on past Server.close()'s cancel (lost in redis-py's
            # wait_for: sessiond/tasks.py): claimed now, the session would belong to a
            # server on its way out. Left with its owner, it is resumed elsewhere.
            raise Closing
        # Round trip 3. A release keeps the epoch: claimed from the one found, and read
        # again (with what the owner stored before letting go) in the claim's own round
        # trip, with the rotated credential and an attached session's TTL.
        claiming = asyncio.ensure_future(
            store.claim_loaded(sid, found.epoch, self._attached_ttl(found.lifetime), rotation)
        )
        # Not given up when cancelled (Server.close()): once sent, Redis may make this
        # process the owner whatever happens here. Held, the session is released by
        # close(), which ends its resumes before it releases the sessions.
        cancelled = await _through_cancels(claiming)
        if cancelled and claiming.exception() is not None:
            raise asyncio.CancelledError
        epoch, loaded = claiming.result()
        existing = server.sessions.find(sid)
        if existing is not None:  # a concurrent resume here got it first
            if cancelled:
                raise asyncio.CancelledError
            return existing
        core = CoreSession.restore_server(
            to_snapshot(loaded), server.config.params, server.loop.time()
        )
        entry = server.adopt(core, loaded.meta.data)
        positions: Positions = loaded.positions
        # Read by the handler, which adopt() started as a task: it has not run yet.
        entry.session.recovered_mark = positions.mark
        stored = _Stored(epoch, positions.next_seq - 1, positions.consumed, pack(loaded.meta.data))
        stored.claimed = credential_state(loaded.meta)
        stored.mark = positions.mark
        self._stored[entry] = stored
        if cancelled:
            raise asyncio.CancelledError
        return entry

    # ------------------------------------------------- losing the session

    def _release_requested(self, sid: bytes) -> None:
        entry = self.server.sessions.find(sid)
        if entry is None:
            # Not held here, yet Redis named this process the owner: it let the session
            # go and its release, or its last writes, did not land (a commit failed, or
            # the lease ran out). Unanswered, every resume elsewhere would be refused as
            # busy for as long as this process renews its lease.
            if sid in self._ending:
                # It ended here: its end is stored first (the asker, unanswered, refuses
                # once; the client's next resume gets the end code).
                self.store.decline(sid)
                self._end_later(sid)
                self._kick()
            elif self.store.disown_later(sid):
                # Given up: the asker claims it as from a dead owner (crash recovery).
                self._kick()
            return
        stored = self._stored.get(entry)
        if stored is None:
            self.store.decline(sid)
            return
        server = self.server
        now = server.loop.time()
        protocol = entry.protocol
        if protocol is not None and protocol.conn is not None and not protocol.conn.closed:
            protocol.conn.close(now, CloseCode.TAKEN_OVER, "resumed on another process")
            self.stage(entry, protocol)
        self._release(entry, stored)

    def _release(self, entry: _Entry, stored: _Stored) -> None:
        """Hand the session over after its last append; drop it here."""
        meta, sid, epoch = to_meta(entry), entry.core.id or b"", stored.epoch
        ttl = meta.terms.lifetime + self.store.lease_ttl
        # One instant for both directions: a handler that went on while detached (no
        # appends then) consumed input and answered it; releasing its replies with the
        # consumed position of the last append would have them asked for, and answered,
        # again by the new owner.
        # A handler waiting for window (none opens here now) has taken input whose replies
        # it has yet to queue: they go with the session, past the window (the new owner
        # replays within the window), else that input would be consumed and never answered.
        unsent = entry.session.unsent
        limit = entry.core.max_payload
        if any(len(payload) > limit for payload in unsent):  # the core would refuse it
            unsent = unsent[: next(i for i, p in enumerate(unsent) if len(p) > limit)]
        marker = entry.session.marker
        mark = marker(len(entry.session.unsent) - len(unsent)) if marker is not None else None
        mark = later_mark(stored.mark, mark)  # what the stream holds, too
        # As if they entered the core now: each settles one message handed over (the
        # input it answers). Messages handed over and not settled otherwise, and those
        # taken but not handed over, stay unconsumed: the client replays them there.
        entry.session.settle_unsent(len(unsent))
        snap = entry.core.server_snapshot()
        positions = Positions(
            snap.next_seq + len(unsent),
            snap.acked,
            snap.consumed,
            snap.unacked + unsent,
            mark,
        )
        self._stored.pop(entry, None)
        # With the next commit, after the session's last append: no round trip of its own.
        self.store.release_later(sid, epoch, meta, positions, ttl)
        self._kick()
        self.server.let_go(entry)

    def _fenced(self, sid: bytes) -> None:
        entry = self.server.sessions.find(sid)
        self.server.stats.store_error("fenced")
        if entry is not None:
            log.warning("session %s: fenced out by another owner; dropped here", sid.hex()[:8])
            self._drop(entry, CloseCode.TAKEN_OVER)

    def _drop(self, entry: _Entry, code: CloseCode) -> None:
        stored = self._stored.pop(entry, None)
        if stored is not None:
            stored.fenced = True
        self.store.forget(entry.core.id or b"")
        protocol = entry.protocol
        conn = protocol.conn if protocol is not None else None
        self.server.let_go(entry)
        if protocol is not None and conn is not None and not conn.closed:
            conn.data_to_send()  # not stored: never written
            conn.close(self.server.loop.time(), code, "session moved", STORE_RETRY_AFTER)
            try:
                protocol.write_out(conn.data_to_send())  # the CLOSE frame only
            except OSError:
                protocol.abort_unwritten()

    def _lease_lost(self) -> None:
        self.server.stats.store_error("lease")
        for entry in list(self.server.sessions.values()):
            self._drop(entry, CloseCode.GOING_AWAY)

    # ------------------------------------------------------------- shutdown

    async def release_all(self, retry_after: float) -> None:
        """Shutdown: close every transport with GOING_AWAY, store the last output and
        positions, and release every session for another process to resume."""
        now = self.server.loop.time()
        for entry in list(self.server.sessions.values()):
            protocol = entry.protocol
            if protocol is not None and protocol.conn is not None and not protocol.conn.closed:
                protocol.conn.close(now, CloseCode.GOING_AWAY, "server restarting", retry_after)
                self.stage(entry, protocol)
        for entry in list(self.server.sessions.values()):
            stored = self._stored.get(entry)
            if stored is not None and not stored.fenced:
                self._release(entry, stored)
        await self.settle()

    async def close(self) -> None:
        # Cancelled again while running: a cancel can be lost (sessiond/tasks.py).
        running = await end((self._writer, self._refresher), CLOSE_TIMEOUT)
        # Bounded: a redis-py connection whose command was cancelled mid-flight can keep
        # its lock, and the lease's DELETE would then wait for ever (the lease expires by
        # its TTL anyway). Seen as a worker that never exited after a SIGHUP roll.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.store.close()
        except TimeoutError:
            log.warning("session store: disconnect took over %.1f s; abandoned", CLOSE_TIMEOUT)
        if running:  # stuck in a command: the store's disconnect above ends it (as the bus's)
            await end(running, CLOSE_TIMEOUT)


async def _through_cancels(future: asyncio.Future[Any]) -> bool:
    """Wait until *future* is done, whatever cancels arrive meanwhile (it is not
    cancelled); True if one did: the caller raises ``CancelledError`` once it has
    dealt with the result."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled
