"""The operator's helpers against a real daemon: gen-cert's printed command serves mutual
TLS and a kept CA key signs more clients later, hash-token's line admits its token, JSON
logs are JSON on every line (start-up errors included), and open authentication on a
non-loopback listener is warned about."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sessiond_client

from tests.daemonproc import DaemonProcess, clean_environment

TIMEOUT = 30.0


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sessiond", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=stdin,
        env=clean_environment(),
        check=False,
    )
    return result


async def connect_as(url: str, certs: Path, name: str) -> sessiond_client.Session:
    return await sessiond_client.connect(
        url,
        ca_file=certs / "ca.pem",
        cert_file=certs / f"client-{name}.pem",
        key_file=certs / f"client-{name}.key",
    )


async def test_gen_cert_prints_a_working_mutual_tls_command_and_adds_clients_later(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    made = cli(
        "gen-cert", "--host", "127.0.0.1", "--client", "dev1", "--keep-ca-key", "--out", str(out)
    )
    assert made.returncode == 0, made.stderr
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    lines = made.stdout.splitlines()
    command = shlex.split(lines[lines.index("run the daemon with:") + 1])
    assert command[:2] == ["sessiond", "serve"] and "--auth" in command, command
    assert command[command.index("--auth") + 1] == "mutual-tls"
    # Exactly that command, on a free port instead of 7443.
    args = [a.replace(":7443", ":0") for a in command[2:]]
    daemon = DaemonProcess(*args, log_file=tmp_path / "daemon.log")
    try:
        url = daemon.url("tls")
        async with await connect_as(url, out, "dev1"):
            await daemon.until("created .*identity=dev1")
        # Later: one more device, signed by the kept CA key; the daemon is not restarted.
        more = await asyncio.to_thread(
            cli, "gen-cert", "--ca-key", str(out / "ca.key"), "--client", "dev2", "--out", str(out)
        )
        assert more.returncode == 0, more.stderr
        async with await connect_as(url, out, "dev2"):
            await daemon.until("created .*identity=dev2")
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


@pytest.mark.parametrize("hosts", [["localhost"], ["localhost", "127.0.0.1"], ["::1"]])
async def test_gen_cert_printed_command_and_client_line_work_together(
    tmp_path: Path, hosts: list[str]
) -> None:
    """The serve command and the client line gen-cert prints, run as printed, connect
    (the client's URL names a host the server certificate is for)."""
    out = tmp_path / "certs"
    host_args = [arg for host in hosts for arg in ("--host", host)]
    made = cli("gen-cert", *host_args, "--client", "dev1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    command = shlex.split(lines[lines.index("run the daemon with:") + 1])
    client_line = lines[lines.index("a client connects with:") + 1].strip()
    prefix = "sessiond_client.connect("
    assert client_line.startswith(prefix) and client_line.endswith(")"), client_line
    url = ast.literal_eval(client_line[len(prefix) :].split(",", 1)[0])
    daemon = DaemonProcess(
        *[a.replace(":7443", ":0") for a in command[2:]], log_file=tmp_path / "daemon.log"
    )
    try:
        port = (await daemon.until(r"listening on tls://\S+:(\d+)"))[1]
        async with await connect_as(url.replace(":7443", f":{port}"), out, "dev1"):
            await daemon.until("created .*identity=dev1")
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


def test_gen_cert_without_clients_or_kept_key_says_so(tmp_path: Path) -> None:
    made = cli("gen-cert", "--host", "localhost", "--out", str(tmp_path / "c"))
    assert made.returncode == 0 and "its private key was not kept" in made.stdout
    assert "--auth" not in made.stdout  # server-only: open auth from loopback works
    assert not (tmp_path / "c" / "ca.key").exists()
    refused = cli("gen-cert", "--ca-key", str(tmp_path / "c" / "server.key"), "--client", "x",
                  "--out", str(tmp_path / "c"))  # fmt: skip
    assert refused.returncode == 2 and "does not match" in refused.stderr


async def test_hash_token_line_admits_its_token(tmp_path: Path) -> None:
    made = cli("hash-token", "alice")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    token, line = lines[1].strip(), lines[-1]
    assert line.startswith("alice ") and token not in made.stdout.splitlines()[-1]
    tokens = tmp_path / "tokens"
    tokens.write_text(line + "\n")
    piped = cli("hash-token", "alice", "--stdin", stdin=token + "\n")
    assert piped.stdout.splitlines()[-1] == line
    daemon = DaemonProcess(
        *("--listen", "127.0.0.1:0", "--auth", "token-file", "--token-file", str(tokens)),
        log_file=tmp_path / "daemon.log",
    )
    try:
        async with await sessiond_client.connect(daemon.url(), credentials=token):
            await daemon.until("created .*identity=alice")
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


async def test_json_logs_are_json_on_every_line(tmp_path: Path) -> None:
    conf = tmp_path / "sessiond.toml"
    conf.write_text("[server]\nlog_format = 'json'\napp = 'echo'\n")
    env = clean_environment(SESSIOND_STRAY_THING="1")
    daemon = DaemonProcess(
        "--config", str(conf), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
        log_file=tmp_path / "daemon.log", env=env,
    )  # fmt: skip
    try:
        async with await sessiond_client.connect(daemon.url()) as session:
            await session.send(b"hello")
            assert await asyncio.wait_for(session.recv(), TIMEOUT) == b"hello"
        conf.write_text("[server]\nlog_format = 'json'\napp = 'echo'\nmax_sessions = -1\n")
        daemon.signal(signal.SIGHUP)
        await daemon.until("configuration not reloaded")
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()
    records = [json.loads(line) for line in daemon.log.splitlines()]
    events = {record.get("event") for record in records}
    assert {"config-warning", "metrics", "listening", "created", "reload-failed"} <= events
    assert {"draining", "stopped"} <= events
    failed = next(r for r in records if r.get("event") == "reload-failed")
    assert failed["level"] == "ERROR" and "server.max_sessions = -1" in failed["message"]

    # A start-up error in JSON too, even when the JSON request is in the broken file.
    conf.write_text("[server]\nlog_format = 'json'\ndrain_timeout = -5\n")
    result = cli("serve", "--config", str(conf))
    assert result.returncode == 2
    (record,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert record["level"] == "ERROR" and record["event"] == "config-error"
    assert "server.drain_timeout = -5" in record["message"]


def test_open_auth_on_a_non_loopback_listener_is_warned_about(tmp_path: Path) -> None:
    # Open authentication admits loopback clients only, so nothing remote gets in.
    daemon = DaemonProcess("--listen", "0.0.0.0:0", log_file=tmp_path / "daemon.log")
    try:
        line = daemon.wait_for(r".*WARNING.*only loopback clients are admitted.*").group(0)
        assert "tcp://0.0.0.0:0" in line and "--auth token-file" in line
        assert daemon.stop() == 0
    finally:
        daemon.close()
    quiet = DaemonProcess("--listen", "127.0.0.1:0", log_file=tmp_path / "quiet.log")
    try:
        quiet.address()
        assert quiet.stop() == 0
    finally:
        quiet.close()
    assert "only loopback clients" not in quiet.log


@pytest.mark.parametrize(
    ("source", "error"),
    [("def handler(session)\n", "SyntaxError"), ("raise RuntimeError('no DB')\n", "RuntimeError")],
)
def test_an_app_module_that_fails_to_import_is_a_configuration_error(
    tmp_path: Path, source: str, error: str
) -> None:
    """``--app module:callable`` whose module raises on import: one JSON ERROR line naming
    --app and the error (not a Python traceback), exit 2; ``config check`` says the same."""
    (tmp_path / "brokenapp.py").write_text(source)
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    conf = tmp_path / "sessiond.toml"
    conf.write_text("[server]\napp = 'brokenapp:handler'\n")
    for args in (
        ["serve", "--listen", "127.0.0.1:0", "--app", "brokenapp:handler", "--log-format", "json"],
        ["config", "check", str(conf)],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "sessiond", *args],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
            env=clean_environment(PYTHONPATH=pythonpath),
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "brokenapp:handler" in result.stderr and error in result.stderr
        if args[0] == "serve":
            lines = result.stderr.splitlines()
            assert [json.loads(line)["level"] for line in lines] == ["ERROR"], lines
