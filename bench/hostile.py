"""``python -m bench.hostile [ATTACK ...] [--seconds S]``: issue 12's attacks, measured.

Each attack runs against a fresh ``python -m sessiond serve --app echo`` on 127.0.0.1
while a canary session in this process exchanges one message at a time with it. Printed
per attack: the daemon's RSS before, at its peak during the attack and after it (from
``/proc``), and the canary's round-trip p50/p99. Attackers run in a child process, so
they do not share this process's GIL with the canary. Timings depend on the machine and
its load: state both next to any figure taken from here.

The attackers are plain blocking sockets, bounded in time; ``tests/test_hostile.py``
uses the same ones at small sizes.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import random
import select
import socket
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sessiond_client import envelopes
from sessiond_client.protocol import CloseCode, FrameDecoder, Params, Role, Session, parse_frame
from sessiond_client.protocol.codec import encode_ack, encode_data, encode_ping
from sessiond_client.protocol.frames import Ack, Close, Hello, Welcome

from sessiond.tls import generate

from .processes import HOST, Pinning, ServerProcess, free_port, server

UNPINNED = Pinning(None, None, "unpinned")


@contextlib.contextmanager
def daemon(
    config: str = "", app: str = "echo", tls_port: int = 0
) -> Iterator[tuple[ServerProcess, int]]:
    """``python -m sessiond serve`` on a free port with *config* (TOML), and with
    *tls_port* a tls:// listener there too (a development certificate); stopped at the
    end. Its output: ``proc.log_path``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessiond.toml"
        path.write_text(config)
        argv = ["sessiond", "serve", "--app", app, "--config", str(path)]
        if tls_port:
            files = generate(Path(tmp) / "certs", [HOST])
            argv += [f"--listen=tls://{HOST}:{tls_port}", f"--tls-cert={files.server_cert}"]
            argv.append(f"--tls-key={files.server_key}")
        with server("daemon", argv, UNPINNED, Path(tmp)) as proc:
            yield proc, proc.port


# ------------------------------------------------------------------ raw sockets


def hello(window_messages: int = 1024, window_bytes: int = 1 << 20, lifetime_ms: int = 0) -> bytes:
    return Hello((1,), 15000, window_messages, window_bytes, 1 << 20, lifetime_ms).encode()


def open_raw(port: int, rcvbuf: int = 4096, **hello_args: int) -> socket.socket:
    """A socket with a session open on it (WELCOME read and discarded, nothing else read)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((HOST, port))
    sock.sendall(hello(**hello_args))
    sock.recv(200)  # the WELCOME (and the first ACK): enough to know the session is open
    return sock


def send_bounded(sock: socket.socket, data: bytes, until: float, stall: float = 2.0) -> str:
    """Send *data* (before *until*): "sent"; "stalled" when the kernel took nothing for
    *stall* seconds (the daemon stopped reading us); "closed"; or "time" at *until*."""
    view = memoryview(data)
    progress = time.monotonic()
    while view:
        now = time.monotonic()
        if now >= until:
            return "time"
        if now - progress >= stall:
            return "stalled"
        _, writable, _ = select.select([], [sock], [], min(until - now, 0.1))
        if not writable:
            continue
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return "closed"
        view = view[sent:]
        progress = time.monotonic()
    return "sent"


def _flood(port: int, seconds: float, batches: Iterable[bytes], pause: float = 0.0) -> str:
    """A session that never reads, sending *batches* until *seconds* pass or the daemon
    stops taking them; how the last send ended (see :func:`send_bounded`)."""
    sock = open_raw(port)
    sock.setblocking(False)
    until = time.monotonic() + seconds
    outcome = "time"
    for batch in batches:
        if time.monotonic() >= until:
            break
        outcome = send_bounded(sock, batch, until)
        if outcome != "sent":
            break
        time.sleep(pause)
    sock.close()
    return outcome


def _closed(sock: socket.socket) -> bool:
    """True when the daemon ended this connection (EOF or reset), reading what it sent."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def _hold(socks: list[socket.socket], seconds: float) -> int:
    """Hold *socks* for *seconds*, then close them: how many the daemon had closed."""
    time.sleep(seconds)
    closed = sum(_closed(sock) for sock in socks)
    for sock in socks:
        sock.close()
    return closed


