"""The core's server-side snapshot: a session rebuilt in another process (from a
shared store) resumes with nothing lost and nothing repeated (protocol.md §4, §5)."""

from __future__ import annotations

import pytest
from sessiond_client.protocol import CloseCode, InvalidState, Role, Session, SessionResumed

from .pair import Pair


def test_a_restored_session_resumes_exactly_once_both_ways() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    for n in range(5):
        pair.client.send(b"up%d" % n, pair.clock.now)
        pair.server.send(b"down%d" % n, pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"up%d" % n for n in range(5)]  # consumed=5
    pair.client.send(b"up5", pair.clock.now)
    pair.client.send(b"up6", pair.clock.now)
    pair.pump()
    assert pair.take_client() == [b"down%d" % n for n in range(5)]
    # The server's process dies after storing its state; up5 and up6 were received
    # but not consumed, so the snapshot says consumed=5 and the client replays them.
    snapshot = pair.server.server_snapshot()
    assert snapshot.consumed == 5
    sid = pair.client.id
    assert sid is not None
    pair.cut()
    pair.registry.sessions[sid] = Session.restore_server(
        snapshot, pair.registry.params, pair.clock.now
    )
    pair.server.send(b"after", pair.clock.now)
    pair.connect()
    pair.pump()
    assert any(isinstance(e, SessionResumed) for e in pair.client_events)
    assert pair.take_server() == [b"up5", b"up6"]
    pair.pump()
    assert pair.take_client() == [b"after"]
    pair.client.send(b"up7", pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"up7"]


def test_restored_credential_rotation_and_theft_still_hold() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    first = pair.client.snapshot()
    assert first is not None
    pair.cut()
    pair.connect()  # rotates the credential
    pair.pump()
    sid = pair.client.id
    assert sid is not None
    restored = Session.restore_server(pair.server.server_snapshot(), pair.registry.params)
    pair.cut()
    pair.registry.sessions[sid] = restored
    thief = Pair(clock=pair.clock)
    thief.registry = pair.registry
    thief.client = Session.restore(first)  # holds the rotated-out credential
    thief.connect()
    thief.pump()
    assert restored.end_code is CloseCode.CREDENTIAL_REUSED


def test_only_a_server_session_has_a_server_snapshot() -> None:
    with pytest.raises(InvalidState):
        Session(Role.CLIENT).server_snapshot()


def test_a_restored_unconfirmed_rotation_answers_a_lost_welcome_with_the_same_credential() -> None:
    """protocol.md §10.3: the rotation salt travels in the snapshot, so a session restored
    while its current credential is unconfirmed answers the previous one idempotently."""
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.cut()
    pair.connect()
    pair.cut(to_server=1 << 20, to_client=0)  # HELLO arrives, WELCOME is lost
    sid = pair.client.id
    assert sid is not None
    snapshot = pair.server.server_snapshot()
    assert snapshot.rotation_salt is not None and not snapshot.confirmed
    pending = snapshot.credential_digest
    pair.registry.sessions[sid] = restored = Session.restore_server(snapshot, pair.registry.params)
    pair.connect()  # presents the previous credential again
    pair.pump()
    assert any(isinstance(e, SessionResumed) for e in pair.client_events)
    assert restored._credential_digest == pending  # the same credential, not a new one


def test_taken_but_unsettled_messages_are_neither_acknowledged_nor_stored() -> None:
    """take_unsettled/settle (a daemon with a store): an ACK and a snapshot cover what
    was settled only; a resume on the same core does not ask for the rest again, a
    restored core does (protocol.md §5.3)."""
    pair = Pair()
    pair.connect()
    pair.pump()
    for n in range(6):
        pair.client.send(b"up%d" % n, pair.clock.now)
    pair.pump()
    server = pair.server
    assert server.take_unsettled(pair.clock.now, 4) == [b"up%d" % n for n in range(4)]
    assert server.sequence_numbers[3] == 0  # taken is not consumed
    assert server.settle(pair.clock.now, 9) == 4  # never beyond what was taken
    assert server.settle(pair.clock.now, 1) == 0
    pair.tick(1.0)  # the coalesced ACK is due
    pair.pump()
    assert pair.client.sequence_numbers[1] == 4  # the client holds up4, up5 for replay
    assert server.take_unsettled(pair.clock.now) == [b"up4", b"up5"]
    assert server.settle(pair.clock.now, 1) == 1
    assert server.server_snapshot().consumed == 5
    # Resumed on the same core: up5 is held by the application, not asked for again.
    pair.cut()
    pair.connect()
    pair.pump()
    assert server.messages_waiting == 0
    assert server.settle(pair.clock.now, 1) == 1
    pair.tick(1.0)
    pair.pump()
    assert pair.client.sequence_numbers[1] == 6
    # Restored from a snapshot taken with up6 unsettled: the client replays up6.
    pair.client.send(b"up6", pair.clock.now)
    pair.pump()
    assert server.take_unsettled(pair.clock.now) == [b"up6"]
    snapshot = server.server_snapshot()
    sid = pair.client.id
    assert sid is not None and snapshot.consumed == 6
    pair.cut()
    pair.registry.sessions[sid] = Session.restore_server(
        snapshot, pair.registry.params, pair.clock.now
    )
    pair.connect()
    pair.pump()
    assert pair.take_server() == [b"up6"]
