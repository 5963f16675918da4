"""A coverage-guided fuzzer for the frame decoder and the session core, run for a fixed time.

Run it from the repository root::

    python -m tests.fuzz --seconds 60              # fuzz for a minute, report, keep nothing
    python -m tests.fuzz --seconds 600 --save      # also add new inputs to tests/corpus/
    python -m tests.fuzz --replay                  # check every corpus file once
    python -m tests.fuzz --write-seeds             # refresh the seed-*.bin inputs

The target, :func:`check`, takes any bytes and feeds them, whole, byte by byte and in
pieces of 7 and 64 bytes, to

* :class:`FrameDecoder` at the smallest limit a peer may announce (1024) and at the
  default (1 MiB): it yields frames or raises :class:`RemoteProtocolError` with a
  :class:`CloseCode`, never holds more than the limit (protocol.md §1.4), accepts or
  rejects the same bytes however they are split, and each frame it yields parses to
  a typed frame or raises the remote error (§1.5, §2);
* four :class:`Connection` s: a fresh server transport, a client awaiting WELCOME, and
  both ends of an open session: ``receive_data`` never raises, the transport is left
  usable or closed with the code its last CLOSE frame carries
  (:func:`tests.test_fuzz.check_after_input`), and the outcome (state, code, output,
  session counters) is the same however the bytes were split (§1.5).

Inputs are the corpus (``tests/corpus/*.bin``: ``seed-*`` from the malformed-frame
tables of ``tests/test_fuzz.py`` and the test vectors, ``cov-*`` found by this fuzzer),
random frame sequences, and stacked mutations of both (byte edits, splices, inserted
frames, interesting integers). An input that takes the core along a line-to-line arc of
``sessiond_client.protocol`` that no earlier input took (traced with ``sys.settrace``)
joins the pool, and with ``--save`` the corpus as ``cov-<sha>.bin``. An input that breaks
:func:`check` is shrunk and written to ``tests/corpus/crash-<sha>.bin``, where the
suite's replay (``tests/test_fuzz_corpus.py``) fails until the bug is fixed; once
reported, rename it ``known-<what>.bin`` (the suite then expects it to fail, and the
fuzzer stops reporting inputs that fail the same way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import sessiond_client.protocol
from sessiond_client.protocol import (
    CloseCode,
    Connection,
    ConnectionState,
    Params,
    RemoteProtocolError,
    Role,
    Session,
    parse_frame,
)
from sessiond_client.protocol.codec import U64_MAX
from sessiond_client.protocol.frames import (
    Ack,
    Close,
    Data,
    Goaway,
    Hello,
    Ping,
    Pong,
    Resume,
    Welcome,
)

from tests.test_fuzz import (
    ANNOUNCED_OVER_LIMIT,
    AWAIT_HELLO,
    AWAIT_WELCOME,
    COMPLETE_OVER_LIMIT,
    INTERESTING,
    NOW,
    OPEN_CLIENT,
    OPEN_EITHER,
    OPEN_SERVER,
    SMALL,
    bytewise,
    check_after_input,
    decode,
    open_pair,
    outcome,
    output_frames,
    side_of,
)
from tests.vectors_io import VECTORS

CORPUS = Path(__file__).parent / "corpus"
#: Corpus inputs named ``known-*`` reproduce a bug reported but not yet fixed: the fuzzer
#: does not report inputs failing the same way, and the suite expects them to fail.
KNOWN = "known-"
#: Inputs longer than this are cut: size rules are reachable with SMALL at a few KiB.
MAX_INPUT = 4096

Setup = Callable[[], tuple[Connection, Session | None]]


# ------------------------------------------------------------------------- the target


def _fresh_server() -> tuple[Connection, Session | None]:
    return Connection.server(Params(max_frame_size=SMALL), NOW), None


def _awaiting_welcome() -> tuple[Connection, Session | None]:
    session = Session(Role.CLIENT, Params(max_frame_size=SMALL))
    conn = session.connect(NOW)
    conn.data_to_send()
    return conn, session


def _open_server() -> tuple[Connection, Session | None]:
    return side_of(open_pair(), "server")


def _open_client() -> tuple[Connection, Session | None]:
    return side_of(open_pair(), "client")


SETUPS: dict[str, Setup] = {
    "fresh-server": _fresh_server,
    "await-welcome": _awaiting_welcome,
    "open-server": _open_server,
    "open-client": _open_client,
}


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def splits(data: bytes) -> list[list[bytes]]:
    """The same bytes as TCP might deliver them: whole, byte by byte, in 7s and in 64s."""
    return [[data], bytewise(data), _pieces(data, 7), _pieces(data, 64)]


Watch = Callable[[], AbstractContextManager[Any]]


def check_decoder(data: bytes, watch: Watch = nullcontext) -> None:
    for limit in (SMALL, 1 << 20):
        results = []
        for number, pieces in enumerate(splits(data)):
            with watch() if number != 1 else nullcontext():  # byte by byte: untraced, slow
                results.append(decode(pieces, limit))  # asserts the §1.4 bound
        rejected = [result.code is not None for result in results]
        assert len(set(rejected)) == 1, f"limit {limit}: rejected depends on splitting {rejected}"
        if not rejected[0]:
            assert len({_fingerprint(result.frames) for result in results}) == 1, "frames differ"
        for frame in results[0].frames:
            try:
                parse_frame(frame)
            except RemoteProtocolError as exc:
                assert isinstance(exc.code, CloseCode)


def _fingerprint(frames: list[Any]) -> str:
    """Decoded frames as text: a float NaN is not equal to itself, and ``==`` on a
    value nested a thousand deep overflows the stack (the core rejects both later)."""
    try:
        return repr(frames)
    except RecursionError:
        return f"{len(frames)} frames, one nested too deep to print"


def check_connection(name: str, setup: Setup, data: bytes, watch: Watch = nullcontext) -> None:
    ways = splits(data)
    setups = [setup() for _ in range(len(ways) + 1)]  # made before tracing: always the same
    results = []
    for number, (pieces, (conn, session)) in enumerate(zip(ways, setups, strict=False)):
        with watch() if number != 1 else nullcontext():
            for piece in pieces:
                conn.receive_data(piece, NOW)
        results.append(outcome(conn, session))
    if any(result != results[0] for result in results[1:]):
        codes = "/".join(sorted({str(getattr(result[1], "name", None)) for result in results}))
        raise AssertionError(f"{name}: the outcome depends on how the bytes were split ({codes})")
    conn, session = setups[-1]
    with watch():
        conn.receive_data(data, NOW)
        check_after_input(conn, b"", session)
        if name == "fresh-server" and conn.state is ConnectionState.HELLO_RECEIVED:
            accepted = conn.accept(NOW, "fuzz")  # the daemon's answer must work
            assert accepted is not None
            assert [type(f) for f in output_frames(conn.data_to_send())] == [Welcome, Ack]
        if session is not None:
            session.handle_timer(NOW + 1e6)  # every timer due at once: expiry, idle, heartbeat
            output_frames(conn.data_to_send())


def check(data: bytes, watch: Watch = nullcontext) -> None:
    """Raise (AssertionError, or whatever escaped the core) if *data* breaks a rule.

    *watch* wraps the parts worth tracing for coverage (not the setups, not byte by byte).
    """
    data = data[:MAX_INPUT]
    check_decoder(data, watch)
    for name, setup in SETUPS.items():
        check_connection(name, setup, data, watch)


# ------------------------------------------------------------------------- the corpus


def seeds() -> dict[str, bytes]:
    """Inputs every corpus starts with: the repository's tables of bad frames."""
    found: dict[str, bytes] = {}
    tables = {
        "await-hello": AWAIT_HELLO,
        "await-welcome": AWAIT_WELCOME,
        "open": OPEN_EITHER | OPEN_SERVER | OPEN_CLIENT,
    }
    for table, cases in tables.items():
        for name, case in cases.items():
            found[f"seed-{table}-{name}"] = case.stream
    for name, stream in (ANNOUNCED_OVER_LIMIT | COMPLETE_OVER_LIMIT).items():
        found[f"seed-size-{name}"] = stream
    vectors = json.loads(VECTORS.read_text())
    for kind in ("valid", "invalid"):
        for entry in vectors[kind]:
            found[f"seed-vector-{kind}-{entry['name']}"] = bytes.fromhex(entry["hex"])
    return {name: stream[:MAX_INPUT] for name, stream in found.items()}


