"""``--metrics HOST:PORT``: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP.

Nothing is counted per message for this. :class:`Collector` builds every metric
when it is scraped, from the server's event counters (:mod:`sessiond.stats`) and
its live state: sessions by state, transports, replay and inbox bytes, and the
messages each way (the live sessions' sequence numbers plus those of sessions
that ended or moved to another process, less what sessions adopted from another
process had counted there: each process counts the messages that went through it).
The HTTP side is a small asyncio server on the daemon's own loop, so a scrape
reads that state between two callbacks, never while it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as CollectorBase

from .addresses import format_host, parse_listen
from .server import Server
from .stats import Stats

log = logging.getLogger("sessiond")

REQUEST_LIMIT = 8192  # bytes of request line and headers
MAX_CLIENTS = 32  # concurrent HTTP connections; more are closed at once
REQUEST_TIMEOUT = 10.0
SCAN_SLICE = 2000  # sessions scanned per loop iteration during a scrape


class Source(Protocol):
    """What the metrics read: the running daemon."""

    @property
    def server(self) -> Server | None: ...

    @property
    def app(self) -> Any: ...

    @property
    def draining(self) -> bool: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): listening and not draining."""
        ...


class Collector(CollectorBase):
    """Every ``sessiond_*`` metric, built at scrape time."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.scan: Scan | None = None  # the latest, made by refresh(); None: scan in collect

    async def refresh(self) -> None:
        """Scan the sessions for the next :meth:`collect`, a slice per loop iteration, so
        that a scrape of a daemon with many sessions never stalls it for long."""
        server = self.source.server
        if server is None:
            return
        entries = list(server.sessions.values())
        scan = Scan(server.stats)
        for start in range(0, len(entries), SCAN_SLICE):
            scan.add(entries[start : start + SCAN_SLICE])
            await asyncio.sleep(0)
        self.scan = scan

    def collect(self) -> Iterator[Metric]:
        source = self.source
        server = source.server
        ready, _ = source.readiness()
        yield _gauge("sessiond_draining", "1 while draining after SIGTERM", int(source.draining))
        yield _gauge("sessiond_ready", "1 when listening and not draining (/readyz)", int(ready))
        if server is None:
            return
        stats = server.stats
        scan = self.scan
        if scan is None:
            scan = Scan(stats)
            scan.add(list(server.sessions.values()))
        states, replay, inbox = scan.states, scan.replay, scan.inbox
        sent, received = scan.sent, scan.received
        sessions = GaugeMetricFamily(
            "sessiond_sessions", "live sessions by state", labels=["state"]
        )
        for state, count in sorted(states.items()):
            sessions.add_metric([state], count)
        yield sessions
        yield _gauge("sessiond_max_sessions", "the max_sessions limit", server.config.max_sessions)
        handshaking = sum(1 for p in server.protocols if p.entry is None and not p.closed)
        yield _gauge("sessiond_transports", "open transports", len(server.protocols))
        yield _gauge(
            "sessiond_transports_handshaking", "open transports without a session yet", handshaking
        )
        events = stats.events
        resumed = events.get("resumed", 0) + events.get("taken over", 0)
        handshakes = CounterMetricFamily(
            "sessiond_handshakes",
            "HELLOs answered: a new session, a resumed one, or refused",
            labels=["result"],
        )
        handshakes.add_metric(["new"], events.get("created", 0))
        handshakes.add_metric(["resumed"], resumed)
        handshakes.add_metric(["refused"], sum(stats.refused.values()))
        yield handshakes
        yield _counter_by(
            "sessiond_refusals",
            "transports closed before carrying a session, by close code (NONE: the client "
            "left during the handshake)",
            "code",
            stats.refused,
        )
        histogram = stats.resume_seconds
        yield HistogramMetricFamily(
            "sessiond_resume_duration_seconds",
            "from accepting a transport (after its TLS handshake) to resuming a session on it",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )
        store = stats.store_seconds
        yield HistogramMetricFamily(
            "sessiond_store_commit_seconds",
            "session store (--store redis://...): one commit of every session's appends",
            buckets=store.cumulative(),
            sum_value=store.total,
        )
        yield _counter_by(
            "sessiond_store_errors",
            "session store failures, by kind (commit, fenced, lease, resume)",
            "kind",
            stats.store_errors,
        )
        yield _counter_by(
            "sessiond_resume_failures",
            "resumes answered with a new session instead, by why (UNKNOWN_SESSION, "
            "SESSION_EXPIRED, ...)",
            "reason",
            stats.resume_failed,
        )
        yield _counter(
            "sessiond_takeovers",
            "resumes that took a session over from a live transport",
            events.get("taken over", 0),
        )
        yield _counter(
            "sessiond_expiries", "sessions that expired detached", events.get("expired", 0)
        )
        yield _counter(
            "sessiond_detaches", "transports lost under a session", events.get("detached", 0)
        )
        yield _counter_by("sessiond_sessions_ended", "sessions ended, by code", "code", stats.ended)
        messages = CounterMetricFamily(
            "sessiond_messages", "session messages, in (from clients) and out", labels=["direction"]
        )
        messages.add_metric(["in"], scan.ended_in + received)
        messages.add_metric(["out"], scan.ended_out + sent)
        yield messages
        wire = CounterMetricFamily(
            "sessiond_transport_bytes",
            "bytes read from and written to transports",
            labels=["direction"],
        )
        wire.add_metric(["in"], stats.bytes_in)
        wire.add_metric(["out"], stats.bytes_out)
        yield wire
        yield _gauge(
            "sessiond_replay_bytes", "payload bytes kept for replay (unacknowledged)", replay
        )
        yield _gauge(
            "sessiond_inbox_bytes", "payload bytes received, not yet taken by handlers", inbox
        )
        yield _counter(
            "sessiond_tls_accepted", "connections accepted on tls:// listeners", stats.tls_accepted
        )
        yield _counter("sessiond_tls_handshakes", "TLS handshakes completed", stats.tls_handshakes)
        broker = getattr(source.app, "broker", None)
        channels = getattr(broker, "stats", None)
        if channels is not None:
            yield _gauge(
                "sessiond_channels_subscriptions",
                "channel subscriptions held",
                channels.subscriptions,
            )
            yield _counter(
                "sessiond_channels_deliveries",
                "published messages queued for subscribers",
                channels.deliveries,
            )
            yield _counter(
                "sessiond_channels_drops",
                "messages dropped by drop-oldest policies (as gaps)",
                channels.drops,
            )
            yield _counter(
                "sessiond_channels_bus_lost",
                "publishes the Redis channels bus could not carry to other processes",
                channels.bus_lost,
            )
            yield _counter(
                "sessiond_channels_moved_queued",
                "channel messages queued for sessions that moved to another process "
                "(sent there again from the bus)",
                channels.moved_queued,
            )
            yield _counter(
                "sessiond_channels_caught_up",
                "channel messages sent again from the bus to sessions that moved here",
                channels.caught_up,
            )
            yield _counter(
                "sessiond_channels_presence_lost",
                "presence changes the Redis channels bus could not carry to other processes",
                channels.presence_lost,
            )


class Scan:
    """What the live sessions hold: counts by state, buffered bytes, messages each way.

    The messages of sessions that had ended are read when the scan starts: a session
    scanned and then ended before the scan is over is counted once, by the scan, so the
    ``sessiond_messages`` counter never goes down from one scrape to the next.
    """

    __slots__ = ("ended_in", "ended_out", "inbox", "received", "replay", "sent", "states")

    def __init__(self, stats: Stats) -> None:
        self.states: dict[str, int] = {"attached": 0, "detached": 0}
        self.replay = self.inbox = self.sent = self.received = 0
        self.ended_in, self.ended_out = stats.ended_messages_in, stats.ended_messages_out

    def add(self, entries: list[Any]) -> None:
        states = self.states
        for entry in entries:
            core = entry.core
            state = core.state.value
            states[state] = states.get(state, 0) + 1
            kept, waiting = core.buffered_bytes
            self.replay += kept
            self.inbox += waiting
            out, _, got, _ = core.sequence_numbers
            self.sent += out
            self.received += got


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _counter_by(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def registry(collector: Collector) -> CollectorRegistry:
    """A registry of the daemon's metrics and the process's (CPU, memory, file descriptors)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


