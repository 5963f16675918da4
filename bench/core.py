"""``python -m bench core``: the protocol core alone, against the barest msgpack framing.

In one process, no sockets, taking turns per repetition: ``core`` (a client
:class:`Session` to a server session over two in-memory :class:`Connection` objects,
driven as an adapter would: encode, decode, sequence numbers, ACKs, windows and replay
buffer inside the figure), ``bare-unpacker`` (msgpack ``bin`` into a streaming
``Unpacker``) and ``bare-struct`` (4-byte length + ``unpackb``). "bare" is the faster of
the two. Every message a receiver takes is checked against the payload sent, in order.
"""

from __future__ import annotations

import argparse
import functools
import random
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack
from sessiond_client.protocol import Connection, Params, Role, Session, SessionState

from . import BenchError
from .harness import Context, given, option, positive, scenario
from .profiling import Profile, profile
from .results import Json, display_path, markdown_table, spread
from .summary import Headline, Target, judged, values_range, verdict

HELP = "messages/s through a paired client/server core, against a bare msgpack framing loop"

SIZES = (64, 1024)
#: Distinct payloads cycled through: more than a window holds, so a lost,
#: repeated or reordered message never compares equal to the one expected.
POOL = 4096
#: The core should keep at least this share of the bare rate at TARGET_SIZE.
TARGET = 0.5
TARGET_SIZE = 64
DEFAULT_MESSAGES = 500_000
DEFAULT_BATCH = 256
QUICK_MESSAGES = 20_000
WARMUP_MESSAGES = 20_000
PROFILE_MESSAGES = 300_000

CORE = "core"
CORE_BATCH = "core-batch"
BARE_UNPACKER = "bare-unpacker"
BARE_STRUCT = "bare-struct"
BARES = (BARE_UNPACKER, BARE_STRUCT)

#: Where a run's time goes, in loop order; "other" is the rest of the loop.
PHASES = ("write", "read", "take", "check", "ack")
PHASE_NOTES = {
    "write": "core: `can_send` + `send` per message; bare: pack per message, then the batch bytes",
    "read": "core: `data_to_send` + server `receive_data` (decode, DATA checks, inbox); "
    "bare: decode",
    "take": "core: server `take_messages` (ACK coalescing)",
    "check": "the bench's comparison of what was taken with what was sent (same for all)",
    "ack": "core: server `data_to_send` + client `receive_data` (ACK, replay release)",
    "other": "the loop itself: picking payloads, batch bounds, clock reads",
}

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Run:
    """One timed pass of one system over *messages* payloads of *size* bytes."""

    system: str
    size: int
    messages: int
    received: int  # taken by the receiver and found equal, in order, to what was sent
    seconds: float
    phases: dict[str, float]  # seconds per phase over the whole pass
    stalls: int = 0  # core: times a delayed ACK had to be released by its timer

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    def phase_ns(self) -> dict[str, float]:
        """Nanoseconds per message in each phase, "other" included."""
        per = {name: self.phases.get(name, 0.0) * 1e9 / self.received for name in PHASES}
        per["other"] = self.seconds * 1e9 / self.received - sum(per.values())
        return per

    def to_json(self) -> Json:
        return {
            "messages": self.messages,
            "received": self.received,
            "lost": self.messages - self.received,
            "seconds": self.seconds,
            "rate": self.rate,
            "stalls": self.stalls,
            "ns_per_message": self.phase_ns(),
        }


Runner = Callable[[list[bytes], int, int], Run]


def make_pool(size: int, count: int = POOL) -> list[bytes]:
    """*count* distinct payloads of *size* bytes: a big-endian index, then random bytes."""
    if size < 8:
        raise ValueError("payloads must be at least 8 bytes")
    rng = random.Random(size)
    return [index.to_bytes(8, "big") + rng.randbytes(size - 8) for index in range(count)]


