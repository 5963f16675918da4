"""Every Redis key, entry encoding and script of the channels space (issue 17), in one
place (as sessiond/store/keys.py is for sessions).

Layout (``P`` is the store's key prefix; every key carries the ``{channels}`` hash
tag, so the scripts and MULTIs below stay in one Redis Cluster slot)::

    P{channels}:bus        stream  one entry per publish, join, leave or move
    P{channels}:retained   hash    channel -> msgpack [envelope, size]
    P{channels}:presence   hash    "channel\\ntag" -> the member's leave entry
    P{channels}:nodes      set     processes (store node IDs) that hold members

A bus entry has one field: ``e`` (a publish: msgpack ``[channel, envelope,
[retained envelope, size] | nil, clear]``) or ``p`` (presence: msgpack ``[op,
node, channel, tag, identity]``, op ``join``, ``leave`` or ``move``). The
presence hash keeps, for each member, the very ``leave`` entry its departure
appends, so that the clean-up of a dead process (:data:`CLEAN_UP`) needs no
decoding beyond the node. A process is alive while its lease key
(``Pnode:<node>``, sessiond/store/keys.py, renewed by the session store) exists.
"""

from __future__ import annotations

from typing import Any

import msgpack

#: Entries kept in the bus stream (approximately): a process whose reader fell
#: further behind than this (a long Redis outage) misses entries.
STREAM_LENGTH = 100_000

JOIN, LEAVE, MOVE = "join", "leave", "move"


def stream_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:bus"


def retained_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:retained"


def presence_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:presence"


def nodes_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:nodes"


def lease_key(prefix: str, node: str) -> str:
    """The session store's lease of *node* (the same name as store/keys.py's)."""
    return f"{prefix}node:{node}"


def presence_entry(op: str, node: str, channel: str, tag: str, identity: str | None) -> bytes:
    data: bytes = msgpack.packb([op, node, channel, tag, identity], use_bin_type=True)
    return data


def parse_presence(data: bytes) -> tuple[str, str, str, str, str | None]:
    op, node, channel, tag, *rest = msgpack.unpackb(data)
    return op, node, channel, tag, rest[0] if rest else None


def member_field(channel: str, tag: str) -> str:
    return f"{channel}\n{tag}"


def id_tuple(entry_id: str) -> tuple[int, int]:
    """A stream entry ID, comparable (``"ms-seq"`` -> ``(ms, seq)``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Scripts run per join, leave or move (a subscribe), and per dead process: never per
# message.

#: KEYS: presence, nodes, bus. ARGV: stream length, field, leave entry, node, then for a
#: join its join entry and its move entry. A join records the member (its leave entry
#: names this node) and appends its join, or its move when the member was already
#: present (a session that moved here: the others see neither a leave nor a join). A
#: leave removes the member and appends the leave only while the member is this
#: node's (so a member is left once, whoever removes it first). Returns 1 if it wrote.
PRESENCE = """
if ARGV[5] then
  local had = redis.call('HEXISTS', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[4])
  local entry = ARGV[5]
  if had == 1 then entry = ARGV[6] end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'p', entry)
  return 1
end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'p', ARGV[3])
  return 1
end
return 0
"""

#: KEYS: presence, nodes, bus. ARGV: stream length, then the dead nodes (whose lease
#: is gone: checked by the caller, since a lease key is in another slot). Every member
#: of a dead node is removed and its leave entry appended; atomic, so each member is
#: left exactly once however many processes clean up at once. Returns how many.
CLEAN_UP = """
local dead = {}
for i = 2, #ARGV do dead[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #all, 2 do
  local entry = cmsgpack.unpack(all[i + 1])
  if dead[entry[2]] then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'p', all[i + 1])
    removed = removed + 1
  end
end
for i = 2, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
return removed
"""


def presence_command(
    prefix: str, op: str, node: str, channel: str, tag: str, identity: str | None
) -> tuple[Any, ...]:
    """The EVAL of :data:`PRESENCE` for a join or leave of *tag* by *node*."""
    leave = presence_entry(LEAVE, node, channel, tag, identity)
    args: list[Any] = [STREAM_LENGTH, member_field(channel, tag), leave, node]
    if op == JOIN:
        args += [
            presence_entry(JOIN, node, channel, tag, identity),
            presence_entry(MOVE, node, channel, tag, identity),
        ]
    return (
        "EVAL",
        PRESENCE,
        3,
        presence_key(prefix),
        nodes_key(prefix),
        stream_key(prefix),
        *args,
    )