class HttpDoor:
    """The HTTP listener: ``GET /metrics`` (*metrics*), ``/healthz`` (alive), ``/readyz``
    (:meth:`readiness`). :class:`MetricsServer` is the daemon's; the supervisor of
    ``--workers`` has its own, which gathers its workers' (sessiond/gather.py)."""

    def __init__(self, metrics: CollectorRegistry) -> None:
        self.registry = metrics
        self.listener: asyncio.Server | None = None
        self._clients = 0

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz."""
        raise NotImplementedError

    async def prepare(self, path: str) -> None:
        """Before answering a request for *path*: read what it needs."""

    def done(self) -> None:
        """After answering a request."""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; the (host, port) bound (port 0 picks a free one)."""
        self.listener = await asyncio.start_server(self._serve, host, port, limit=REQUEST_LIMIT)
        bound = self.listener.sockets[0].getsockname()
        return bound[0], bound[1]

    async def listen_at(self, where: str, logger: logging.Logger, serving: str = "") -> bool:
        """Listen on *where* (a ``--metrics`` address) and log the URL, *serving* after
        it; False, with the reason logged, when it cannot."""
        address = parse_listen(where, ("http",))
        try:
            host, port = await self.start(address.host, address.port)
        except OSError as exc:
            why = exc.strerror or str(exc)
            logger.error(
                "cannot serve metrics on %s: %s",
                where,
                why,
                extra={"fields": {"event": "listen-failed", "address": where, "error": why}},
            )
            return False
        url = f"http://{format_host(host)}:{port}"
        logger.info(
            "metrics on %s/metrics (also /healthz, /readyz)%s",
            url,
            serving,
            extra={"fields": {"event": "metrics", "address": url}},
        )
        return True

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(Exception):
                await self.listener.wait_closed()

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, why = self.readiness()
            return (200 if ready else 503), "text/plain", why.encode() + b"\n"
        return 404, "text/plain", b"try /metrics, /healthz or /readyz\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                return
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = (await reader.readline()).decode("latin-1").split()
                for _ in range(100):  # headers: read and ignored
                    if (await reader.readline()).strip() in (b"", b"\r\n"):
                        break
            if len(request) != 3 or not request[2].startswith("HTTP/"):
                status, kind, body = 400, "text/plain", b"bad request\n"
            else:
                await self.prepare(request[1].split("?", 1)[0])
                status, kind, body = self.respond(request[0], request[1])
                self.done()
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if request[:1] == ["HEAD"] else body))
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a slow, oversized or vanished request: just close
        finally:
            self._clients -= 1
            writer.close()


class MetricsServer(HttpDoor):
    """The daemon's HTTP listener (``--metrics HOST:PORT``)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.collector = Collector(source)
        super().__init__(registry(self.collector))

    def readiness(self) -> tuple[bool, str]:
        return self.source.readiness()

    async def prepare(self, path: str) -> None:
        if path == "/metrics":
            await self.collector.refresh()

    def done(self) -> None:
        self.collector.scan = None  # the next scrape scans again


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