class Checker:
    """Compares each batch a receiver takes with the payloads sent, in order, and counts
    what it finds missing and repeated (never derives them from totals)."""

    __slots__ = (
        "_first",
        "_mask",
        "_pool",
        "_ring",
        "_size",
        "duplicates",
        "missing",
        "system",
        "taken",
    )

    def __init__(
        self, system: str, pool: list[bytes], first: int = 0, ring: list[bytes] | None = None
    ) -> None:
        """Expect ``pool[first]``, ``pool[first + 1]``, ... (*ring*: ``pool + pool``, shared)."""
        if len(pool) & (len(pool) - 1):
            raise ValueError("the pool size must be a power of two")
        self.system = system
        self.taken = self.missing = self.duplicates = 0
        self._size = len(pool)
        self._mask = len(pool) - 1
        self._first = first
        self._pool = pool
        self._ring = ring or pool + pool  # any run of len(pool) payloads is one slice of it

    @property
    def received(self) -> int:
        """Payloads that arrived in their place, each once."""
        return self.taken - self.missing

    def check(self, got: list[bytes]) -> None:
        """Take *got* as the next messages: in order (one comparison in C), or counted."""
        taken = self.taken
        size = self._size
        for offset in range(0, len(got), size):
            chunk = got[offset : offset + size] if len(got) > size else got
            start = (self._first + taken + offset) & self._mask
            if chunk != self._ring[start : start + len(chunk)]:
                self._count(got)
                return
        self.taken = taken + len(got)

    def _count(self, got: list[bytes]) -> None:
        mask = self._mask
        for payload in got:
            index = int.from_bytes(payload[:8], "big")
            if index > mask or payload != self._pool[index]:
                raise BenchError(
                    f"{self.system}: message {self.taken + 1} is no payload sent "
                    f"(got {payload[:8].hex()}..., {len(payload)} bytes)"
                )
            ahead = (index - self._first - self.taken) & mask
            if ahead > mask // 2:  # from behind: a repeat
                self.duplicates += 1
            else:
                self.missing += ahead
                self.taken += ahead + 1


def run_core(pool: list[bytes], messages: int, batch: int, batched: bool = False) -> Run:
    """Drive a client/server pair of cores through *messages* sends, *batch* per write."""
    params = Params()
    now = 1000.0
    client = Session(Role.CLIENT, params)
    client_conn = client.connect(now)
    server_conn = Connection.server(params, now)
    server_conn.receive_data(client_conn.data_to_send(), now)
    server = server_conn.accept(now, "bench")
    if server is None:
        raise BenchError("core: the server refused the handshake")
    client_conn.receive_data(server_conn.data_to_send(), now)
    if client.state is not SessionState.ATTACHED:
        raise BenchError(f"core: handshake left the client {client.state.value}")
    client.events()
    server.events()

    system = CORE_BATCH if batched else CORE
    checker = Checker(system, pool)
    mask = len(pool) - 1
    can_send = client.can_send
    send = client.send
    send_many = client.send_many
    client_out = client_conn.data_to_send
    client_in = client_conn.receive_data
    server_out = server_conn.data_to_send
    server_in = server_conn.receive_data
    take = server.take_messages
    check = checker.check
    clock = time.perf_counter
    write = read = taking = checking = acking = 0.0
    sent = stalls = 0
    stalled = False

    start = clock()
    while checker.taken < messages:
        t0 = clock()
        end = min(sent + batch, messages)
        if batched:
            sent += send_many([pool[i & mask] for i in range(sent, end)], now)
        while sent < end:
            payload = pool[sent & mask]
            if not can_send(len(payload)):
                break
            send(payload, now)
            sent += 1
        t1 = clock()
        data = client_out()
        if data:
            server_in(data, now)
        t2 = clock()
        got = take(now)
        t3 = clock()
        if got:
            check(got)
        t4 = clock()
        ack = server_out()
        if ack:
            client_in(ack, now)
        t5 = clock()
        write += t1 - t0
        read += t2 - t1
        taking += t3 - t2
        checking += t4 - t3
        acking += t5 - t4
        if data or got or ack:
            stalled = False
            continue
        # Nothing moved: the window is full and the receiver holds its ACK back
        # until its delay runs out, so let that timer fire.
        if stalled or server_conn.closed:
            raise BenchError(f"{system}: no progress after {checker.taken} messages")
        stalled = True
        stalls += 1
        now += params.ack_delay
        server.handle_timer(now)
        client_in(server_out(), now)
    seconds = clock() - start

    if client_conn.closed or server_conn.closed:
        raise BenchError(f"core: closed ({client_conn.close_code!s}, {server_conn.close_code!s})")
    sent, received, consumed = client.sequence_numbers[0], *server.sequence_numbers[2:]
    events = client.events() + server.events()
    if not sent == received == consumed == messages or events:
        raise BenchError(
            f"core: {messages} messages: sent {sent}, received {received}, taken {consumed}; "
            f"events {events}"
        )
    phases = {"write": write, "read": read, "take": taking, "check": checking, "ack": acking}
    return Run(system, len(pool[0]), messages, checker.taken, seconds, phases, stalls)


