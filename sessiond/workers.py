"""``sessiond serve --workers N``: N worker processes on one port, under a supervisor.

The supervisor (:class:`Supervisor`) listens on nothing itself. Each worker is an
ordinary ``sessiond serve`` started with the supervisor's own arguments (so the
same config file, environment and flags) plus a hidden ``--worker-link SLOT:FD``:
it binds every listener with ``SO_REUSEPORT`` (the kernel spreads new connections
over the workers), writes one byte on its end of a socket pair once it listens
(:meth:`WorkerLink.ready`) and drains when that socket reaches end of file, that
is when the supervisor is gone (:meth:`WorkerLink.watch`).

A session belongs to whichever worker holds it in the shared store, not to a
connection: a client that reconnects after its worker died or drained lands on
any worker and resumes there by the store's rule (a live owner is asked to
release; a dead owner's sessions are claimed once its lease has expired). That
is why more than one worker needs a shared store (:func:`check`).

Signals to the supervisor: SIGTERM and SIGINT send SIGTERM to every worker (each
drains and releases its sessions to the store, protocol.md §11) and exit 0 once
all have exited cleanly. SIGHUP replaces the workers one at a time: start a new
one, wait until it listens, then SIGTERM the old one; a new worker that does not
come up stops the replacement and the old ones keep serving. A worker that exits
unasked is restarted at once, then with a doubling delay while it keeps crashing
within :data:`STABLE_AFTER` seconds of its start.

``--metrics`` and ``--admin-socket`` are the supervisor's: it serves them for every
worker, asking each over a private unix socket (sessiond/gather.py); a worker opens
neither itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .addresses import parse_listen
from .admin import AdminError
from .config import Settings
from .gather import Gatherer, Occupant, SupervisorAdmin, SupervisorMetrics, socket_directory_problem
from .systemd import Notifier

log = logging.getLogger("sessiond.workers")

#: Delay before the second restart of a crash-looping worker; doubles up to BACKOFF_MAX.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that ran this long before exiting was not crash-looping: its next restart
#: is immediate again.
STABLE_AFTER = 10.0
#: How long a new worker may take to listen.
READY_TIMEOUT = 60.0
#: On stop, beyond the drain timeout, before a worker still running is killed.
STOP_MARGIN = 30.0
#: How long a worker's last metrics may take to arrive; the most they may hold.
REPORT_TIMEOUT = 5.0
REPORT_LIMIT = 64 * 1024 * 1024
#: Set by the supervisor for its workers' environment: systemd hears from it alone.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def check(settings: Settings) -> None:
    """``ValueError`` if *settings* ask for several workers without what they need."""
    count = settings.server.workers
    if count == 1:
        return
    if settings.store.url == "memory":
        raise ValueError(
            f"server.workers = {count} (--workers) needs a shared store: set store.url "
            "(--store redis://HOST:PORT/DB); the memory store keeps sessions inside one "
            "process, so a client could not resume on another worker"
        )
    if settings.metrics.listen or settings.admin.socket:
        # The supervisor serves them, through a private socket per worker.
        problem = socket_directory_problem()
        if problem is not None:
            raise ValueError(f"server.workers = {count} with metrics or an admin socket: {problem}")
    for value in settings.server.listen:
        if parse_listen(value).port == 0:
            raise ValueError(
                f"server.workers = {count} needs a fixed port in server.listen, not {value}: "
                "with port 0 every worker would listen on a port of its own"
            )


def describe_status(code: int) -> str:
    """A process's exit status in words: ``exit status 3``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _fields(event: str, **more: Any) -> dict[str, Any]:
    return {"fields": {"event": event, **more}}


# ------------------------------------------------------------------- worker side