def load_corpus(directory: Path = CORPUS) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in sorted(directory.glob("*.bin"))}


def save(directory: Path, prefix: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------- inputs

INTEGERS = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**31, 2**32 - 1, 2**32]
INTEGERS += [2**63 - 1, 2**63, U64_MAX]


def random_frame(rng: random.Random) -> bytes:
    """One frame, mostly valid in shape, with fields near the edges of their ranges."""

    def number() -> int:
        return rng.choice(INTEGERS) if rng.random() < 0.5 else rng.randrange(0, 8)

    def text() -> str:
        return rng.choice(["", "x", "r" * rng.randrange(0, 1200), "é\u2028"])

    kind = rng.randrange(9)
    if kind == 0:
        resume = None
        if rng.random() < 0.5:
            resume = Resume(rng.randbytes(16), rng.randbytes(32), number())
        return Hello(
            (rng.choice([1, 1, 0, 2]),),
            max(1, number() % 2**32),
            max(1, number() % 2**32),
            max(1, number() % 2**32),
            rng.choice([1024, 4096, 1 << 20, 2**32 - 1]),
            number() % 2**32,
            rng.choice([None, "token", b"\x00" * 8, {"token": "t"}, [1, 2]]),
            resume,
        ).encode()
    if kind == 1:
        return Welcome(
            1,
            rng.randbytes(16),
            rng.randbytes(32),
            rng.random() < 0.5,
            number(),
            max(1, number() % 2**32),
            max(1, number() % 2**32),
            max(1, number() % 2**32),
            max(1, number() % 2**32),
            rng.choice([1024, 1 << 20]),
            number() % 2**32,
            rng.choice([None, 20, 25, 99]),
        ).encode()
    if kind in (2, 3):
        payload = rng.randbytes(rng.choice([0, 1, 8, 64, 1000, 1010, 2000]))
        return Data(number(), payload).encode()
    if kind == 4:
        return Ack(number()).encode()
    if kind == 5:
        return Ping(number()).encode()
    if kind == 6:
        return Pong(number()).encode()
    if kind == 7:
        redirect = rng.choice([None, "tcp://h:1"])
        return Goaway(number() % 2**32, number() % 2**32, redirect, text()).encode()
    return Close(rng.choice([*CloseCode, 17, 99, 2**32 - 1]), text(), number() % 2**32).encode()


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A few stacked edits of *data*."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(9)
        if op == 0 and out and at < len(out):
            out[at] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 2:
            del out[at : at + rng.randrange(1, 17)]
        elif op == 3:
            del out[at:]
        elif op == 4:
            out[at:at] = out[at : at + rng.randrange(1, 65)]
        elif op == 5 and pool:
            other = rng.choice(pool)
            out = out[:at] + other[rng.randrange(len(other) + 1) :]
        elif op == 6:
            out[at:at] = random_frame(rng)
        elif op == 7 and at < len(out):
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(INTEGERS) % (1 << (8 * width))
            out[at : at + width] = value.to_bytes(width, "big")
        elif op == 8 and out and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
    return bytes(out[:MAX_INPUT])