# ------------------------------------------------------------------ attacks


def blind_acker(port: int, seconds: float, payload: int = 1000) -> str:
    """Never reads; sends DATA and ACKs every echo it assumes the daemon has sent.
    Returns how it ended (see :func:`send_bounded`)."""

    def batches() -> Iterator[bytes]:
        for seq in itertools.count(64, 64):
            data = b"".join(encode_data(seq - 63 + i, b"x" * payload) for i in range(64))
            # ACK what the daemon has surely echoed by now (an ACK beyond what it has
            # sent would be a SEQUENCE_ERROR): everything up to a few batches ago.
            yield data + (encode_ack(seq - 512) if seq > 512 else b"")

    return _flood(port, seconds, batches(), pause=0.005)  # the daemon acknowledges meanwhile


def ping_flooder(port: int, seconds: float) -> str:
    """Never reads; sends PINGs as fast as the daemon takes them."""
    return _flood(port, seconds, itertools.repeat(b"".join(encode_ping(i) for i in range(4096))))


def hello_looper(port: int, seconds: float) -> str:
    """HELLO, read the WELCOME, drop the connection; again, from one address."""
    until = time.monotonic() + seconds
    answers = collections.Counter[bool]()
    while time.monotonic() < until:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 5) as sock:
            sock.sendall(hello())
            answers[sock.recv(200)[2:3] == b"\x8a"] += 1  # a WELCOME (a map of 10), else CLOSE
    return f"opened={answers[True]} refused={answers[False]}"


def partial_framer(port: int, seconds: float, connections: int = 100) -> str:
    """*connections* sessions each send all but 10 bytes of a 1 MiB frame, then wait."""
    socks = []
    frame = encode_data(1, b"x" * ((1 << 20) - 64))[:-10]
    with contextlib.suppress(OSError):
        for _ in range(connections):
            sock = open_raw(port, rcvbuf=65536)
            sock.sendall(frame)
            socks.append(sock)
    return f"held={len(socks)} closed_by_daemon={_hold(socks, seconds)}"


def _publish(publisher: Canary, payload: bytes) -> None:
    while not publisher.session.can_send(len(payload)):
        publisher.wait_for_credit()
    publisher.session.send(payload, time.monotonic())


def retained_hash_subscribers(
    port: int, seconds: float, retained: int = 10_000, subscribers: int = 100
) -> str:
    """Channels app with ``retained = ["#"]``: *retained* messages of 1 KiB are retained,
    then *subscribers* sessions subscribe to ``#`` and never read (nor ACK) anything."""
    publisher = Canary(port)  # a session whose replies are read (and acknowledged)
    for number in range(retained):
        _publish(publisher, envelopes.request("pub", f"r/{number}", None, b"r" * 1024))
        publisher._flush()
    publisher.close()
    socks = []
    for _ in range(subscribers):
        socks.append(open_raw(port))
        socks[-1].sendall(encode_data(1, envelopes.request("sub", "#", 1)))
    time.sleep(seconds)
    for sock in socks:
        sock.close()
    return f"retained={retained} subscribers={len(socks)}"