#: A bare framing for one pass: ``encode(start, stop)`` packs ``pool[start:stop]`` (cycled)
#: into bytes, ``decode(bytes)`` returns the payloads whole in them.
Codec = tuple[Callable[[int, int], bytes], Callable[[bytes], list[bytes]]]


def _unpacker(pool: list[bytes]) -> Codec:
    """msgpack bin per payload into one reused Packer; a streaming Unpacker fed each batch."""
    packer, unpacker = msgpack.Packer(autoreset=False), msgpack.Unpacker(use_list=False)
    pack, mask = packer.pack, len(pool) - 1

    def encode(start: int, stop: int) -> bytes:
        for index in range(start, stop):
            pack(pool[index & mask])
        data: bytes = packer.bytes()
        packer.reset()
        return data

    def decode(data: bytes) -> list[bytes]:
        unpacker.feed(data)
        return list(unpacker)

    return encode, decode


def _struct(pool: list[bytes]) -> Codec:
    """A 4-byte length and a msgpack body per payload; unpack_from + unpackb per frame."""
    pack, unpackb, mask = msgpack.Packer().pack, msgpack.unpackb, len(pool) - 1
    prefix, unpack_from = _LENGTH.pack, _LENGTH.unpack_from
    tail = [b""]  # an incomplete frame from the previous batch

    def encode(start: int, stop: int) -> bytes:
        parts: list[bytes] = []
        append = parts.append
        for index in range(start, stop):
            body = pack(pool[index & mask])
            append(prefix(len(body)))
            append(body)
        return b"".join(parts)

    def decode(data: bytes) -> list[bytes]:
        buffer = tail[0] + data if tail[0] else data
        view, size, pos = memoryview(buffer), len(buffer), 0
        got: list[bytes] = []
        keep = got.append
        while size - pos >= 4:
            (length,) = unpack_from(buffer, pos)
            stop = pos + 4 + length
            if stop > size:
                break
            keep(unpackb(view[pos + 4 : stop]))
            pos = stop
        tail[0] = buffer[pos:]
        return got

    return encode, decode


def bare(system: str, codec: Callable[[list[bytes]], Codec]) -> Runner:
    """A bare framing loop: encode a batch, decode it, check it; no sessions, no ACKs."""

    def run(pool: list[bytes], messages: int, batch: int) -> Run:
        encode, decode = codec(pool)
        checker = Checker(system, pool)
        check, clock = checker.check, time.perf_counter
        write = read = checking = 0.0
        sent = 0
        start = clock()
        while checker.taken < messages:
            t0 = clock()
            end = min(sent + batch, messages)
            data = encode(sent, end)
            sent = end
            t1 = clock()
            got = decode(data)
            t2 = clock()
            check(got)
            t3 = clock()
            write, read, checking = write + t1 - t0, read + t2 - t1, checking + t3 - t2
            if not got and sent == messages:
                raise BenchError(f"{system}: bytes left undecoded")
        seconds = clock() - start
        phases = {"write": write, "read": read, "check": checking}
        return Run(system, len(pool[0]), messages, checker.taken, seconds, phases)

    return run


SYSTEMS: dict[str, tuple[Runner, str]] = {
    CORE: (
        run_core,
        "client `Session.send` -> `data_to_send` -> server `receive_data` -> `take_messages`, "
        "ACK bytes carried back; default `Params()` (window 1024 messages / 1 MiB)",
    ),
    CORE_BATCH: (
        functools.partial(run_core, batched=True),
        "as `core`, but each batch is offered to one `Session.send_many` call "
        "(what an adapter does with messages queued while it waited)",
    ),
    BARE_UNPACKER: (
        bare(BARE_UNPACKER, _unpacker),
        "msgpack bin per payload (its header is the length prefix) into one reused "
        "`Packer(autoreset=False)`; a streaming `Unpacker` fed each batch",
    ),
    BARE_STRUCT: (
        bare(BARE_STRUCT, _struct),
        "4-byte big-endian length + msgpack body from one reused `Packer`; "
        "`struct.unpack_from` + `msgpack.unpackb` on a memoryview per frame",
    ),
}