class WorkerLink:
    """A worker's end of its socket pair with the supervisor."""

    def __init__(self, slot: int, fd: int, door: str | None = None) -> None:
        self.slot = slot
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        #: Where to answer the supervisor's metrics and admin requests (sessiond/gather.py);
        #: None when it serves neither.
        self.door = door
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def parse(cls, text: str) -> WorkerLink:
        """From ``--worker-link SLOT:FD[:DOOR]``."""
        slot, _, rest = text.partition(":")
        fd, _, door = rest.partition(":")
        return cls(int(slot), int(fd), door or None)

    def ready(self) -> None:
        """Tell the supervisor this worker listens (then it may retire another)."""
        with contextlib.suppress(OSError):  # it is gone: watch() will drain us
            self.sock.send(b"R")

    def watch(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[], None]) -> None:
        """Call *on_lost* (drain) once the supervisor is gone, even after a kill -9."""
        fd = self.sock.fileno()

        def readable() -> None:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                log.warning("supervisor gone: draining", extra=_fields("supervisor-gone"))
                on_lost()

        loop.add_reader(fd, readable)
        self._loop = loop

    def report(self, metrics: bytes) -> None:
        """Exiting after a drain: send the supervisor this worker's last metrics (JSON),
        which it adds to the slot's sums instead of those of its last scrape."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.settimeout(REPORT_TIMEOUT)  # blocking, bounded: the loop is done
            self.sock.sendall(b"M" + metrics)


# --------------------------------------------------------------- supervisor side


class _Worker:
    """One worker process as the supervisor sees it."""

    def __init__(
        self, slot: int, proc: asyncio.subprocess.Process, link: socket.socket, door: str
    ) -> None:
        self.slot = slot
        self.proc = proc
        self.link = link
        self.door = door  # its private socket ("" without metrics or an admin socket)
        self.link_closed = asyncio.Event()
        self.report: Any = None  # its last metrics, sent as it exits after a drain
        self.started = time.monotonic()
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.retiring = False  # we sent SIGTERM: its exit is expected

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        self.retiring = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)


class Supervisor:
    """Runs *count* workers (``python -m sessiond ARGV --worker-link ...``) and keeps
    them running; :meth:`run` returns the supervisor's exit status."""

    def __init__(
        self,
        argv: Sequence[str],
        settings: Settings,
        load_again: Callable[[], Settings] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.settings = settings
        self.count = settings.server.workers
        self.drain_timeout = settings.server.drain_timeout
        self.load_again = load_again
        self.current: list[_Worker | None] = [None] * self.count
        self.live: set[_Worker] = set()
        self.failures = [0] * self.count
        self.restarted = [0] * self.count  # workers started after one exited unasked
        self.gatherer: Gatherer | None = None  # with --metrics or --admin-socket
        self.metrics: SupervisorMetrics | None = None
        self.admin: SupervisorAdmin | None = None
        self.notifier = Notifier()
        self.serving = False
        self.stopping = False
        self.clean = True  # every worker asked to stop exited with status 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rolling: asyncio.Task[None] | None = None
        self._roll_again = False
        env = dict(os.environ)
        for name in _SYSTEMD_VARIABLES:
            env.pop(name, None)
        self._env = env

    # ----------------------------------------------------------------- running

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.replace_all)
        log.info(
            "supervisor pid=%d starting %d workers",
            os.getpid(),
            self.count,
            extra=_fields("supervisor-started", pid=os.getpid(), workers=self.count),
        )
        try:
            if not await self._open_doors():
                return 1
            return await self._supervise(stop)
        finally:
            await self._close_doors()

    async def _supervise(self, stop: asyncio.Event) -> int:
        started = [await self._spawn(slot) for slot in range(self.count)]
        for worker in started:
            if not await self._until_ready(worker) and not stop.is_set():
                log.error(
                    "worker %d pid=%d did not start: stopping",
                    worker.slot,
                    worker.pid,
                    extra=_fields("worker-failed", slot=worker.slot, pid=worker.pid),
                )
                await self._stop_all()
                return 1
        self.serving = True
        if not stop.is_set():
            log.info(
                "supervising %d workers: %s",
                self.count,
                " ".join(f"{w.slot}:pid={w.pid}" for w in started),
                extra=_fields("supervising", pids=[w.pid for w in started]),
            )
            self.notifier.ready(f"{self.count} workers")
        await stop.wait()
        self.notifier.stopping("draining workers")
        await self._stop_all()
        log.info(
            "supervisor stopped%s",
            "" if self.clean else " (a worker did not exit cleanly)",
            extra=_fields("supervisor-stopped", clean=self.clean),
        )
        return 0 if self.clean else 1

    async def _spawn(self, slot: int, current: bool = True) -> _Worker:
        """Start a worker for *slot* (the slot's current one unless *current* is False)."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        door = self.gatherer.door_for(slot) if self.gatherer is not None else ""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sessiond",
                *self.argv,
                "--worker-link",
                f"{slot}:{theirs.fileno()}" + (f":{door}" if door else ""),
                pass_fds=(theirs.fileno(),),
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(slot, proc, ours, door)
        self.live.add(worker)
        if current:
            self.current[slot] = worker
        log.info(
            "worker %d started pid=%d",
            slot,
            worker.pid,
            extra=_fields("worker-started", slot=slot, pid=worker.pid),
        )
        self._task(self._listen_link(worker))
        self._task(self._watch(worker))
        return worker

    def _task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _listen_link(self, worker: _Worker) -> None:
        """``R`` when the worker listens; ``M`` and its last metrics (JSON) when it exits
        after a drain (:meth:`WorkerLink.report`); end of file when it has exited."""
        loop = asyncio.get_running_loop()
        said = bytearray()
        try:
            while True:
                try:
                    data = await loop.sock_recv(worker.link, 65536)
                except OSError:
                    return
                if not data:
                    break
                said += data
                if len(said) > REPORT_LIMIT:
                    return
                if said.startswith(b"R"):
                    self._ready(worker)
            report = said.removeprefix(b"R")
            if report.startswith(b"M"):
                with contextlib.suppress(ValueError):
                    worker.report = json.loads(report[1:])
        finally:
            worker.link_closed.set()

    def _ready(self, worker: _Worker) -> None:
        if not worker.ready.is_set():
            worker.ready.set()
            log.info(
                "worker %d ready pid=%d",
                worker.slot,
                worker.pid,
                extra=_fields("worker-ready", slot=worker.slot, pid=worker.pid),
            )

    async def _until_ready(self, worker: _Worker) -> bool:
        """Wait until *worker* listens: False if it exits or takes too long first."""
        waits = [
            asyncio.ensure_future(worker.ready.wait()),
            asyncio.ensure_future(worker.exited.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return worker.ready.is_set() and not worker.exited.is_set()

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        ran = time.monotonic() - worker.started
        self.live.discard(worker)
        if self.gatherer is not None:
            # Its last metrics, if it drained, came before the end of file on its link.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_TIMEOUT):
                    await worker.link_closed.wait()
            self.gatherer.retire(worker.pid, worker.slot, worker.report)
            if worker.door:  # left by a worker that was killed
                with contextlib.suppress(OSError):
                    os.unlink(worker.door)
        worker.exited.set()
        worker.link.close()
        expected = worker.retiring or self.stopping
        if expected and code != 0:
            self.clean = False
        log.log(
            logging.INFO if expected and code == 0 else logging.WARNING,
            "worker %d pid=%d exited: %s after %.1f s",
            worker.slot,
            worker.pid,
            describe_status(code),
            ran,
            extra=_fields(
                "worker-exited", slot=worker.slot, pid=worker.pid, status=code, seconds=ran
            ),
        )
        if expected or not self.serving or self.current[worker.slot] is not worker:
            return
        slot = worker.slot
        self.current[slot] = None
        self.failures[slot] = 1 if ran >= STABLE_AFTER else self.failures[slot] + 1
        failures = self.failures[slot]
        delay = 0.0 if failures == 1 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 2))
        log.warning(
            "worker %d restarting in %.1f s (%d unasked exit%s in a row)",
            slot,
            delay,
            failures,
            "" if failures == 1 else "s",
            extra=_fields("worker-restart", slot=slot, delay=delay, failures=failures),
        )
        while True:
            await asyncio.sleep(delay)
            if self.stopping or self.current[slot] is not None:
                return  # stopping, or a SIGHUP replacement filled the slot meanwhile
            try:
                await self._spawn(slot)
                self.restarted[slot] += 1
                return
            except OSError as exc:  # out of processes or memory: try again later
                delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, delay * 2))
                log.error(
                    "worker %d cannot be started (%s); trying again in %.1f s",
                    slot,
                    exc,
                    delay,
                    extra=_fields("worker-failed", slot=slot, error=str(exc), delay=delay),
                )

    # ------------------------------------------------------------------- doors

    async def _open_doors(self) -> bool:
        """Serve --metrics and --admin-socket for every worker (sessiond/gather.py);
        False (logged) if one cannot be opened."""
        where, path = self.settings.metrics.listen, self.settings.admin.socket
        if not where and not path:
            return True
        try:
            self.gatherer = gatherer = Gatherer(self.count, self)
        except (ValueError, OSError) as exc:
            log.error("%s", exc, extra=_fields("doors-failed", error=str(exc)))
            return False
        for left in gatherer.removed:
            log.info(
                "removed %s, the private socket directory of a supervisor that is gone",
                left,
                extra=_fields("worker-doors-removed", directory=str(left)),
            )
        log.info(
            "workers answer metrics and admin requests on private sockets in %s",
            gatherer.directory,
            extra=_fields("worker-doors", directory=str(gatherer.directory)),
        )
        if where:
            self.metrics = SupervisorMetrics(gatherer)
            if not await self.metrics.listen_at(where, log, f" for {self.count} workers"):
                return False
        if path:
            self.admin = SupervisorAdmin(gatherer, path)
            try:
                await self.admin.start()
            except AdminError as exc:
                self.admin = None
                log.error("%s", exc, extra=_fields("listen-failed", address=path, error=str(exc)))
                return False
            log.info(
                "admin socket %s (mode 0600) for %d workers",
                path,
                self.count,
                extra=_fields("admin", address=path),
            )
        return True

    async def _close_doors(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        if self.admin is not None:
            await self.admin.close()
        if self.gatherer is not None:
            self.gatherer.close()

    def occupants(self) -> list[Occupant]:
        """Every live worker process with a door (for the gatherer)."""
        return [
            Occupant(w.slot, w.pid, w.door, self.current[w.slot] is w)
            for w in sorted(self.live, key=lambda w: (w.slot, w.started))
            if w.door
        ]

    def phase(self) -> str:
        """``starting``, ``serving`` or ``draining`` (for /readyz)."""
        return "draining" if self.stopping else "serving" if self.serving else "starting"

    def restarts(self, slot: int) -> int:
        return self.restarted[slot]

    # ------------------------------------------------------------------ SIGHUP

    def replace_all(self) -> None:
        """SIGHUP: replace every worker, one at a time (again after one under way)."""
        if self.stopping:
            return
        if self._rolling is not None and not self._rolling.done():
            self._roll_again = True
            log.info("SIGHUP: a replacement is under way; another follows it")
            return
        self._rolling = self._task(self._replace_all())

    async def _replace_all(self) -> None:
        self._roll_again = True
        while self._roll_again and not self.stopping:
            self._roll_again = False
            if not self._check_again():
                return
            self.notifier.reloading()
            log.info(
                "SIGHUP: replacing %d workers one at a time",
                self.count,
                extra=_fields("workers-replacing", workers=self.count),
            )
            for slot in range(self.count):
                if not await self._replace(slot):
                    break
            else:
                log.info("SIGHUP: every worker replaced", extra=_fields("workers-replaced"))
            self.notifier.ready(f"{self.count} workers")

    def _check_again(self) -> bool:
        if self.load_again is None:
            return True
        try:
            settings = self.load_again()
            check(settings)
        except ValueError as exc:
            log.error(
                "SIGHUP: configuration not valid, the workers keep running: %s",
                exc,
                extra=_fields("reload-failed", error=str(exc)),
            )
            return False
        if settings.server.workers != self.count:
            log.warning(
                "SIGHUP: server.workers = %d needs a restart of the supervisor; still %d",
                settings.server.workers,
                self.count,
            )
        self.drain_timeout = settings.server.drain_timeout
        return True

    async def _replace(self, slot: int) -> bool:
        """Start a new worker for *slot*, then retire the old one once the new listens."""
        try:
            new = await self._spawn(slot, current=False)
        except OSError as exc:
            log.error(
                "SIGHUP: a new worker %d cannot be started (%s); replacement stopped",
                slot,
                exc,
                extra=_fields("worker-failed", slot=slot, error=str(exc)),
            )
            return False
        if not await self._until_ready(new):
            log.error(
                "SIGHUP: new worker %d pid=%d did not start; replacement stopped, "
                "the other workers keep serving",
                slot,
                new.pid,
                extra=_fields("worker-failed", slot=slot, pid=new.pid),
            )
            new.terminate()
            return False
        old = self.current[slot]
        self.current[slot] = new
        if old is not None:
            log.info(
                "SIGHUP: worker %d pid=%d replaces pid=%d",
                slot,
                new.pid,
                old.pid,
                extra=_fields("worker-replaced", slot=slot, pid=new.pid, old=old.pid),
            )
            old.terminate()
            await old.exited.wait()
        return True

    # -------------------------------------------------------------------- stop

    async def _stop_all(self) -> None:
        """SIGTERM every worker; wait until all exited (SIGKILL past the drain timeout)."""
        self.stopping = True
        if self._rolling is not None:
            self._rolling.cancel()
        workers = list(self.live)
        log.info(
            "stopping %d workers",
            len(workers),
            extra=_fields("workers-stopping", pids=[w.pid for w in workers]),
        )
        for worker in workers:
            worker.terminate()
        waits = [asyncio.ensure_future(w.exited.wait()) for w in workers]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.drain_timeout + STOP_MARGIN)
            for wait in late:
                wait.cancel()
        for worker in list(self.live):
            log.error(
                "worker %d pid=%d still running after the drain timeout: killed",
                worker.slot,
                worker.pid,
                extra=_fields("worker-killed", slot=worker.slot, pid=worker.pid),
            )
            self.clean = False
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.exited.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
