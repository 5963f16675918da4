"""``sessiond sessions list|end`` against a running daemon (a subprocess) over its admin
socket: mode 0600, sessions listed with their state, one ended with a reason the client
is told."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path

from sessiond_client.protocol import CloseCode

from tests.coreclient import CoreClient
from tests.daemonproc import DaemonProcess, clean_environment

TIMEOUT = 30.0


def sessions(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "sessions", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env or clean_environment(),
        check=False,
    )


async def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(sessions, *args, env=env)


async def test_list_and_end_sessions_over_the_admin_socket(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    daemon = DaemonProcess(
        *("--listen", "127.0.0.1:0", "--app", "echo", "--admin-socket", str(sock)),
        log_file=tmp_path / "daemon.log",
    )
    clients: list[CoreClient] = []
    try:
        host, port = daemon.address()
        await daemon.until("admin socket")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        for _ in range(2):
            client = CoreClient(host, port)
            await client.open(TIMEOUT)
            clients.append(client)
        kept, ended = clients
        ended.send(b"x")
        await ended.pump_until(lambda: ended.received == [b"x"], TIMEOUT)
        await kept.kill()  # detached

        listed = await run("list", "--socket", str(sock), "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["id"]: row for row in json.loads(listed.stdout)}
        kept_id = (kept.session.id or b"").hex()
        ended_id = (ended.session.id or b"").hex()
        assert rows[kept_id]["state"] == "detached"
        assert rows[ended_id]["state"] == "attached"
        assert rows[ended_id]["peer"].startswith("127.0.0.1:")
        assert rows[ended_id]["age"] >= 0
        assert set(rows[ended_id]) >= {"identity", "replay_bytes", "inbox_bytes"}

        # The socket can also come from the environment ([admin] socket), as a table.
        table = await run("list", env=clean_environment(SESSIOND_ADMIN_SOCKET=str(sock)))
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["ID", "IDENTITY", "STATE", "PEER", "AGE", "REPLAY", "INBOX"]
        assert any(line.startswith(kept_id[:8]) and "detached" in line for line in lines[1:])

        result = await run("end", ended_id[:8], "--reason", "maintenance", "--socket", str(sock))
        assert result.returncode == 0, result.stderr
        assert f"ended {ended_id}" in result.stdout
        await ended.pump_until(lambda: ended.session.end_code is not None, TIMEOUT)
        assert ended.session.end_code is CloseCode.SESSION_REVOKED
        assert ended.conn is not None and "maintenance" in ended.conn.close_reason
        await daemon.until(f"session {ended_id[:8]} ended by the operator: maintenance")

        missing = await run("end", "ffffffffffff", "--socket", str(sock))
        assert missing.returncode == 1 and "no session ffffffffffff" in missing.stderr
        short = await run("end", "ab", "--socket", str(sock))
        assert short.returncode == 1 and "at least 4 hex digits" in short.stderr
        listed = await run("list", "--socket", str(sock), "--json")
        assert [row["id"] for row in json.loads(listed.stdout)] == [kept_id]

        assert await asyncio.to_thread(daemon.stop) == 0
        assert not sock.exists()  # removed on exit
    finally:
        daemon.close()


def test_admin_command_without_a_socket_says_how_to_get_one(tmp_path: Path) -> None:
    result = sessions("list")
    assert result.returncode == 2 and "--admin-socket" in result.stderr
    result = sessions("list", "--socket", str(tmp_path / "absent.sock"))
    assert result.returncode == 2 and "absent.sock" in result.stderr


def test_a_second_daemon_does_not_steal_a_live_admin_socket(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    first = DaemonProcess(
        "--listen", "127.0.0.1:0", "--admin-socket", str(sock), log_file=tmp_path / "1.log"
    )
    try:
        first.wait_for("admin socket")
        second = DaemonProcess(
            "--listen", "127.0.0.1:0", "--admin-socket", str(sock), log_file=tmp_path / "2.log"
        )
        try:
            assert second.proc.wait(timeout=TIMEOUT) == 1
            assert "another daemon is listening on it" in second.log
        finally:
            second.close()
        assert sessions("list", "--socket", str(sock)).returncode == 0  # the first's
        first.proc.kill()  # SIGKILL: the socket file stays behind, with nobody listening
        first.proc.wait()
        assert sock.exists()
        third = DaemonProcess(
            "--listen", "127.0.0.1:0", "--admin-socket", str(sock), log_file=tmp_path / "3.log"
        )
        try:
            third.wait_for("admin socket")  # the stale file was replaced
            assert sessions("list", "--socket", str(sock)).returncode == 0
            assert third.stop() == 0
        finally:
            third.close()
    finally:
        first.close()