def summarise(runs: list[Run], sizes: Iterable[int]) -> Json:
    """Per size: every system's rates and phases, which bare is faster, and core/bare."""
    by_size: Json = {}
    for size in sizes:
        entry: Json = {}
        for name in SYSTEMS:
            mine = [run for run in runs if run.size == size and run.system == name]
            phases = [run.phase_ns() for run in mine]
            entry[name] = {
                "rate": spread([run.rate for run in mine]),
                "ns_per_message": {
                    phase: spread([p[phase] for p in phases])["median"]
                    for phase in (*PHASES, "other")
                },
                "repetitions": [run.to_json() for run in mine],
            }
        bare = max(BARES, key=lambda name: float(entry[name]["rate"]["median"]))
        entry["bare"] = bare
        entry["ratio"] = entry[CORE]["rate"]["median"] / entry[bare]["rate"]["median"]
        entry["ratio_batch"] = entry[CORE_BATCH]["rate"]["median"] / entry[bare]["rate"]["median"]
        # Core and bare run next to each other in each repetition: their ratio
        # per repetition shows how much of the spread is the machine drifting.
        entry["ratio_per_repetition"] = spread(
            [
                core_rep["rate"] / bare_rep["rate"]
                for core_rep, bare_rep in zip(
                    entry[CORE]["repetitions"], entry[bare]["repetitions"], strict=True
                )
            ]
        )
        entry["ratio_to"] = {
            name: entry[CORE]["rate"]["median"] / entry[name]["rate"]["median"] for name in BARES
        }
        by_size[str(size)] = entry
    return by_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "batch", int, DEFAULT_BATCH, help="messages per write / data_to_send")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the core at 64 B: auto = when it misses the target in a full run",
    )


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "repeat", "batch")
    quick, batch = bool(args.quick), args.batch
    messages = given(args, "messages", DEFAULT_MESSAGES, QUICK_MESSAGES)
    repeat = given(args, "repeat", 7, 3)
    warmup = min(messages, WARMUP_MESSAGES)
    banner = f"{messages:,} messages x {repeat}, batch {batch}, {SIZES} B, no sockets"

    def body(ctx: Context) -> Json:
        runs: list[Run] = []
        for size in SIZES:
            pool = make_pool(size)

            def one(name: str, _rep: int, pool: list[bytes] = pool) -> Run:
                return SYSTEMS[name][0](pool, messages, batch)

            def warm(name: str, pool: list[bytes] = pool) -> Run:
                return SYSTEMS[name][0](pool, warmup, batch)

            def show(run: Run) -> str:
                return f"{run.size:>5} B  {run.system:<14} {run.rate:>13,.0f} msg/s"

            runs += ctx.passes(list(SYSTEMS), one, repeat, warm, show)
        sizes = summarise(runs, SIZES)
        ratio = float(sizes[str(TARGET_SIZE)]["ratio"])
        hot: Profile | None = None
        if args.profile == "always" or (args.profile == "auto" and not quick and ratio < TARGET):
            count = min(messages, PROFILE_MESSAGES)
            print(f"  profiling the core at {TARGET_SIZE} B ({count:,} messages)", file=sys.stderr)
            pool = make_pool(TARGET_SIZE)
            hot = profile(lambda: run_core(pool, count, batch))
        return {
            "config": {
                "messages": messages,
                "repeat": repeat,
                "batch": batch,
                "warmup_messages": warmup,
                "payload_sizes": list(SIZES),
                "distinct_payloads": POOL,
                "core_params": asdict(Params()),
                "timer": "time.perf_counter",
            },
            "systems": {name: description for name, (_, description) in SYSTEMS.items()},
            "phases": PHASE_NOTES,
            "sizes": sizes,
            "target": {"payload": TARGET_SIZE, "ratio": TARGET, "met": ratio >= TARGET},
            "profile": None
            if hot is None
            else {
                "tool": hot.tool,
                "payload": TARGET_SIZE,
                "messages": min(messages, PROFILE_MESSAGES),
                "seconds": hot.seconds,
                "hotspots": [asdict(spot) for spot in hot.hotspots],
            },
            "markdown": markdown,
        }

    return scenario(args, CORE, banner, body)


