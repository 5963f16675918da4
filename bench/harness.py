"""The scenario harness: everything a scenario does besides its own measurement.

In the spirit of pyperf's ``Runner`` (STYLE.md habit 15), :func:`scenario` reads the
machine and commit, pins the load generator, opens a temporary directory and a uvloop
runner, and hands the body a :class:`Context` (pinned servers, repetitions with warm-up
and rotation, notes); then it writes the JSON, prints the markdown and, for a clean
default run, replaces the scenario's section of RESULTS.md. Also the shared pieces of
every section (:func:`header`, :func:`legend`, the cells).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import BenchError
from .processes import (
    CPU_CLOCK,
    HOST,
    CoreLoad,
    Pinning,
    ServerProcess,
    choose_pinning,
    loop_name,
    new_loop,
    pinned_loadgen,
    raise_nofile,
    server,
)
from .results import (
    Json,
    command_line,
    commit_info,
    display_path,
    machine_info,
    publish,
    spread,
)

#: Above this share of a pinned core taken by other processes, the report says so.
OTHERS_NOTABLE = 0.1

R = TypeVar("R")
S = TypeVar("S")


#: Per-pass keys kept as a list over the passes rather than spread (labels, flags).
LISTED = ("bound", "client_bound", "cores_full", "stopped_by")
#: Per-pass settings, the same in every pass: kept as they are.
FIXED = ("sessions", "window_per_session", "payload_size")
#: Per-pass counts that are summed over the passes.
SUMMED = ("lost", "duplicates", "sessions_lost", "out_of_order", "late", "transports_not_closed")


def summarise(reps: Sequence[Json]) -> Json:
    """The passes *reps* (each a flat JSON of figures) as one entry: every number's
    :func:`~bench.results.spread`, :data:`SUMMED` counts summed, :data:`LISTED` labels
    listed, the other processes' share spread per core, and every pass kept."""
    out: Json = {}
    for key, value in reps[0].items():
        values = [rep.get(key) for rep in reps]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if key in FIXED:
            out[key] = value
        elif key in SUMMED:
            out[key] = sum(v or 0 for v in values)
        elif key in LISTED:
            out[key] = values
        elif len(numbers) == len(values):
            out[key] = spread([float(v) for v in numbers])
    out["other_load_share"] = other_load([rep.get("other_load_share") for rep in reps])
    out["repetitions"] = list(reps)
    return out


def quantiles(values: Sequence[float], points: int = 50) -> list[float]:
    """*points* + 1 nearest-rank quantiles of *values* (0 %, ..., 100 %), for a plot."""
    ordered = sorted(values)
    return [ordered[round((len(ordered) - 1) * k / points)] for k in range(points + 1) if ordered]


def other_load(others: Sequence[Sequence[float] | None]) -> Json | None:
    """The spread of what other processes took of the server's and the loadgen's cores."""
    measured = [pair for pair in others if pair is not None]
    cores = {"server_core": [p[0] for p in measured], "loadgen_core": [p[1] for p in measured]}
    return {core: spread(shares) for core, shares in cores.items()} if measured else None


def given(args: argparse.Namespace, name: str, full: R, quick: R) -> R:
    """Option *name* if given, else its full-run or ``--quick`` default."""
    value: R | None = getattr(args, name, None)
    return (quick if args.quick else full) if value is None else value


# ----------------------------------------------------------------- running


