"""Every Redis key name, Lua script and encoding of the session store, in one place.

Layout (``P`` is the key prefix, ``[store] key_prefix``; ``{<sid>}`` is the Redis
Cluster hash tag, the session ID in hex, so one session's keys share a slot)::

    P{<sid>}:m        hash    the session's metadata (fields below)
    P{<sid>}:o        stream  one entry per session per loop iteration
    Pnode:<node>      string  a process's lease (PX TTL, renewed every second)
    Prelease:<node>   channel requests to a live owner to release a session
    Preleased:<node>  channel the owner's answer to the node that asked

Fencing: a stream entry ID is ``<epoch>-<counter>``. A claim moves the epoch on
and appends the marker ``<epoch+1>-0`` in one script, after which Redis itself
refuses every ``XADD`` of the old owner (its IDs are now smaller than the top
item; trimming never lowers a stream's last ID). Metadata writes after creation
go through :data:`FENCED_HSET` and friends, which compare the epoch first.
"""

from __future__ import annotations

from typing import Any

import msgpack

# ------------------------------------------------------------------ key names


def meta_key(prefix: str, sid: bytes) -> str:
    return f"{prefix}{{{sid.hex()}}}:m"


def stream_key(prefix: str, sid: bytes) -> str:
    return f"{prefix}{{{sid.hex()}}}:o"


def lease_key(prefix: str, node: str) -> str:
    return f"{prefix}node:{node}"


def release_channel(prefix: str, node: str) -> str:
    return f"{prefix}release:{node}"


def released_channel(prefix: str, node: str) -> str:
    return f"{prefix}released:{node}"


def later_mark(mark: str | None, other: str | None) -> str | None:
    """The greater of two stream entry IDs (an app's marks, ``MARK``); None is smallest."""
    if other is None:
        return mark
    if mark is None:
        return other
    return max(mark, other, key=lambda m: tuple(int(part) for part in m.split("-")))


def entry_id(epoch: int, counter: int) -> str:
    return f"{epoch}-{counter}"


def parse_entry_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    epoch, _, counter = text.partition("-")
    return int(epoch), int(counter)


# ------------------------------------------------------------ metadata fields

EPOCH = "e"  # current owner's epoch (the fencing token)
OWNER = "o"  # node ID of the owner; "" once released
IDENTITY = "i"  # msgpack of the authenticated identity
DIGEST = "d"  # SHA-256 of the current resume credential
PREVIOUS = "pd"  # digest of the credential presented to get the current one
RETIRED = "r"  # rotated-out digests, concatenated (32 bytes each)
SALT = "rs"  # the rotation salt of an unconfirmed credential (protocol.md §10.3)
CONFIRMED = "cf"  # b"1" once the client proved it holds the current credential
TERMS = "t"  # msgpack of the negotiated terms
DATA = "data"  # msgpack of session.data
POSITIONS = "pos"  # msgpack [next_seq, acked, consumed] written at claim and release
ENDED = "x"  # the end code, once the session ended

# --------------------------------------------------------------- stream fields

FIRST = "s"  # sequence number of the entry's first payload
PAYLOADS = "p"  # msgpack array of payloads
CONSUMED = "c"  # inbound position consumed by the handler so far
ACKED = "a"  # outbound position the client acknowledged so far
MARK = "k"  # the app's stream entry as of the payloads (Session.marker), if it has one
CLAIMED = "claim"  # marker entry <epoch>-0: the node that claimed

DIGEST_SIZE = 32


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


def join_digests(digests: tuple[bytes, ...]) -> bytes:
    return b"".join(digests)


def split_digests(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE))


# -------------------------------------------------------------------- scripts
# Scripts run on the resume, claim, release and end paths only, never per message.

#: Lua: both keys of a session (KEYS[1], KEYS[2]) expire in ``ttl`` ms, or never (0).
_EXPIRE_BOTH = """if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
"""

#: KEYS: meta, stream. ARGV: expected epoch, claiming node; optionally a ttl in ms
#: (0: none), the credential digest the claimer decided its rotation from, "1" if
#: it was decided from the previous credential (then only while the current one is
#: unconfirmed) else "", and the rotation's field, value pairs (protocol.md §10.4).
#: Returns the new epoch; 0 if the epoch moved meanwhile; -1 if the session is
#: unknown (never existed or expired); -2 if it ended. The rotation is written only
#: if the credential is still the one it was decided from (else the claimer's core
#: rotates it again from what the claim reads, and stores that itself).
_CLAIM_STEPS = (
    """
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return -1 end
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then return -2 end
if e ~= ARGV[1] then return 0 end
local n = tonumber(e) + 1
redis.call('XADD', KEYS[2], n .. '-0', 'claim', ARGV[2])
redis.call('HSET', KEYS[1], 'e', tostring(n), 'o', ARGV[2])
if #ARGV > 5 and redis.call('HGET', KEYS[1], 'd') == ARGV[4]
    and (ARGV[5] == '' or (redis.call('HGET', KEYS[1], 'cf') or '') == '') then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
end
local ttl = tonumber(ARGV[3] or '0')
"""
    + _EXPIRE_BOTH
)
CLAIM = _CLAIM_STEPS + "return n\n"