def headlines(entry: Json) -> list[Headline]:
    """Messages per second of every system, one row per payload size (no sockets)."""
    return [
        Headline(
            CORE,
            f"{size} B, one process, no sockets",
            "msg/s",
            {name: f"{by_system[name]['rate']['median']:,.0f}" for name in SYSTEMS},
        )
        for size, by_system in entry["sizes"].items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The core keeps at least half of the faster bare loop's rate at 64 B, judged on the
    ratio within each repetition."""
    target = entry["target"]
    by_system = entry["sizes"].get(str(target["payload"]))
    if by_system is None:
        return []
    paired = by_system["ratio_per_repetition"]["values"]
    return [
        Target(
            CORE,
            f"`core` ≥ {target['ratio']:.0%} of the bare framing's msg/s ({target['payload']} B)",
            f"{by_system['ratio']:.1%} of `{by_system['bare']}` (repetitions "
            f"{values_range(paired)})",
            judged(entry, paired, target["ratio"]),
        )
    ]


def _rate(stats: Json) -> str:
    return f"{stats['median']:,.0f} [{stats['min']:,.0f}-{stats['max']:,.0f}]"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## core`` section of RESULTS.md: command, summary, every system, phases, profile."""
    config, machine, sizes, hot = (
        entry["config"],
        entry["machine"],
        entry["sizes"],
        entry["profile"],
    )
    state = " with uncommitted changes" if commit["dirty"] else ""
    state += (
        " (+ untracked files)" if any(line.startswith("??") for line in commit["status"]) else ""
    )
    impl = {"c": "C extension", "python": "pure Python"}.get(machine["msgpack_impl"], "?")
    summary, systems, phases = [], [], []
    for size, by in sizes.items():
        bare, paired = by["bare"], by["ratio_per_repetition"]
        summary.append(
            [
                f"{size} B",
                _rate(by[CORE]["rate"]),
                _rate(by[bare]["rate"]),
                f"`{bare}`",
                f"{by['ratio']:.1%} [{paired['min']:.1%}-{paired['max']:.1%}]",
                _rate(by[CORE_BATCH]["rate"]),
                f"{by['ratio_batch']:.1%}",
            ]
        )
        for name in SYSTEMS:
            stats, per = by[name]["rate"], by[name]["ns_per_message"]
            systems.append(
                [f"{size} B", f"`{name}`"]
                + [f"{stats[key]:,.0f}" for key in ("median", "min", "max")]
                + [f"{1e9 / stats['median']:,.0f}"]
                + [f"{by['ratio_to'][name]:.1%}" if name in BARES else ""]
                + [str(sum(rep["lost"] for rep in by[name]["repetitions"]))]
            )
            phases.append(
                [f"{size} B", f"`{name}`"]
                + [f"{per[phase]:,.0f}" if per[phase] >= 0.5 else "-" for phase in PHASES]
                + [f"{per['other']:,.0f}", f"{sum(per.values()):,.0f}"]
            )
    target = targets(entry, {})[0]
    lines = [
        f"Command: `{entry['command']}` · JSON: `{display_path(path)}`",
        "",
        f"Commit `{commit['commit_short']}`{state}, {entry['started_at']}; "
        f"{machine['cpu_model']}, {machine['cores']} cores; "
        f"{machine['python_implementation']} {machine['python']}; "
        f"msgpack {machine['msgpack']} ({impl}); uvloop {machine['uvloop']} (not used here).",
        "",
        f"{config['messages']:,} messages per pass, {config['repeat']} passes per system and "
        f"size, interleaved; {config['batch']} messages per write; "
        f"{config['distinct_payloads']:,} distinct payloads cycled, every message taken checked "
        "in order inside the timed loop. One process, no sockets. Median [min-max] msg/s; "
        "core/bare: ratio of the medians [min-max within each repetition].",
        "",
        markdown_table(
            "payload|core msg/s|bare msg/s|bare is|core/bare|core-batch msg/s|core-batch/bare",
            summary,
        ),
        "",
        f"Target: {target.target}: {target.measured}: {verdict(target.verdict)}.",
        "",
        "Every system (msgs/s over all passes; lost = messages sent and never taken):",
        "",
        markdown_table("payload|system|median|min|max|ns/msg|core/this|lost", systems),
        "",
        "Where the time goes, measured without a profiler (ns per message, median of the "
        "passes; the clock is read at each phase boundary of every batch):",
        "",
        markdown_table(["payload", "system", *PHASES, "other", "total"], phases),
        "",
        *(f"- *{phase}*: {note}" for phase, note in PHASE_NOTES.items()),
    ]
    if hot is not None:
        lines += [
            "",
            f"### Profile of the core at {hot['payload']} B",
            "",
            f"{hot['tool']}, one `core` pass of {hot['messages']:,} messages "
            f"({hot['seconds']:.2f} s under the profiler, which inflates per-call costs; "
            "the phase split above is the unbiased figure). Top functions by self time, "
            "with their share of the whole pass; *incl.* adds what they call:",
            "",
            markdown_table(
                "function|where|self|incl.",
                [
                    [
                        f"`{h['function']}`",
                        f"`{h['location']}`",
                        f"{h['self_share']:.1%}",
                        f"{h['total_share']:.1%}",
                    ]
                    for h in hot["hotspots"]
                ],
            ),
        ]
    return "\n".join(lines) + "\n"
