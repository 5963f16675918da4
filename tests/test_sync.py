"""The blocking facade from plain threads: send, recv, poll, several threads, clean shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import sessiond_client
from sessiond_client import SessionLost, State

import sessiond
import sessiond.apps
from tests.threaded import daemon_thread


@pytest.fixture
def daemon() -> Iterator[str]:
    """An echo daemon on its own event loop thread; yields its tcp:// URL."""
    with daemon_thread(sessiond.apps.echo) as running:
        yield running.url


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sessiond-client"]


def test_send_recv_poll_and_close(daemon: str) -> None:
    with sessiond_client.connect_sync(daemon) as session:
        assert session.state is State.ACTIVE and session.id
        session.send(b"one")
        assert session.recv(timeout=5) == b"one"
        for i in range(10):
            session.send(f"m{i}".encode())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            got += session.poll()  # never blocks, as in a game's frame loop
            time.sleep(0.01)
        assert got == [f"m{i}".encode() for i in range(10)]
        assert session.poll() == []
        with pytest.raises(TimeoutError):
            session.recv(timeout=0.05)
    final: State = session.state
    assert final is State.CLOSED
    with pytest.raises(SessionLost):
        session.send(b"after close")
    assert not client_threads()


def test_several_threads_share_one_session(daemon: str) -> None:
    session = sessiond_client.connect_sync(daemon)
    per_thread = 200

    def sender(tag: int) -> None:
        for i in range(per_thread):
            session.send(f"{tag}:{i}".encode())

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in range(4)]
    for thread in threads:
        thread.start()
    received = [session.recv(timeout=10) for _ in range(4 * per_thread)]
    for thread in threads:
        thread.join()
    for tag in range(4):
        mine = [m for m in received if m.startswith(f"{tag}:".encode())]
        assert mine == [f"{tag}:{i}".encode() for i in range(per_thread)]  # each in order
    session.close()
    assert not client_threads()


def test_refused_connect_leaves_no_thread() -> None:
    policy = sessiond_client.ReconnectPolicy(base=0.01, cap=0.02, max_attempts=2)
    with pytest.raises(SessionLost):
        sessiond_client.connect_sync("tcp://127.0.0.1:1", policy=policy)
    assert not client_threads()


@pytest.mark.parametrize("uvloop_present", [True, False])
def test_the_facade_runs_with_and_without_uvloop(daemon: str, uvloop_present: bool) -> None:
    script = f"""
import sys
if not {uvloop_present}:
    sys.modules["uvloop"] = None  # as on a machine without it: import fails
import sessiond_client
with sessiond_client.connect_sync({daemon!r}) as session:
    session.send(b"ping")
    assert session.recv(timeout=5) == b"ping"
    print(type(session._loop).__module__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip().startswith("uvloop" if uvloop_present else "asyncio")