@dataclass
class Context:
    """One scenario's run: its options, machine, pinning, runner and servers."""

    args: argparse.Namespace
    name: str
    pinning: Pinning
    tmp: Path
    runner: asyncio.Runner
    stack: contextlib.ExitStack
    nofile: tuple[int, int]
    load: CoreLoad
    servers: dict[str, Json] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    def given(self, name: str, full: R, quick: R) -> R:
        return given(self.args, name, full, quick)

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    def server(self, name: str, argv: list[str], pinning: Pinning | None = None) -> ServerProcess:
        """``python -m ARGV`` on a free port, pinned (unless *pinning* says otherwise), until
        the scenario ends."""
        proc = server(name, argv, pinning or self.pinning, self.tmp)
        return self._keep(self.stack.enter_context(proc))

    def process(self, name: str, command: list[str], port: int, **kwargs: Any) -> ServerProcess:
        """Any server command, pinned, until the scenario ends."""
        proc = ServerProcess(name, command, port, self.pinning, self.tmp, **kwargs)
        return self._keep(self.stack.enter_context(proc))

    @contextlib.contextmanager
    def fresh_server(self, name: str, argv: list[str]) -> Iterator[ServerProcess]:
        """A server for the body only (a fresh daemon per measurement)."""
        with server(name, argv, self.pinning, self.tmp) as proc:
            self._keep(proc)
            yield proc
            self.servers[name].update(proc.stop())

    def _keep(self, proc: ServerProcess) -> ServerProcess:
        self.servers[proc.name] = {"name": proc.name, **proc.describe()}
        self.stack.callback(lambda: self.servers[proc.name].update(proc.stop()))
        return proc

    def timed(
        self, proc: ServerProcess, body: Callable[[], R]
    ) -> tuple[R, tuple[float, float] | None]:
        """*body*, one pass against *proc*, and what others took of the pinned cores."""
        gc.collect()
        proc.check_alive()
        server0, cpu0 = proc.cpu_seconds(), time.process_time()
        self.load.start()
        try:
            result = body()
        except BenchError:
            proc.check_alive()  # a dead server explains more than a lost connection
            raise
        return result, self.load.others(proc.cpu_seconds() - server0, time.process_time() - cpu0)

    def passes(
        self,
        systems: Sequence[S],
        one: Callable[[S, int], R],
        repeat: int,
        warmup: Callable[[S], object] | None = None,
        show: Callable[[R], str] = str,
    ) -> list[R]:
        """*warmup* each system, then *repeat* rounds of ``one(system, rep)``, the
        systems' order rotated each round, a progress line per pass."""
        for system in systems if warmup is not None else ():
            assert warmup is not None
            warmup(system)
        results: list[R] = []
        for rep in range(repeat):
            shift = rep % max(1, len(systems))
            for system in [*systems[shift:], *systems[:shift]]:
                gc.collect()
                result = one(system, rep)
                results.append(result)
                print(f"  {self.name} rep {rep + 1}/{repeat}  {show(result)}", file=sys.stderr)
        return results


def scenario(
    args: argparse.Namespace, name: str, banner: str, body: Callable[[Context], Json]
) -> int:
    """Run *body* in a :class:`Context`; publish what it returns with its circumstances.

    *body* returns the entry's own fields and ``"markdown"``: the function that
    writes its section (``markdown(entry, commit, path)``).
    """
    command, started, begun = (
        command_line(),
        datetime.datetime.now(datetime.UTC),
        time.perf_counter(),
    )
    machine, commit, pinning, nofile = (
        machine_info(),
        commit_info(),
        choose_pinning(),
        raise_nofile(),
    )
    print(f"bench {name}: {banner}; {pinning.note}", file=sys.stderr, flush=True)
    with (
        pinned_loadgen(pinning),
        tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp,
        asyncio.Runner(loop_factory=new_loop) as runner,
        contextlib.ExitStack() as stack,
    ):
        context = Context(args, name, pinning, Path(tmp), runner, stack, nofile, CoreLoad(pinning))
        fields = body(context)
        affinity = sorted(os.sched_getaffinity(0)) if pinning.pinned else None
    markdown = fields.pop("markdown")
    exits = [
        f"server {n} exited with {s['exit_code']}"
        for n, s in context.servers.items()
        if s.get("exit_code") not in (0, None) and not s.get("killed")
    ]
    config = fields.pop("config", {})
    entry: Json = {
        "command": command,
        "argv": sys.argv[1:],
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 3),
        "quick": context.quick,
        "machine": machine,
        "pinning": {**pinning.to_json(), "loadgen_affinity": affinity},
        "config": {
            "host": HOST,
            "event_loop": loop_name(),
            "nofile_soft_hard": list(nofile),
            "cpu_clock": CPU_CLOCK,
            "gc": "enabled; gc.collect() before each pass",
            **config,
        },
        "servers": context.servers,
        **fields,
    }
    entry["notes"] = [*entry.get("notes", []), *context.notes, *exits]
    return publish(args, name, entry, commit, markdown)


def option(
    parser: argparse.ArgumentParser, name: str, kind: Any, full: Any, quick: Any = None, **kw: Any
) -> None:
    """``--NAME``, its help ending with the full-run and ``--quick`` defaults. Without a
    *quick* default a number defaults to *full*, else None (read it with :func:`given`)."""
    shown = f"default {full}" + ("" if quick is None else f"; --quick {quick}")
    kw["help"] = f"{kw.get('help', '')} ({shown})".lstrip()
    default = full if quick is None and not isinstance(full, str) else None
    parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, **kw)


