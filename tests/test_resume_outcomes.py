"""Why a resume fails: the WELCOME ``reason`` of a refused resume (protocol.md §4.2, §4.3,
§12.1), whichever way the session ended, and whether the daemon still holds it or only
remembers its end code.

Found by writing a second client from the spec alone (issue 15, D1 and D2): the server
answered ``reason: 0`` (NORMAL) after its client's own CLOSE NORMAL, and
``CREDENTIAL_REUSED`` to a later resume of a session a theft had ended.
"""

from __future__ import annotations

import pytest
from sessiond_client.protocol import (
    WELCOME_REASONS,
    CloseCode,
    Connection,
    Params,
    Session,
    SessionLostEvent,
    SessionState,
    welcome_reason,
)
from sessiond_client.protocol.frames import Welcome

from .coreclient import CoreClient
from .test_faults import CLIENT_PARAMS, echo_daemon
from .test_session import connected, decode, present, resume_hello, stolen, welcome_of
from .test_spec import SPEC


def refused_reason(held: bool, ending: str) -> int | None:
    """End a session as *ending* says, then resume it with the credential that was current
    when it ended; return the WELCOME ``reason``."""
    pair = connected()
    server = pair.server
    if ending == "theft":
        sid, old, received = stolen(pair)
        pair.cut()
        pair.connect()
        pair.pump()  # a confirmed rotation: the old credential is now retired
        sid, current, received = stolen(pair)
        _, _, frames = present(pair, resume_hello(sid, old, received))
        assert welcome_of(frames).reason == CloseCode.CREDENTIAL_REUSED  # the thief is told
    else:
        sid, current, received = stolen(pair)
        if ending == "client-normal":
            pair.client.close(pair.clock.now)
            pair.pump()
        elif ending == "server-revoked":
            server.close(pair.clock.now, CloseCode.SESSION_REVOKED, "revoked by an operator")
            pair.pump()
        elif ending == "expired":
            pair.cut()
            pair.tick(Params().detached_lifetime + 1.0)
        elif ending == "slow-consumer":
            server.close(pair.clock.now, CloseCode.SLOW_CONSUMER, "")
            pair.pump()
        else:
            raise AssertionError(ending)
    assert server.state is SessionState.ENDED
    if held:
        # The daemon still holds the ended session object (it may, briefly).
        now = pair.clock.now
        conn = Connection.server(pair.registry.params, now)
        conn.receive_data(resume_hello(sid, current, received).encode(), now)
        fresh = conn.accept(now, "alice", server)
        assert fresh is not server
        return welcome_of(decode(conn.data_to_send())).reason
    _, other, frames = present(pair, resume_hello(sid, current, received))
    assert other is not None and other is not server
    return welcome_of(frames).reason


ENDINGS = {
    # D1: the client's own CLOSE NORMAL; §4.2 check 1 and §12.1 name SESSION_REVOKED.
    "client-normal": CloseCode.SESSION_REVOKED,
    # D2: a theft ended it; the next resume meets check 1, not check 2.
    "theft": CloseCode.SESSION_REVOKED,
    "server-revoked": CloseCode.SESSION_REVOKED,
    "expired": CloseCode.SESSION_EXPIRED,
    # §15.6.2: a subscriber ended as a slow consumer learns it on its next resume.
    "slow-consumer": CloseCode.SLOW_CONSUMER,
}


@pytest.mark.parametrize("held", [False, True], ids=["forgotten", "held"])
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_resume_of_an_ended_session_gets_a_welcome_reason(ending: str, held: bool) -> None:
    reason = refused_reason(held, ending)
    assert reason == ENDINGS[ending]
    assert reason in WELCOME_REASONS


@pytest.mark.parametrize("code", list(CloseCode))
def test_every_ending_maps_to_an_allowed_welcome_reason(code: CloseCode) -> None:
    reason = welcome_reason(code)
    assert reason in WELCOME_REASONS
    kept = {CloseCode.UNKNOWN_SESSION, CloseCode.SESSION_EXPIRED, CloseCode.SLOW_CONSUMER}
    assert reason is (code if code in kept else CloseCode.SESSION_REVOKED)


def test_welcome_reasons_are_the_list_of_protocol_md() -> None:
    text = SPEC.read_text()
    section = text.split("12.1. **WELCOME reasons.**")[1].split("[M-12.1-1]")[0]
    listed = {CloseCode[name] for name in CloseCode.__members__ if f"`{name}`" in section}
    assert listed == set(WELCOME_REASONS)


def test_unknown_session_stays_unknown() -> None:
    pair = connected()
    _, current, received = stolen(pair)
    _, session, frames = present(pair, resume_hello(b"\x07" * 16, current, received))
    assert isinstance(session, Session)
    assert welcome_of(frames).reason == CloseCode.UNKNOWN_SESSION


def test_a_client_accepts_any_reason_from_a_v1_server() -> None:
    """§12.1: a client treats a reason outside the list as the old session lost."""
    pair = connected()
    pair.cut()
    pair.connect()
    # A v1 server answered reason 0 (NORMAL) here: feed the client such a WELCOME.
    welcome = Welcome(
        version=1,
        session_id=b"\x09" * 16,
        credential=b"\x01" * 32,
        resumed=False,
        received=0,
        heartbeat_ms=15000,
        idle_timeout_ms=45000,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=120000,
        reason=0,
    )
    assert pair.client_conn is not None
    pair.client_conn.receive_data(welcome.encode(), pair.clock.now)
    lost = [e for e in pair.client.events() if isinstance(e, SessionLostEvent)]
    assert [e.reason for e in lost] == [CloseCode.NORMAL]
    assert pair.client.state is SessionState.ATTACHED
    assert pair.client.id == b"\x09" * 16


async def test_the_daemon_answers_a_resume_of_a_closed_session_with_session_revoked() -> None:
    """D1 as the second client met it, over a real socket: a copy of a client's state
    resumes after that client closed the session with CLOSE NORMAL."""
    async with echo_daemon() as server:
        host, port = server.addresses[0]
        client = CoreClient(host, port, CLIENT_PARAMS)
        assert await client.connect()
        await client.kill()  # detached: its state can be copied
        copy = client.clone()
        assert await client.connect()
        await client.close()  # CLOSE NORMAL: the session ends for good
        assert await copy.connect()  # a new session ...
        lost = [e for e in copy.events if isinstance(e, SessionLostEvent)]
        assert [e.reason for e in lost] == [CloseCode.SESSION_REVOKED]  # ... saying why
        await copy.close()
