"""The operator's doors of ``sessiond serve --workers N``: one ``--metrics`` endpoint and
one ``--admin-socket`` for every worker, served by the supervisor.

The supervisor makes a private directory (mode 0700, in ``$TMPDIR``; removed when it
exits cleanly, else by the next supervisor to start: :func:`make_directory`,
:func:`remove_abandoned`) and gives each worker process it starts a socket path there. The worker
answers on it (:class:`WorkerDoor`, mode 0600) what its own admin socket would (``list``,
``end``) plus ``metrics`` (every metric it would serve, as JSON) and ``ready``. The
supervisor asks every worker when it is asked itself (:class:`Gatherer`):

* ``/metrics`` (:class:`SupervisorMetrics`): each worker's series with a
  ``worker="N"`` label, N its *slot* (0 to N-1, the same across restarts of that slot).
  A counter (histograms too) is summed over every process that has occupied the slot:
  a process that exited is counted with the values it sent as it exited after a drain
  (over its link, sessiond/workers.py), else with those of its last scrape, so a
  restarted worker's counters never go down. What a worker killed or crashed counted
  after its last scrape is lost. Gauges are the slot's
  current worker's. Then the supervisor's own: ``sessiond_workers``,
  ``sessiond_worker_up``, ``sessiond_worker_restarts_total``,
  ``sessiond_worker_scrape_failures_total`` and its process's
  ``sessiond_supervisor_process_*``.
* ``/readyz``: ready while at least one worker is (a worker says why not: starting,
  draining, its session store unavailable); ``/healthz``: the supervisor runs.
* the admin socket (:class:`SupervisorAdmin`): ``list`` merges every worker's
  sessions (each with its ``worker``); ``end`` finds the one session with that prefix
  on whichever worker holds it and ends it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as CollectorBase

from .admin import AdminServer, UnixDoor, prefix_problem
from .metrics import Collector, HttpDoor, Source, registry
from .server import Server

#: How long the supervisor waits for one worker's answer.
DOOR_TIMEOUT = 5.0
#: The largest answer read from a worker (a list of every session it holds).
ANSWER_LIMIT = 256 * 1024 * 1024
#: The longest path a unix socket can have on Linux (108 bytes with the final NUL).
MAX_SOCKET_PATH = 107
#: The private directory's name: this, then mkdtemp's eight random characters.
DIRECTORY_PREFIX = "sessiond-doors-"
#: The file in it that says its supervisor had locked it (and its PID, for people).
MARKER = "supervisor.pid"
#: The longest name :meth:`Gatherer.door_for` gives a socket in its directory, and
#: the longest name mkdtemp gives the directory.
_LONGEST_NAME = len("99999-99999999.sock")
_LONGEST_DIRECTORY = len(DIRECTORY_PREFIX) + len("xxxxxxxx")
#: Family types whose samples only grow (summed over a slot's processes), but for
#: their ``_created`` timestamps; of a summary, only ``_sum`` and ``_count`` do.
_CUMULATIVE = ("counter", "histogram")

Key = tuple[str, str, tuple[tuple[str, str], ...]]  # family, sample, labels


class DoorError(Exception):
    """A worker did not answer (gone, stuck or unreadable)."""


def socket_directory_problem(base: str | None = None) -> str | None:
    """Why the workers' private sockets cannot live under *base* (default ``$TMPDIR``),
    or None: a unix socket path has at most :data:`MAX_SOCKET_PATH` bytes."""
    base = base if base is not None else tempfile.gettempdir()
    longest = len(os.fsencode(base)) + 1 + _LONGEST_DIRECTORY + 1 + _LONGEST_NAME
    if longest <= MAX_SOCKET_PATH:
        return None
    return (
        f"the temporary directory {base} is too long for the workers' private sockets "
        f"(their paths would reach {longest} bytes; a unix socket path has at most "
        f"{MAX_SOCKET_PATH}): set TMPDIR to a shorter directory, such as /tmp"
    )


def make_directory(base: str | None = None) -> tuple[Path, int]:
    """A new private directory (mode 0700) under *base* (default ``$TMPDIR``), and a
    descriptor that holds a shared ``flock`` on it: keep it open while the directory is
    in use, close it after removing the directory.

    The lock is what tells a live supervisor's directory from one left by a supervisor
    that was killed (:func:`remove_abandoned`): the kernel drops it when the process ends,
    however it ends, so no PID is compared and neither PID reuse nor another PID
    namespace sharing ``$TMPDIR`` can fool it. (systemd-tmpfiles skips a locked
    directory too, so a long-running supervisor's sockets are not aged out of /tmp.)
    :data:`MARKER` is written only once the lock is held: a directory without it is
    one being made at that moment, and is left alone.
    """
    directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX, dir=base))
    fd = -1
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Blocks only while a starting supervisor looks at this directory (and sees no
        # marker): it cannot take it for abandoned.
        fcntl.flock(fd, fcntl.LOCK_SH)
        marker = os.open(
            MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=fd
        )
        with os.fdopen(marker, "w") as file:
            file.write(f"{os.getpid()}\n")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
        raise
    return directory, fd


def remove_abandoned(base: str | None = None) -> list[Path]:
    """Remove the private directories under *base* (default ``$TMPDIR``) that supervisors
    which are gone (killed, crashed) left behind; the paths removed.

    Only directories named by :func:`make_directory`, of this user, with the marker, whose
    lock no process holds: that of a live supervisor (of any PID namespace) is locked, and
    one being made has no marker yet. Two supervisors starting at once each take a
    directory's lock exclusively before removing it, so they never both remove one.
    """
    base = base if base is not None else tempfile.gettempdir()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(DIRECTORY_PREFIX):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, a symbolic link, not a directory, not ours to read
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # locked: its supervisor runs
            try:
                os.stat(MARKER, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # being made (or its maker died before the marker): left alone
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        finally:
            os.close(fd)  # and its lock
    return removed


async def ask(path: str, request: dict[str, Any], timeout: float = DOOR_TIMEOUT) -> dict[str, Any]:
    """Send one request to the door at *path*; its answer (:class:`DoorError` if none)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            chunks, size = [], 0
            while chunk := await reader.read(1 << 20):
                size += len(chunk)
                if size > ANSWER_LIMIT:
                    raise DoorError(f"{path}: answer over {ANSWER_LIMIT} bytes")
                chunks.append(chunk)
        answer = json.loads(b"".join(chunks))
    except (OSError, TimeoutError, ValueError) as exc:
        raise DoorError(f"{path}: {exc or type(exc).__name__}") from None
    finally:
        if writer is not None:
            writer.close()
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise DoorError(f"{path}: {answer!r:.200}")
    return answer


def to_wire(metrics: CollectorRegistry) -> list[dict[str, Any]]:
    """Every family of *metrics* as JSON-ready dicts (what a worker's door sends)."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "unit": family.unit,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in metrics.collect()
    ]


# ------------------------------------------------------------------ worker side


class WorkerDoor(AdminServer):
    """A worker's private socket: ``list`` and ``end`` as on the admin socket, ``metrics``
    (every family :class:`~sessiond.metrics.MetricsServer` would serve) and ``ready``."""

    def __init__(self, server: Server, path: str, source: Source) -> None:
        super().__init__(server, path)
        self.source = source
        self.collector = Collector(source)
        self.registry = registry(self.collector)

    async def respond(self, request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        if op in ("metrics", "ready"):
            ready, why = self.source.readiness()
            answer: dict[str, Any] = {"ok": True, "ready": ready, "why": why}
            if op == "metrics":
                answer["families"] = await self.families()
            return answer
        return self.answer(request)

    async def families(self) -> list[dict[str, Any]]:
        """Every family this worker would serve, as :func:`to_wire` gives them."""
        await self.collector.refresh()
        try:
            return to_wire(self.registry)
        finally:
            self.collector.scan = None


# -------------------------------------------------------------- supervisor side


@dataclass(frozen=True, slots=True)
class Occupant:
    """One live worker process as the gatherer sees it."""

    slot: int
    pid: int
    door: str
    current: bool  # the slot's current worker (not one being replaced)


class Supervised(Protocol):
    """What the gatherer reads of the supervisor (sessiond/workers.py)."""

    def occupants(self) -> list[Occupant]:
        """Every live worker process that has a door."""
        ...

    def phase(self) -> str:
        """``starting``, ``serving`` or ``draining``."""
        ...

    def restarts(self, slot: int) -> int:
        """Workers started for *slot* after one exited unasked."""
        ...


class _Scraped:
    """One worker process's last answer to ``metrics``."""

    __slots__ = ("counters", "gauges", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, float] = {}


class Gatherer:
    """The supervisor's side: the private directory, and its workers' metrics kept
    from one scrape to the next (:meth:`retire` a process once it has exited).

    Made, it has removed what dead supervisors left under *base* (:attr:`removed`)."""

    def __init__(self, count: int, supervised: Supervised, base: str | None = None) -> None:
        problem = socket_directory_problem(base)
        if problem is not None:
            raise ValueError(problem)
        self.removed = remove_abandoned(base)
        self.directory, self._lock = make_directory(base)
        self.count = count
        self.supervised = supervised
        self.carried: list[dict[Key, float]] = [{} for _ in range(count)]
        self.last: dict[int, _Scraped] = {}  # pid -> its last scrape
        self.kinds: dict[str, tuple[str, str, str]] = {}  # family -> (type, help, unit)
        self.up = [False] * count  # the slot's current worker answered the last scrape
        self.failures = [0] * count
        self._serial = 0

    def door_for(self, slot: int) -> str:
        """A socket path, never given before, for a new worker of *slot*."""
        self._serial += 1
        return str(self.directory / f"{slot}-{self._serial}.sock")

    def retire(self, pid: int, slot: int, report: Any = None) -> None:
        """Process *pid* of *slot* has exited: its last counters stay in the slot's sums,
        those of its *report* (its families as it exited after a drain) if it sent one,
        else those of its last scrape."""
        scraped = self.last.pop(pid, None)
        if isinstance(report, list):
            with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                scraped = self._read(slot, report)
        if scraped is not None:
            carried = self.carried[scraped.slot]
            for key, value in scraped.counters.items():
                carried[key] = carried.get(key, 0.0) + value

    def close(self) -> None:
        """Remove the private directory (the supervisor is done)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    async def ask_all(
        self, request: dict[str, Any]
    ) -> list[tuple[Occupant, dict[str, Any] | None]]:
        """Every live worker's answer to *request* (None: it did not answer)."""
        occupants = self.supervised.occupants()

        async def one(occupant: Occupant) -> dict[str, Any] | None:
            try:
                return await ask(occupant.door, request)
            except DoorError:
                return None

        answers = await asyncio.gather(*(one(o) for o in occupants))
        return list(zip(occupants, answers, strict=True))

    async def scrape(self) -> None:
        """Ask every worker for its metrics; keep them for :meth:`collect`."""
        up = [False] * self.count
        answers = await self.ask_all({"op": "metrics"})
        live = {o.pid for o in self.supervised.occupants()}
        for occupant, answer in answers:
            if answer is None:
                self.failures[occupant.slot] += 1
                continue
            if occupant.pid not in live:
                continue  # it exited meanwhile: retire() keeps its last counts
            self.last[occupant.pid] = self._read(occupant.slot, answer.get("families", []))
            if occupant.current:
                up[occupant.slot] = True
        self.up = up

    def _read(self, slot: int, families: Sequence[Any]) -> _Scraped:
        scraped = _Scraped(slot)
        for family in families:
            name, kind = str(family["name"]), str(family["type"])
            self.kinds.setdefault(name, (kind, str(family["help"]), str(family.get("unit", ""))))
            for raw_name, labels, value in family["samples"]:
                sample_name = str(raw_name)
                key = (name, sample_name, tuple(sorted(labels.items())))
                cumulative = (kind in _CUMULATIVE and not sample_name.endswith("_created")) or (
                    kind == "summary" and sample_name.endswith(("_sum", "_count"))
                )
                (scraped.counters if cumulative else scraped.gauges)[key] = float(value)
        return scraped

    async def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: ready while at least one worker is."""
        phase = self.supervised.phase()
        if phase != "serving":
            return False, phase
        answers = await self.ask_all({"op": "ready"})
        reasons = []
        for occupant, answer in sorted(answers, key=lambda pair: pair[0].slot):
            if not occupant.current:
                continue
            if answer is not None and answer.get("ready"):
                return True, "ready"
            why = "no answer" if answer is None else str(answer.get("why"))
            reasons.append(f"worker {occupant.slot}: {why}")
        return False, "; ".join(reasons) or "no worker running"

    def collect(self) -> Iterator[Metric]:
        """Every worker's families with its ``worker`` label, then the supervisor's own."""
        families: dict[str, Metric] = {}
        current = {o.slot: o.pid for o in self.supervised.occupants() if o.current}
        for slot in range(self.count):
            samples = dict(self.carried[slot])
            for scraped in self.last.values():
                if scraped.slot == slot:
                    for key, value in scraped.counters.items():
                        samples[key] = samples.get(key, 0.0) + value
            now = self.last.get(current.get(slot, -1))
            if self.up[slot] and now is not None:
                samples.update(now.gauges)
            for (name, sample, labels), value in samples.items():
                family = families.get(name)
                if family is None:
                    kind, doc, unit = self.kinds[name]
                    family = families[name] = Metric(name, doc, kind, unit)
                family.add_sample(sample, {**dict(labels), "worker": str(slot)}, value)
        yield from families.values()
        yield GaugeMetricFamily("sessiond_workers", "worker processes asked for", self.count)
        up = GaugeMetricFamily(
            "sessiond_worker_up", "1 if the slot's worker answered this scrape", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "sessiond_worker_restarts",
            "workers started again after one exited unasked",
            labels=["worker"],
        )
        failures = CounterMetricFamily(
            "sessiond_worker_scrape_failures",
            "scrapes a worker did not answer",
            labels=["worker"],
        )
        for slot in range(self.count):
            up.add_metric([str(slot)], int(self.up[slot]))
            restarts.add_metric([str(slot)], self.supervised.restarts(slot))
            failures.add_metric([str(slot)], self.failures[slot])
        yield from (up, restarts, failures)


class _Gathered(CollectorBase):
    def __init__(self, gatherer: Gatherer) -> None:
        self.gatherer = gatherer

    def collect(self) -> Iterator[Metric]:
        return self.gatherer.collect()


class SupervisorMetrics(HttpDoor):
    """The supervisor's ``--metrics`` listener: every worker's, gathered at each request."""

    def __init__(self, gatherer: Gatherer) -> None:
        metrics = CollectorRegistry(auto_describe=False)
        metrics.register(_Gathered(gatherer))
        ProcessCollector(namespace="sessiond_supervisor", registry=metrics)
        super().__init__(metrics)
        self.gatherer = gatherer
        self._ready = (False, "starting")

    def readiness(self) -> tuple[bool, str]:
        return self._ready

    async def prepare(self, path: str) -> None:
        if path == "/metrics":
            await self.gatherer.scrape()
        elif path == "/readyz":
            self._ready = await self.gatherer.readiness()


class SupervisorAdmin(UnixDoor):
    """The supervisor's ``--admin-socket``: ``list`` and ``end`` across every worker."""

    def __init__(self, gatherer: Gatherer, path: str) -> None:
        super().__init__(path)
        self.gatherer = gatherer

    async def respond(self, request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "list":
            sessions, missing = await self._sessions()
            answer: dict[str, Any] = {"ok": True, "sessions": sessions}
            if missing:
                answer["unreachable"] = missing
            return answer
        if op == "end":
            return await self._end(str(request.get("id", "")), str(request.get("reason", "")))
        return {"ok": False, "error": "expected op list or end"}

    async def _sessions(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every worker's sessions (each with its worker's slot) and the slots that did
        not answer."""
        sessions: list[dict[str, Any]] = []
        missing: set[int] = set()
        for occupant, answer in await self.gatherer.ask_all({"op": "list"}):
            if answer is None:
                missing.add(occupant.slot)
                continue
            for row in answer.get("sessions", []):
                sessions.append({**row, "worker": occupant.slot, "pid": occupant.pid})
        sessions.sort(key=lambda row: row["age"], reverse=True)
        return sessions, sorted(missing)

    async def _end(self, prefix: str, reason: str) -> dict[str, Any]:
        prefix = prefix.lower()
        problem = prefix_problem(prefix)
        if problem is not None:
            return {"ok": False, "error": problem}
        sessions, missing = await self._sessions()
        found = [row for row in sessions if str(row["id"]).startswith(prefix)]
        unsure = f" (worker {', '.join(map(str, missing))} did not answer)" if missing else ""
        if not found:
            return {"ok": False, "error": f"no session {prefix}{unsure}"}
        if len({row["id"] for row in found}) > 1:
            return {"ok": False, "error": f"{len(found)} sessions start with {prefix}: give more"}
        row = found[0]
        door = next(
            (o.door for o in self.gatherer.supervised.occupants() if o.pid == row["pid"]), None
        )
        if door is None:
            return {"ok": False, "error": f"session {prefix}: its worker has exited"}
        try:
            answer = await ask(door, {"op": "end", "id": row["id"], "reason": reason})
        except DoorError as exc:
            return {"ok": False, "error": f"session {prefix}: worker {row['worker']}: {exc}"}
        return {**answer, "worker": row["worker"]}