def positive(args: argparse.Namespace, *names: str) -> None:
    """Raise :class:`BenchError` unless every option *names* given is positive."""
    bad = [n for n in names if getattr(args, n, None) is not None and getattr(args, n) <= 0]
    if bad:
        raise BenchError(" and ".join(f"--{n.replace('_', '-')}" for n in bad) + " must be > 0")


def counts(text: str, option: str) -> tuple[int, ...]:
    """``1,100`` as (1, 100): positive integers, each once, in the order given."""
    try:
        numbers = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise BenchError(f"{option} {text!r}: expected integers separated by commas") from None
    if not numbers or min(numbers) < 1:
        raise BenchError(f"{option}: at least one number, each at least 1")
    return numbers


# ---------------------------------------------------------------- markdown


def header(entry: Json, commit: Json, path: Path) -> list[str]:
    """The command, commit, machine and pinning lines that open a section."""
    machine = entry["machine"]
    pinning = entry["pinning"]
    state = " with uncommitted changes" if commit["dirty"] else ""
    if any(line.startswith("??") for line in commit["status"]):
        state += " (+ untracked files)"
    where = (
        f"pinned to core {pinning['server_cpu']} (`taskset -c {pinning['server_cpu']}`); "
        f"the load generator pinned to core {pinning['loadgen_cpu']}."
        if pinning["pinned"]
        else f"**{pinning['note']}**."
    )
    return [
        f"Command: `{entry['command']}` · JSON: `{display_path(path)}`",
        "",
        f"Commit `{commit['commit_short']}`{state}, {entry['started_at']}; "
        f"{machine['cpu_model']}, {machine['cores']} cores; "
        f"{machine['python_implementation']} {machine['python']}; msgpack {machine['msgpack']}; "
        f"receive path {machine.get('receive_path', 'pure Python')}; "
        f"uvloop {machine['uvloop']} ({entry['config']['event_loop']} loop in the load "
        f"generator). Servers in their own processes on 127.0.0.1, {where} CPU: "
        "`/proc/PID/task/*/schedstat` (servers, ns) and `time.process_time` (load generator).",
        "",
    ]


def other_load_note(load: Json | None) -> list[str]:
    """A paragraph on the other processes' share of the pinned cores, if measured."""
    if load is None:
        return []
    server_core, loadgen = load["server_core"], load["loadgen_core"]
    busy = max(server_core["max"], loadgen["max"]) > OTHERS_NOTABLE
    return [
        ("**Shared machine.** " if busy else "")
        + "Other processes' share of the pinned cores during the passes (`/proc/stat` busy "
        "time less the server's and the load generator's own): server core median "
        f"{server_core['median']:.0%} (max {server_core['max']:.0%}), load generator core "
        f"median {loadgen['median']:.0%} (max {loadgen['max']:.0%})"
        + ("; the figures measure the contention as much as the systems." if busy else "."),
        "",
    ]


def full_cores_cell(passes: Sequence[Sequence[str]]) -> str:
    """``server 2/3, loadgen 1/3`` (passes with that core full), or ``-``."""
    cells = [
        f"{core} {sum(core in full for full in passes)}/{len(passes)}"
        for core in ("server", "loadgen")
        if any(core in full for full in passes)
    ]
    return ", ".join(cells) or "-"


def bounds_cell(bounds: Sequence[str]) -> str:
    """``client 2/3, server 1/3``: what bound the passes."""
    return ", ".join(f"{b} {bounds.count(b)}/{len(bounds)}" for b in dict.fromkeys(bounds))


def spread_cell(stats: Json, digits: int = 0, unit: str = "") -> str:
    """``median [min-max]`` of a spread (the median alone when they agree)."""
    median = f"{stats['median']:,.{digits}f}{unit}"
    if stats["max"] - stats["min"] < 0.5 * 10**-digits:
        return median
    return f"{median} [{stats['min']:,.{digits}f}-{stats['max']:,.{digits}f}]"


def legend(entry: Json) -> str:
    """What *bound* and *cores full* mean, for a section's prose."""
    threshold = entry["config"].get("client_bound_threshold", 0.9)
    return (
        f"*bound*: `client` when the load generator kept more than {threshold:.0%} of its core "
        "busy (then the client set the pace), `server` likewise, else `round-trip`; *cores "
        "full*: passes in which a pinned core was more than 90 % busy counting other processes."
    )


def notes_lines(entry: Json) -> list[str]:
    return ["Notes: " + "; ".join(entry["notes"]) + ".", ""] if entry.get("notes") else []