def hash_blind_acker(
    port: int, seconds: float, payload: int = 1024, lag: float = 0.5, rate: float = 3000.0
) -> str:
    """Channels app: a session subscribes to ``#``, never reads, and ACKs every message it
    assumes the daemon sent it (what was published *lag* seconds ago: a daemon without
    backpressure has sent those), while a publisher (a session that reads what it is
    sent) floods one channel with *rate* messages of *payload* bytes a second (as many
    as the daemon's replay buffer lets it have unacknowledged at that lag: faster, and
    the subscriber is ended as a slow consumer whatever the write path does). Returns
    how the subscriber ended (see :func:`send_bounded`) and how many were published."""
    # A window as large as the protocol allows: the daemon may have that much in flight
    # to it, which only its write path (backpressure) can hold back.
    sock = open_raw(port, window_messages=0xFFFFFFFF, window_bytes=0xFFFFFFFF)
    sock.sendall(encode_data(1, envelopes.request(envelopes.SUB, "#", 1)))
    sock.setblocking(False)
    publisher = Canary(port)
    request = envelopes.request(envelopes.PUB, "flood/x", None, b"f" * payload)
    published = 0
    history: collections.deque[tuple[float, int]] = collections.deque()
    start = time.monotonic()
    until = start + seconds
    outcome = "time"
    while time.monotonic() < until:
        time.sleep(max(0.0, start + published / rate - time.monotonic()))
        for _ in range(64):
            _publish(publisher, request)
        published += 64
        publisher._flush()
        now = time.monotonic()
        history.append((now, published))
        acked = 0
        while history and history[0][0] <= now - lag:
            acked = history.popleft()[1]
        if acked:  # seq 1 is the subscribe's reply; delivery n is seq n + 1
            outcome = send_bounded(sock, encode_ack(1 + acked), until)
            if outcome != "sent":
                break
    publisher.close()
    sock.close()
    return f"subscriber {outcome}, published={published}"


