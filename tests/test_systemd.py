"""systemd: the readiness protocol as a real daemon speaks it to a ``$NOTIFY_SOCKET`` the
test binds, and the shipped unit file checked with ``systemd-analyze verify``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessiond.systemd import Notifier
from tests.coreclient import CoreClient
from tests.daemonproc import DaemonProcess, clean_environment
from tests.test_metrics import metrics_base, until_metric

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "sessiond.service"
TIMEOUT = 30.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def next_message(sock: socket.socket, wanted: str) -> str:
    """The next datagram holding the line *wanted* (watchdog pings in between skipped)."""
    while True:
        message = sock.recv(4096).decode()
        if wanted in message.splitlines():
            return message


def test_daemon_notifies_ready_watchdog_reloading_and_stopping(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    env = clean_environment(
        NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC="200000"
    )  # a ping every 0.1 s
    daemon = DaemonProcess("--listen", "127.0.0.1:0", log_file=tmp_path / "log", env=env)
    try:
        ready = next_message(notify_socket, "READY=1")
        host, port = daemon.address()
        assert f"STATUS=listening on tcp://{host}:{port}" in ready.splitlines()
        for _ in range(3):
            next_message(notify_socket, "WATCHDOG=1")
        daemon.signal(signal.SIGHUP)
        reloading = next_message(notify_socket, "RELOADING=1")
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M)
        next_message(notify_socket, "READY=1")
        daemon.signal(signal.SIGTERM)
        assert "STATUS=draining" in next_message(notify_socket, "STOPPING=1")
        assert daemon.proc.wait(timeout=TIMEOUT) == 0
    finally:
        daemon.close()


def test_notifier_abstract_socket_and_a_watchdog_meant_for_another_process() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"sessiond-test-{id(sock)}"
        sock.bind("\0" + name)
        sock.settimeout(TIMEOUT)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        assert notifier.watchdog_interval == 1.0
        assert notifier.notify("READY=1", "STATUS=x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert not Notifier({}).notify("READY=1")  # outside systemd: nothing, no error


def test_unit_file_is_hardened_and_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "WatchdogSec=30",
    ):
        assert line in text.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd): unit not verified")
    # verify checks that ExecStart's program exists: point it at this interpreter.
    unit = tmp_path / "sessiond.service"
    unit.write_text(text.replace("/usr/local/bin/sessiond", f"{sys.executable} -m sessiond"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    problems = [line for line in result.stderr.splitlines() if "sessiond.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


async def test_a_sighup_while_draining_is_ignored_and_never_says_ready(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """After STOPPING=1 a SIGHUP must not reload nor tell systemd READY=1 again."""
    env = clean_environment(NOTIFY_SOCKET=notify_socket.getsockname())
    daemon = DaemonProcess(
        *("--listen", "127.0.0.1:0", "--app", "echo", "--metrics", "127.0.0.1:0"),
        log_file=tmp_path / "log",
        env=env,
    )
    try:
        await asyncio.to_thread(next_message, notify_socket, "READY=1")
        stuck = CoreClient(*daemon.address())  # its echo is never acknowledged: holds the drain
        await stuck.open(TIMEOUT)
        stuck.send(b"held")
        await until_metric(metrics_base(daemon), "sessiond_replay_bytes", len(b"held"))
        daemon.signal(signal.SIGTERM)
        await asyncio.to_thread(next_message, notify_socket, "STOPPING=1")
        daemon.signal(signal.SIGHUP)
        await daemon.until("SIGHUP ignored while draining")
        notify_socket.settimeout(0.5)
        after: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                after.append(notify_socket.recv(4096).decode())
        assert not any("READY=1" in m.splitlines() for m in after), after
        await stuck.kill()
        assert await asyncio.to_thread(daemon.proc.wait, TIMEOUT) == 0
    finally:
        daemon.close()
    assert "SIGHUP: reloaded" not in daemon.log
