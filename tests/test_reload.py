"""SIGHUP reloads a running ``sessiond serve`` and never kills it: sessions stay attached,
live settings apply at once, others are reported as needing a restart, and a bad new
configuration leaves the old one in force with an ERROR naming the problem."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import sessiond_client
from sessiond_client import Channels, CloseCode, ReconnectPolicy, SessionLost
from sessiond_client.envelopes import ChannelError

from sessiond.tls import generate
from tests.daemonproc import DaemonProcess

TIMEOUT = 30.0
ONCE = ReconnectPolicy(max_attempts=1)


def token_line(identity: str, token: str) -> str:
    return f"{identity} {hashlib.sha256(token.encode()).hexdigest()}\n"


def write_config(path: Path, tokens: Path, **server: object) -> None:
    lines = ["[server]", "listen = ['tcp://127.0.0.1:0']", "app = 'echo'"]
    lines += [f"{key} = {value!r}" for key, value in server.items()]
    lines += ["[auth]", "mode = 'token-file'", f"token_file = '{tokens}'"]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("alice", "tok-alice"))
    conf = tmp_path / "sessiond.toml"
    write_config(conf, tokens, max_sessions=100)
    yield conf, tokens


async def echo(session: sessiond_client.Session, payload: bytes) -> None:
    await session.send(payload, timeout=TIMEOUT)
    assert await asyncio.wait_for(session.recv(), TIMEOUT) == payload


async def refused(url: str, token: str) -> CloseCode:
    with pytest.raises(SessionLost) as lost:
        await asyncio.wait_for(
            sessiond_client.connect(url, credentials=token, policy=ONCE), TIMEOUT
        )
    return lost.value.reason


async def test_sighup_reloads_limits_token_file_and_log_level_with_sessions_attached(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    conf, tokens = files
    daemon = DaemonProcess("--config", str(conf), log_file=tmp_path / "daemon.log")
    sessions: list[sessiond_client.Session] = []
    try:
        url = daemon.url()
        for _ in range(3):
            sessions.append(await sessiond_client.connect(url, credentials="tok-alice"))
        for session in sessions:
            await echo(session, b"before")
        assert await refused(url, "tok-bob") is CloseCode.AUTH_FAILED

        # Live: log level, max_sessions, a new identity. Restart: the protocol window.
        tokens.write_text(token_line("alice", "tok-alice") + token_line("bob", "tok-bob"))
        write_config(conf, tokens, max_sessions=4, log_level="warning")
        conf.write_text(conf.read_text() + "[protocol]\nwindow_messages = 64\n")
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*SIGHUP: reloaded.*")).group(0)
        assert "token file" in line and "(2 identities)" in line, line
        assert "server.max_sessions=4" in line and 'server.log_level="WARNING"' in line, line
        assert "needs a restart: protocol.window_messages" in line, line
        for session in sessions:  # attached across the reload
            await echo(session, b"after")
        bob = await sessiond_client.connect(url, credentials="tok-bob")  # the 4th session
        await echo(bob, b"bob")
        assert await refused(url, "tok-alice") is CloseCode.LIMIT_EXCEEDED  # the 5th
        await daemon.until(r"WARNING sessiond: refused .* max_sessions \(4\) reached")
        assert " created " not in daemon.log.split("SIGHUP: reloaded")[1]  # INFO: now off

        # A bad file: nothing changes, one ERROR names the setting and the file.
        conf.write_text(conf.read_text().replace("max_sessions = 4", "max_sessions = 0"))
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*ERROR.*SIGHUP: configuration not reloaded.*")).group(0)
        assert f"server.max_sessions = 0 (from file {conf})" in line, line
        # A bad token file: the same; the old identities still get in.
        write_config(conf, tokens, max_sessions=10)
        tokens.write_text("bob not-a-digest\n")
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*SIGHUP: configuration not reloaded.*", count=2)).group(0)
        assert f"token file {tokens}, line 1" in line, line
        assert await refused(url, "tok-alice") is CloseCode.LIMIT_EXCEEDED  # still 4
        await bob.close()
        extra = await sessiond_client.connect(url, credentials="tok-alice")  # bob's place
        await echo(extra, b"old token file still in force")
        await extra.close()

        for session in sessions:
            await echo(session, b"still attached")
            await session.close()
        assert daemon.stop() == 0
    finally:
        for session in sessions:
            await session.close()
        daemon.close()
    assert "Traceback" not in daemon.log


async def test_sighup_without_a_config_file_or_tls_does_not_kill(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        "--listen", "127.0.0.1:0", "--app", "echo", log_file=tmp_path / "daemon.log"
    )
    try:
        session = await sessiond_client.connect(daemon.url())
        await echo(session, b"before")
        for count in (1, 2):
            daemon.signal(signal.SIGHUP)
            await daemon.until("SIGHUP: reloaded no live setting changed", count=count)
        await echo(session, b"after")
        await session.close()
        assert daemon.stop() == 0
    finally:
        daemon.close()


async def test_sighup_applies_new_channel_access_rules(tmp_path: Path) -> None:
    conf = tmp_path / "sessiond.toml"
    base = "[server]\nlisten = ['127.0.0.1:0']\n[channels]\n"
    conf.write_text(base + "acl = ['* subscribe news/#']\n")
    daemon = DaemonProcess("--config", str(conf), log_file=tmp_path / "daemon.log")
    try:
        url = daemon.url()
        async with (
            await sessiond_client.connect(url) as reader_session,
            await sessiond_client.connect(url) as writer_session,
        ):
            reader, writer = Channels(reader_session), Channels(writer_session)
            await reader.subscribe("news/#", timeout=TIMEOUT)
            with pytest.raises(ChannelError, match="may not publish"):
                await writer.publish("news/today", b"no", timeout=TIMEOUT)
            conf.write_text(base + "acl = ['* subscribe news/#', '* publish news/#']\n")
            daemon.signal(signal.SIGHUP)
            await daemon.until("SIGHUP: reloaded .*channels.acl")
            await writer.publish("news/today", b"yes", timeout=TIMEOUT)  # same session
            event = await asyncio.wait_for(reader.recv(), TIMEOUT)
            assert getattr(event, "payload", None) == b"yes", event
        assert daemon.stop() == 0
    finally:
        daemon.close()


async def test_sighup_with_a_bad_certificate_keeps_serving_the_old_one(tmp_path: Path) -> None:
    live = generate(tmp_path / "live", ["127.0.0.1"])
    other = generate(tmp_path / "other", ["127.0.0.1"])
    daemon = DaemonProcess(
        *("--listen", "tls://127.0.0.1:0", "--app", "echo"),
        *("--tls-cert", str(live.server_cert), "--tls-key", str(live.server_key)),
        log_file=tmp_path / "daemon.log",
    )
    try:
        url = daemon.url("tls")
        session = await sessiond_client.connect(url, ca_file=live.ca)
        await echo(session, b"before")
        shutil.copyfile(other.server_key, live.server_key)  # the key of another certificate
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*ERROR.*SIGHUP: configuration not reloaded.*")).group(0)
        assert str(live.server_key) in line or str(live.server_cert) in line, line
        await echo(session, b"after the failed reload")  # attached all along
        async with await sessiond_client.connect(url, ca_file=live.ca) as fresh:  # old cert
            await echo(fresh, b"still the old certificate")
        shutil.copyfile(other.server_cert, live.server_cert)  # now a matching pair
        daemon.signal(signal.SIGHUP)
        await daemon.until("SIGHUP: reloaded TLS certificate")
        async with await sessiond_client.connect(url, ca_file=other.ca) as renewed:
            await echo(renewed, b"the new certificate")
        await echo(session, b"across both reloads")
        await session.close()
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


async def test_sighup_refuses_mutual_tls_that_needs_a_restart(tmp_path: Path) -> None:
    certs = generate(tmp_path / "certs", ["127.0.0.1"], ["dev1"])
    conf = tmp_path / "sessiond.toml"
    tls = f"[tls]\ncert = '{certs.server_cert}'\nkey = '{certs.server_key}'\n"
    conf.write_text("[server]\nlisten = ['tls://127.0.0.1:0']\napp = 'echo'\n" + tls)
    daemon = DaemonProcess("--config", str(conf), log_file=tmp_path / "daemon.log")
    try:
        url = daemon.url("tls")
        # The listeners were started without a client CA: switching to mutual-tls live
        # would refuse every client, so the whole reload is refused until a restart.
        conf.write_text(
            conf.read_text() + f"client_ca = '{certs.ca}'\n[auth]\nmode = 'mutual-tls'\n"
        )
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*SIGHUP: configuration not reloaded.*")).group(0)
        assert "mutual-tls needs --tls-client-ca" in line, line
        async with await sessiond_client.connect(url, ca_file=certs.ca) as session:
            await echo(session, b"open auth still in force")
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


def sighup_ignored(pid: int) -> bool:
    """True once the process ignores SIGHUP (its SigIgn mask in /proc has bit 0 set)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGHUP - 1)))