def detached_filler(port: int, seconds: float, sessions: int = 40, fill: int = 6 << 20) -> str:
    """*sessions* sessions from one address, each asking for the longest detached lifetime,
    send DATA (as the daemon's window allows, watching its ACKs) and never acknowledge an
    echo, until *fill* bytes are sent or the daemon stops acknowledging (its replay buffer
    and inbox are full); then each drops its connection (the session detaches holding
    them), and nothing happens for *seconds*. Returns the MiB sent per session (median)."""
    payload = b"d" * 16000
    sent_bytes = []
    for _ in range(sessions):
        sock = socket.create_connection((HOST, port), 10)
        sock.sendall(hello(0xFFFFFFFF, 0xFFFFFFFF, lifetime_ms=3_600_000))
        decoder = FrameDecoder(1 << 21)
        acked = sent = 0
        welcome = False
        progress = time.monotonic()
        while sent * len(payload) < fill and time.monotonic() - progress < 1.0:
            while welcome and sent - acked < 48:  # 768 kB: within its window (1 MiB)
                sent += 1
                sock.sendall(encode_data(sent, payload))
            if select.select([sock], [], [], 0.2)[0]:
                data = sock.recv(1 << 20)
                if not data:
                    break
                for frame in map(parse_frame, decoder.feed(data)):
                    if isinstance(frame, Welcome):
                        welcome, progress = True, time.monotonic()
                    elif isinstance(frame, Ack) and frame.seq > acked:
                        acked, progress = frame.seq, time.monotonic()
        sock.close()
        sent_bytes.append(sent * len(payload))
    time.sleep(seconds)
    median = sorted(sent_bytes)[len(sent_bytes) // 2] / (1 << 20)
    return f"sessions={sessions} sent={median:.1f} MiB each (median), never acknowledged"


def deep_subscribers(port: int, seconds: float, sessions: int = 20, levels: int = 126) -> str:
    """Channels app: *sessions* sessions each subscribe to 256 wildcard patterns of
    *levels* one-character levels sharing no branch, then hold them for *seconds*.
    Returns how many subscribes were refused (LIMIT_EXCEEDED beyond max_pattern_levels)."""
    chooser = random.Random(12)
    socks = []
    for _ in range(sessions):
        socks.append(open_raw(port, rcvbuf=1 << 20))
        patterns = (
            "/".join(chooser.choice(string.ascii_lowercase) for _ in range(levels - 1)) + "/#"
            for _ in range(256)
        )
        socks[-1].sendall(
            b"".join(
                encode_data(n, envelopes.request(envelopes.SUB, pattern, n))
                for n, pattern in enumerate(patterns, 1)
            )
        )
    time.sleep(seconds)
    refused = 0
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            while data := sock.recv(1 << 20):
                refused += data.count(b" levels")  # "a pattern may have at most N levels"
        sock.close()
    return f"sessions={sessions} patterns={sessions * 256} levels={levels} refusals~{refused}"


def wrong_tokens(port: int, seconds: float, count: int = 10_000, parallel: int = 200) -> str:
    """*count* HELLOs with wrong tokens from one address, *parallel* at a time, as fast as
    they are answered (at most *seconds*): how each was answered."""
    answers: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + seconds
    sent = 0
    while sent < count and time.monotonic() < until:
        batch = []
        for _ in range(min(parallel, count - sent)):
            try:
                sock = socket.create_connection((HOST, port), 5)
            except OSError:
                answers["connect failed"] += 1
                continue
            sent += 1
            credentials = {"token": f"wrong {sent}"}
            sock.sendall(Hello((1,), 15000, 64, 65536, 1 << 20, 0, credentials).encode())
            batch.append(sock)
        for sock in batch:
            sock.settimeout(max(0.1, until - time.monotonic()))
            answer = "none"
            with contextlib.suppress(OSError):
                for frame in map(parse_frame, FrameDecoder(1 << 20).feed(sock.recv(4096))):
                    if isinstance(frame, Close):
                        answer = CloseCode(frame.code).name
                    elif isinstance(frame, Welcome):
                        answer = "WELCOME"
            answers[answer] += 1
            sock.close()
    return f"sent={sent} " + " ".join(f"{k}={v}" for k, v in sorted(answers.items()))


def tls_handshake_holder(port: int, seconds: float, connections: int = 2000) -> str:
    """*connections* TCP connections from one address to a TLS listener (*port*), none of
    which ever sends a ClientHello, held for *seconds*: how many the daemon closed within
    1 s (at accept: the per-address limit) and how many by the end."""
    socks = []
    with contextlib.suppress(OSError):
        for _ in range(connections):
            socks.append(socket.create_connection((HOST, port), 5))
    time.sleep(1.0)
    at_once = sum(_closed(sock) for sock in socks)
    by_end = _hold(socks, max(0.0, seconds - 1.0))
    return f"opened={len(socks)} closed_within_1s={at_once} closed_by_end={by_end}"


def deep_subscribers_16(port: int, seconds: float) -> str:
    return deep_subscribers(port, seconds, levels=16)  # the most allowed now


@dataclass(frozen=True, slots=True)
class Attack:
    """An attacker and what it runs against: the channels app with *channels* (TOML) if
    not None, else the echo app; token-file authentication (*auth*, the canary has the
    right token); a tls:// listener (*tls*, the canary stays on the plain one)."""

    run: Callable[[int, float], str]
    channels: str | None = None
    auth: bool = False
    tls: bool = False


ATTACKS = {
    "retained-hash": Attack(retained_hash_subscribers, '[channels]\nretained = ["#"]\n'),
    "hash-blind-ack": Attack(hash_blind_acker, ""),
    "blind-ack": Attack(blind_acker),
    "ping-flood": Attack(ping_flooder),
    "hello-loop": Attack(hello_looper),
    "partial-frames": Attack(partial_framer),
    "tls-handshakes": Attack(tls_handshake_holder, tls=True),
    "deep-subs": Attack(deep_subscribers, ""),
    "deep-subs-16": Attack(deep_subscribers_16, ""),
    "detached-fill": Attack(detached_filler),
    "wrong-tokens": Attack(wrong_tokens, auth=True),
}
CANARY_TOKEN = "canary-token"


# ------------------------------------------------------------------ the canary


class Canary:
    """One session on a blocking socket: one message out, wait for its echo, repeat."""

    def __init__(self, port: int, credentials: object = None) -> None:
        self.session = Session(Role.CLIENT, Params(heartbeat_interval=5.0))
        self.sock = socket.create_connection((HOST, port), 10)
        self.conn = self.session.connect(time.monotonic(), credentials)
        self.rtts: list[float] = []
        self._flush()
        self._read_until(lambda: self.session.max_payload > 0, 10)

    def _flush(self) -> None:
        if data := self.conn.data_to_send():
            self.sock.sendall(data)

    def _read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.conn.closed:
                return False
            readable, _, _ = select.select([self.sock], [], [], min(remaining, 0.05))
            now = time.monotonic()
            if readable:
                data = self.sock.recv(65536)
                if not data:
                    self.conn.connection_lost(now)
                    return False
                self.conn.receive_data(data, now)
            deadline_core = self.session.next_deadline()
            if deadline_core is not None and now >= deadline_core:
                self.session.handle_timer(now)
            self._flush()
        return True

    def round_trip(self, timeout: float = 30.0) -> float | None:
        start = time.monotonic()
        self.session.send(b"canary", start)
        self._flush()
        got: list[bytes] = []

        def echoed() -> bool:
            got.extend(self.session.take_messages(time.monotonic()))
            return bool(got)

        if not self._read_until(echoed, timeout):
            return None
        self.rtts.append(time.monotonic() - start)
        self._flush()
        return self.rtts[-1]

    def wait_for_credit(self) -> None:
        """Read until the peer's ACKs open the window again (replies are taken)."""

        def credit() -> bool:
            self.session.take_messages(time.monotonic())
            return self.session.can_send(1100)

        self._read_until(credit, 30)

    def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and self.round_trip() is not None:
            time.sleep(0.002)

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(name: str, seconds: float, config: str = "") -> dict[str, float]:
    attack = ATTACKS[name]
    tls_port = free_port() if attack.tls else 0
    credentials = None
    tokens = tempfile.NamedTemporaryFile("w", suffix=".tokens")  # noqa: SIM115
    if attack.auth:
        tokens.write(f"canary {hashlib.sha256(CANARY_TOKEN.encode()).hexdigest()}\n")
        tokens.flush()
        config += f"[auth]\nmode = 'token-file'\ntoken_file = '{tokens.name}'\n"
        credentials = CANARY_TOKEN
    app = "echo" if attack.channels is None else "channels"
    with tokens, daemon((attack.channels or "") + config, app, tls_port) as (proc, port):
        canary = Canary(port, credentials)
        canary.run(1.0)
        quiet = list(canary.rtts)
        canary.rtts.clear()
        baseline = peak = proc.rss_kib()
        pool = concurrent.futures.ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
        outcome = pool.submit(attack.run, tls_port or port, seconds)
        until = time.monotonic() + seconds + 60
        while time.monotonic() < until and not outcome.done():
            canary.run(0.1)
            peak = max(peak, proc.rss_kib())
        print(f"{name}: the attacker ended: {outcome.result(30)}", flush=True)
        pool.shutdown()
        time.sleep(1.0)
        after = proc.rss_kib()
        log_lines = len(proc.log_path.read_text().splitlines())
        alive = canary.round_trip() is not None
        canary.close()
    return {
        "rss_before_mib": baseline / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_after_mib": after / 1024,
        "quiet_p50_ms": percentile(quiet, 0.5) * 1000,
        "p50_ms": percentile(canary.rtts, 0.5) * 1000,
        "p99_ms": percentile(canary.rtts, 0.99) * 1000,
        "round_trips": len(canary.rtts),
        "canary_alive": float(alive),
        "daemon_log_lines": log_lines,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("attacks", nargs="*", help=f"some of {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--config", default="", help="TOML text for the daemon")
    args = parser.parse_args(argv)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine)")
    unknown = [name for name in args.attacks if name not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(unknown)}")
    for name in args.attacks or ATTACKS:
        figures = measure(name, args.seconds, args.config)
        print(f"{name}: " + " ".join(f"{k}={v:.1f}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