def next_input(rng: random.Random, pool: list[bytes]) -> bytes:
    roll = rng.random()
    if roll < 0.15 or not pool:
        return b"".join(random_frame(rng) for _ in range(rng.randrange(1, 6)))[:MAX_INPUT]
    if roll < 0.2:
        return rng.randbytes(rng.randrange(0, 300))
    return mutate(rng, rng.choice(pool), pool)


# ------------------------------------------------------------------------- coverage

PROTOCOL_DIR = str(Path(sessiond_client.protocol.__file__).parent)


class Coverage:
    """Line-to-line arcs taken inside ``sessiond_client.protocol``, via ``sys.settrace``."""

    def __init__(self) -> None:
        self.arcs: set[tuple[str, int, int]] = set()
        self._new: set[tuple[str, int, int]] = set()

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call" or not frame.f_code.co_filename.startswith(PROTOCOL_DIR):
            return None
        name = frame.f_code.co_filename
        last = frame.f_lineno
        arcs = self.arcs
        new = self._new

        def line(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal last
            if event == "line":
                arc = (name, last, frame.f_lineno)
                if arc not in arcs:
                    new.add(arc)
                last = frame.f_lineno
            return line

        return line

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Trace the protocol core inside the ``with`` block (then give the thread back to
        any tracer it had, such as coverage.py's)."""
        previous = sys.gettrace()
        sys.settrace(self._call)
        try:
            yield
        finally:
            sys.settrace(previous)

    def run(self, data: bytes) -> int:
        """Run ``check(data)``, traced; return how many arcs were new (raise if it fails)."""
        self._new = set()
        check(data, self.watching)
        self.arcs |= self._new
        return len(self._new)


# ------------------------------------------------------------------------- the loop


def failure_of(data: bytes) -> str | None:
    """What :func:`check` raises for *data*, as one line (type and message), or None."""
    try:
        check(data)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def shrink(data: bytes, failure: str, budget: int = 1500) -> bytes:
    """A shorter input failing the same way (greedy chunk deletion, at most *budget* runs)."""
    size = max(1, len(data) // 2)
    while size >= 1 and budget > 0:
        at = 0
        while at < len(data) and budget > 0:
            budget -= 1
            smaller = data[:at] + data[at + size :]
            if failure_of(smaller) == failure:
                data = smaller
            else:
                at += size
        size //= 2
    return data


@dataclass
class Report:
    seconds: float = 0.0
    cases: int = 0
    pool: int = 0
    arcs: int = 0
    found: list[bytes] = field(default_factory=list)
    #: One input per distinct failure (the first seen), keyed by the failure's first line.
    failures: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    failing_cases: int = 0
    known_cases: int = 0  # failing like a ``known-*`` input: a bug reported, not yet fixed

    def __str__(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        return (
            f"{self.cases} cases in {self.seconds:.1f} s ({rate:.0f}/s), pool {self.pool},"
            f" {self.arcs} arcs covered, {len(self.found)} new interesting inputs,"
            f" {self.failing_cases} failing cases ({len(self.failures)} distinct),"
            f" {self.known_cases} failing like a known-* input"
        )


def fuzz(
    seconds: float,
    seed: int,
    corpus: dict[str, bytes],
    *,
    max_cases: int | None = None,
    coverage: bool = True,
) -> Report:
    """Fuzz :func:`check` for *seconds* (and at most *max_cases* inputs) from *corpus*."""
    rng = random.Random(seed)
    tracer = Coverage() if coverage else None
    pool = [data for name, data in corpus.items() if not name.startswith(KNOWN)]
    known = {failure_of(data) for name, data in corpus.items() if name.startswith(KNOWN)}
    report = Report()
    started = time.monotonic()

    def run(data: bytes) -> bool:
        """True if *data* reached new arcs; failures are recorded, not added to the pool."""
        try:
            if tracer is None:
                check(data)
                return False
            return tracer.run(data) > 0
        except Exception as exc:
            key = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if key in known:
                report.known_cases += 1
            else:
                report.failing_cases += 1
                report.failures.setdefault(key, (data, traceback.format_exc()))
            return False

    for data in pool:  # the corpus sets the coverage baseline
        run(data)
    while time.monotonic() - started < seconds:
        if max_cases is not None and report.cases >= max_cases:
            break
        data = next_input(rng, pool)
        report.cases += 1
        if run(data):
            pool.append(data)
            report.found.append(data)
    report.seconds = time.monotonic() - started
    report.pool = len(pool)
    report.arcs = len(tracer.arcs) if tracer is not None else 0
    return report


def replay(corpus: dict[str, bytes]) -> Iterator[tuple[str, str]]:
    """Check every corpus input; yield ``(name, traceback)`` for each that fails."""
    for name, data in corpus.items():
        try:
            check(data)
        except Exception:
            yield name, traceback.format_exc()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="corpus directory")
    parser.add_argument("--save", action="store_true", help="add new inputs to the corpus")
    parser.add_argument("--no-coverage", action="store_true", help="no tracing: faster, blind")
    parser.add_argument("--replay", action="store_true", help="only check the corpus, once")
    parser.add_argument(
        "--write-seeds", action="store_true", help="(re)write the seed-*.bin inputs and exit"
    )
    args = parser.parse_args(argv)
    if args.write_seeds:
        args.corpus.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (args.corpus / f"{name}.bin").write_bytes(data)
        print(f"wrote {len(seeds())} seeds to {args.corpus}")
        return 0
    corpus = load_corpus(args.corpus) or seeds()
    if args.replay:
        failures = dict(replay(corpus))
        for name, trace in failures.items():
            if not name.startswith(KNOWN):
                print(f"FAIL {name}\n{trace}")
        known = [name for name in corpus if name.startswith(KNOWN)]
        for name in known:
            state = "still fails (reported)" if name in failures else "PASSES NOW: rename it"
            print(f"{name}: {state}")
        unexpected = [name for name in failures if not name.startswith(KNOWN)]
        print(f"replayed {len(corpus)} inputs, {len(unexpected)} unexpected failures")
        return 1 if unexpected or set(known) - set(failures) else 0
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzzing for {args.seconds:.0f} s from {len(corpus)} inputs, seed {seed}", flush=True)
    report = fuzz(args.seconds, seed, corpus, coverage=not args.no_coverage)
    print(report)
    if args.save:
        for data in report.found:
            save(args.corpus, "cov", data)
        print(f"saved {len(report.found)} inputs to {args.corpus}")
    for key, (data, trace) in report.failures.items():
        small = shrink(data, key)
        path = save(args.corpus, "crash", small)
        print(f"FAILURE ({len(data)} bytes, shrunk to {len(small)}: {path}):\n{trace}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