async def test_a_sighup_while_the_daemon_is_still_starting_does_not_kill_it(
    tmp_path: Path,
) -> None:
    daemon = DaemonProcess(
        "--listen", "tcp://127.0.0.1:0", "--app", "echo", log_file=tmp_path / "log"
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            while not sighup_ignored(daemon.proc.pid):  # the entry point's first act
                await asyncio.sleep(0.001)
        starting = "listening on" not in daemon.log  # still loading its modules: the window
        daemon.signal(signal.SIGHUP)
        await daemon.until("listening on")
        url = daemon.url()
        async with await sessiond_client.connect(url) as session:
            await echo(session, b"still here")
        daemon.signal(signal.SIGHUP)  # and once it runs, SIGHUP reloads
        await daemon.until("SIGHUP")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
        print(f"SIGHUP sent while still starting: {starting}")
    finally:
        daemon.close()


async def test_sighup_applies_new_limits_to_the_running_budgets(tmp_path: Path) -> None:
    """[limits] is live: a lowered per-address cap refuses the next new session at once
    (the sessions already open stay attached and counted), and nothing waits for a
    restart."""
    conf = tmp_path / "sessiond.toml"
    base = "[server]\nlisten = ['tcp://127.0.0.1:0']\napp = 'echo'\n[limits]\n"
    conf.write_text(base + "max_sessions_per_address = 100\n")
    daemon = DaemonProcess("--config", str(conf), log_file=tmp_path / "daemon.log")
    sessions: list[sessiond_client.Session] = []
    try:
        url = daemon.url()
        for _ in range(2):
            sessions.append(await sessiond_client.connect(url))
        conf.write_text(base + "max_sessions_per_address = 2\nwrite_stall_timeout = 5.0\n")
        daemon.signal(signal.SIGHUP)
        line = (await daemon.until(r".*SIGHUP: reloaded.*")).group(0)
        assert "limits.max_sessions_per_address=2" in line, line
        assert "limits.write_stall_timeout=5.0" in line and "restart" not in line, line
        assert await refused(url, "") is CloseCode.LIMIT_EXCEEDED
        await daemon.until("too many sessions from this address")
        for session in sessions:
            await echo(session, b"still attached")
        await sessions.pop().close()  # one place free again
        async with await sessiond_client.connect(url) as third:
            await echo(third, b"in the freed place")
        for session in sessions:
            await session.close()
        assert daemon.stop() == 0
    finally:
        for session in sessions:
            await session.close()
        daemon.close()
    assert "Traceback" not in daemon.log
