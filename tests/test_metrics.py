"""``sessiond serve --metrics``: Prometheus text at /metrics, /healthz and /readyz, scraped
with urllib from a daemon running as a subprocess, while real clients come and go."""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sessiond_client
from prometheus_client.parser import text_string_to_metric_families
from sessiond_client import Channels, envelopes, tls_context
from sessiond_client.protocol import Params

from sessiond.tls import generate
from tests.coreclient import CoreClient
from tests.daemonproc import DaemonProcess
from tests.faultproxy import FaultProxy

TIMEOUT = 30.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> Samples:
    status, text = get(base + "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until_metric(base: str, name: str, wanted: float, **labels: str) -> Samples:
    """Scrape until *name* has the *wanted* value (counters and gauges move after events)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        samples = await asyncio.to_thread(scrape, base)
        if value(samples, name, **labels) == wanted:
            return samples
        assert asyncio.get_running_loop().time() < deadline, (name, labels, samples)
        await asyncio.sleep(0.05)


def metrics_base(daemon: DaemonProcess) -> str:
    return daemon.wait_for(r"metrics on (http://[0-9.]+:\d+)/metrics").group(1)


async def test_metrics_health_and_readiness_over_a_session_lifecycle(tmp_path: Path) -> None:
    certs = generate(tmp_path / "certs", ["127.0.0.1"])
    conf = tmp_path / "sessiond.toml"
    conf.write_text("[server]\ndrain_timeout = 60.0\n")
    daemon = DaemonProcess(
        *("--config", str(conf), "--app", "echo", "--metrics", "127.0.0.1:0"),
        *("--listen", "127.0.0.1:0", "--listen", "tls://127.0.0.1:0"),
        *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        log_file=tmp_path / "daemon.log",
    )
    clients: list[CoreClient] = []
    try:
        base = metrics_base(daemon)
        host, port = daemon.address("tcp")
        _, tls_port = daemon.address("tls")
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ready\n")
        assert get(base + "/nope")[0] == 404

        plain = CoreClient(host, port)
        secure = CoreClient(host, tls_port, ssl=tls_context(certs.ca))
        clients += [plain, secure]
        for client in clients:
            await client.open(TIMEOUT)
        sent = [f"m{i}".encode() for i in range(10)]
        for payload in sent:
            plain.send(payload)
        await plain.pump_until(lambda: len(plain.received) == 10, TIMEOUT)
        with socket.create_connection((host, port), timeout=TIMEOUT) as garbage:
            garbage.sendall(b"\xc1" * 16)  # not a frame: PROTOCOL_ERROR, no session
            garbage.recv(1024)
        await plain.kill()
        samples = await until_metric(base, "sessiond_sessions", 1, state="detached")
        assert value(samples, "sessiond_sessions", state="attached") == 1
        await plain.open(TIMEOUT)  # resumes

        samples = await until_metric(base, "sessiond_resume_duration_seconds_count", 1)
        assert value(samples, "sessiond_sessions", state="attached") == 2
        assert value(samples, "sessiond_sessions", state="detached") == 0
        assert value(samples, "sessiond_handshakes_total", result="new") == 2
        assert value(samples, "sessiond_handshakes_total", result="resumed") == 1
        assert value(samples, "sessiond_refusals_total", code="PROTOCOL_ERROR") == 1
        assert value(samples, "sessiond_detaches_total") == 1
        assert value(samples, "sessiond_messages_total", direction="in") == 10
        assert value(samples, "sessiond_messages_total", direction="out") == 10
        assert value(samples, "sessiond_transport_bytes_total", direction="in") > 10 * 2
        assert value(samples, "sessiond_tls_handshakes_total") == 1
        assert value(samples, "sessiond_tls_accepted_total") == 1
        assert value(samples, "sessiond_transports") == 2
        assert value(samples, "sessiond_draining") == 0
        assert value(samples, "sessiond_ready") == 1
        assert value(samples, "sessiond_max_sessions") == 100_000
        assert value(samples, "process_resident_memory_bytes") > 0

        # A client that stops reading holds the drain: meanwhile /readyz says draining.
        for client in clients:
            await client.close()
        stuck = CoreClient(host, port)
        await stuck.open(TIMEOUT)
        stuck.send(b"echoed, never acknowledged")
        samples = await until_metric(
            base, "sessiond_replay_bytes", len(b"echoed, never acknowledged")
        )
        assert value(samples, "sessiond_sessions_ended_total", code="NORMAL") == 2
        daemon.signal(signal.SIGTERM)
        await until_metric(base, "sessiond_draining", 1)
        assert await asyncio.to_thread(get, base + "/readyz") == (503, "draining\n")
        await stuck.kill()
        assert await asyncio.to_thread(daemon.proc.wait, TIMEOUT) == 0
    finally:
        daemon.close()
    assert "Traceback" not in daemon.log


async def test_takeover_expiry_and_a_failed_resume_are_counted(tmp_path: Path) -> None:
    conf = tmp_path / "sessiond.toml"
    conf.write_text("[protocol]\ndetached_lifetime = 0.5\ndetached_lifetime_max = 0.5\n")
    daemon = DaemonProcess(
        *("--config", str(conf), "--app", "echo", "--metrics", "127.0.0.1:0"),
        *("--listen", "127.0.0.1:0"),
        log_file=tmp_path / "daemon.log",
    )
    try:
        base = metrics_base(daemon)
        host, port = daemon.address()
        async with FaultProxy(host, port) as proxy:
            client = CoreClient(*proxy.address)
            await client.open(TIMEOUT)
            proxy.blackhole()  # the daemon's transport stays open, dead: half-open
            await client.kill()
            client.host, client.port = host, port
            await client.open(TIMEOUT)  # resumes directly, over the half-open one
            await until_metric(base, "sessiond_takeovers_total", 1)
        await client.kill()
        samples = await until_metric(base, "sessiond_expiries_total", 1)
        assert value(samples, "sessiond_sessions_ended_total", code="SESSION_EXPIRED") == 1
        await client.open(TIMEOUT)  # the resume finds the session gone: a new one
        samples = await until_metric(
            base, "sessiond_resume_failures_total", 1, reason="SESSION_EXPIRED"
        )
        assert value(samples, "sessiond_handshakes_total", result="new") == 2
        assert value(samples, "sessiond_resume_duration_seconds_count") == 1  # the takeover
        await client.close()
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        daemon.close()


async def test_channels_metrics(tmp_path: Path) -> None:
    conf = tmp_path / "sessiond.toml"
    conf.write_text("[channels]\ndrop_oldest = ['feed/#']\nqueue_messages = 2\n")
    daemon = DaemonProcess(
        *("--config", str(conf), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"),
        log_file=tmp_path / "daemon.log",
    )
    try:
        base = metrics_base(daemon)
        host, port = daemon.address()
        # A subscriber with a window of one message that stops reading after its
        # subscriptions are confirmed: its queue (2) fills and feed/# drops the oldest.
        reader = CoreClient(host, port, Params(window_messages=1))
        await reader.open(TIMEOUT)
        reader.send(envelopes.request(envelopes.SUB, "feed/#", 1))
        await reader.pump_until(lambda: len(reader.received) == 1, TIMEOUT)
        reader.send(envelopes.request(envelopes.SUB, "other", 2))
        await until_metric(base, "sessiond_channels_subscriptions", 2)
        async with await sessiond_client.connect(daemon.url()) as writer_session:
            writer = Channels(writer_session)
            for i in range(20):
                await writer.publish("feed/x", f"{i}".encode(), timeout=TIMEOUT)
            samples = await until_metric(base, "sessiond_channels_deliveries_total", 20)
        assert value(samples, "sessiond_channels_drops_total") > 0, samples
        await reader.kill()  # detached: its subscriptions stay until the session ends
        assert daemon.stop() == 0
    finally:
        daemon.close()


@pytest.mark.parametrize(
    "request_bytes", [b"POST /metrics HTTP/1.1\r\n\r\n", b"x" * 10_000 + b"\r\n"]
)
def test_metrics_listener_refuses_what_it_does_not_serve(
    tmp_path: Path, request_bytes: bytes
) -> None:
    daemon = DaemonProcess(
        "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", log_file=tmp_path / "daemon.log"
    )
    try:
        base = metrics_base(daemon)
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(request_bytes)
            answer = sock.recv(1024)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 405"), answer
        assert get(base + "/healthz") == (200, "ok\n")  # still serving
        assert daemon.stop() == 0
    finally:
        daemon.close()