#: :data:`CLAIM`, then the session as the claim left it: returns what CLAIM returns
#: when it fails, else ``{epoch, the meta hash as HGETALL gives it, stream entries as
#: XRANGE gives them}``. The entries are left out ({}) when the session had been
#: released (no owner before the claim, and positions): a release stores them and every
#: unacknowledged payload, and its owner appends nothing after it, so the stream
#: would repeat them (a move reads a whole window of payloads once, not twice).
CLAIM_LOAD = (
    "local released = redis.call('HGET', KEYS[1], 'o') == ''"
    + " and redis.call('HEXISTS', KEYS[1], 'pos') == 1\n"
    + _CLAIM_STEPS
    + """local entries = {}
if not released then entries = redis.call('XRANGE', KEYS[2], '-', '+') end
return {n, redis.call('HGETALL', KEYS[1]), entries}
"""
)

#: KEYS: meta. ARGV: SHA-256 of the presented credential, the asking node, the
#: release channel without its node (``Prelease:``), the request message.
#: The first step of a resume of a session held elsewhere, in one round trip: reads
#: what the claim is decided from and, if the credential is one the session ever
#: had (current, previous or retired: theft is the core's to judge after the claim),
#: asks its owner, if another node, to release it (PUBLISH, from the script).
#: Returns ``{-1}`` unknown; ``{-2, code}`` ended; ``{0}`` a credential it never had
#: (nobody asked: a forger must not make the owner let go); else ``{1, epoch, owner,
#: listeners (-1: nobody asked), d, pd, r, cf, rs, i, t}``. Digests, not
#: credentials, are compared here: timing can tell no more than a digest's prefix;
#: the core compares again, in constant time, after the claim.
RESUME = """
local f = redis.call('HMGET', KEYS[1], 'e', 'x', 'o', 'd', 'pd', 'r', 'cf', 'rs', 'i', 't')
if not f[1] then return {-1} end
if f[2] then return {-2, f[2]} end
local p = ARGV[1]
if #p ~= 32 then return {0} end  -- not a digest: never matches an empty field
local known = p == f[4] or p == f[5]
local retired = f[6] or ''
local i = 1
while not known and i + 31 <= #retired do
  known = p == string.sub(retired, i, i + 31)
  i = i + 32
end
if not known then return {0} end
local owner = f[3] or ''
local listeners = -1
if owner ~= '' and owner ~= ARGV[2] then
  listeners = redis.call('PUBLISH', ARGV[3] .. owner, ARGV[4])
end
return {1, f[1], owner, listeners, f[4] or '', f[5] or '', retired, f[7] or '', f[8] or '',
  f[9] or '', f[10] or ''}
"""

#: KEYS: meta, stream. ARGV: epoch, ttl in ms (0: none), then field, value pairs.
#: Writes the fields if the epoch is still ours, then sets (or clears) the TTL of
#: both keys. Returns 1, or 0 when fenced out.
FENCED_HSET = (
    """
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
local ttl = tonumber(ARGV[2])
"""
    + _EXPIRE_BOTH
    + "return 1\n"
)

#: KEYS: meta, stream. ARGV: epoch, ttl in ms, channel ("": nobody asked), message,
#: then field, value pairs. FENCED_HSET, then (if the epoch was ours) PUBLISH
#: *message* on *channel*: a release and its answer to the node that asked for it,
#: queued with the owner's next pipelined commit (after the session's last append);
#: no answer when fenced out (the asker must not take a session someone else holds).
RELEASE = """
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

#: KEYS: meta. ARGV: this node, channel, message. The answer of a process asked to
#: release a session it does not hold (it let it go, but its release, or its last
#: writes, did not land: a commit failed): if Redis still names this node the owner,
#: it has given the session up (it holds nothing of it, and writes nothing more for
#: it), so it PUBLISHes *message* on *channel*, and the asker claims the session as
#: after a dead owner: the owner is left as it is, so the claim reads the stream
#: (crash recovery), not positions of an earlier release. Also answered when nobody
#: owns it (released: the claim reads the release; gone: the claim says so). Not when
#: another node owns it: the asker must not take a session someone else holds; nor
#: once it ended (the asker's claim could not tell the end code; its next RESUME does).
#: Queued with the next pipelined commit (after every write of this node queued
#: before it). Returns 1 when it answered, else 0.
DISOWN = """
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then return 0 end
local o = redis.call('HGET', KEYS[1], 'o')
if o and o ~= '' and o ~= ARGV[1] then return 0 end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

#: KEYS: meta, stream. ARGV: epoch, end code, ttl in ms of the remembered end.
#: Replaces the session by its end code; returns 1, or 0 when fenced out. The
#: stream gets the marker of the next epoch and is emptied, not deleted: its last
#: ID fences every writer until it expires (and the hot path's XADD uses
#: NOMKSTREAM, so an expired stream is never re-created). Run again (an end whose
#: reply was lost is retried), it changes nothing and returns 1.
END = """
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then return 1 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', 'claim', '')
redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
redis.call('HSET', KEYS[1], 'x', ARGV[2], 'e', ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""
