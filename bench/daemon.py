"""What the socket scenarios share about the daemon and its load: who set a pass's pace,
and where many sessions connect from.

* :func:`bound_by` says what set the pace of a timed pass (anything with wall
  seconds and both processes' CPU seconds): the load generator's core
  (*client-bound*, above :data:`CLIENT_BOUND` of it busy), the server's, or
  neither (*round-trip*); :func:`pace` gathers that and the CPU shares of
  repeated passes for a results entry.
* :func:`source_addresses` and :func:`sessions_per_address` spread thousands of
  sessions over loopback source addresses, below the daemon's per-peer limit.

The scenario that measured the daemon alone (``python -m bench daemon``) is now
``throughput`` (echo beside the ceiling and the peers) and ``idle``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from sessiond.server import ServerConfig

from .results import Json, spread

#: A pass whose load generator used more than this share of one core is client-bound.
CLIENT_BOUND = 0.9
#: Handshakes in flight when opening many sessions (the daemon's listen backlog is 4096).
DEFAULT_CONCURRENCY = 100


class Timed(Protocol):
    """A timed pass: its wall seconds and both processes' CPU seconds over them."""

    @property
    def seconds(self) -> float: ...

    @property
    def client_cpu(self) -> float: ...

    @property
    def server_cpu(self) -> float: ...


def client_bound(result: Timed) -> bool:
    return result.client_cpu / result.seconds > CLIENT_BOUND


def bound_by(result: Timed) -> str:
    """What set the pace of a pass: the load generator's core, the server's, or neither.

    *round-trip*: neither process kept its core busy; they took turns (the whole
    window goes back and forth in a few large reads), so the rate is bounded by
    the sum of both sides' work per batch and the loopback wake-ups, not by one side.
    """
    if client_bound(result):
        return "client"
    if result.server_cpu / result.seconds > CLIENT_BOUND:
        return "server"
    return "round-trip"


class Paced(Timed, Protocol):
    """A timed pass that also knows what other processes took of the pinned cores."""

    @property
    def others(self) -> tuple[float, float] | None: ...


def pace(runs: Sequence[Paced]) -> Json:
    """Both processes' share of their core over *runs* (median and spread), and per
    pass what set its pace (:func:`bound_by`) and which pinned cores were full."""
    from .latency import full_cores  # noqa: PLC0415 - latency's module imports the systems

    return {
        "server_cpu_share": spread([run.server_cpu / run.seconds for run in runs]),
        "client_cpu_share": spread([run.client_cpu / run.seconds for run in runs]),
        "client_bound": [client_bound(run) for run in runs],
        "bound": [bound_by(run) for run in runs],
        "cores_full": [
            full_cores(run.server_cpu, run.client_cpu, run.seconds, run.others) for run in runs
        ],
    }


def source_addresses(per_address: int) -> Callable[[int], str]:
    """Session *i*'s source address: a new 127.x.y.z every *per_address* sessions.

    The daemon allows ``max_transports_per_peer`` transports per IP address; the
    whole of 127.0.0.0/8 is loopback, so many sessions come from several of its
    addresses (all of them connect to 127.0.0.1).
    """

    def source(index: int) -> str:
        number = 1 + index // per_address
        return f"127.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"

    return source


def sessions_per_address() -> int:
    """Sessions per source address: a margin below the daemon's per-peer transport limit."""
    limit = ServerConfig().max_transports_per_peer
    return max(1, limit - max(8, limit // 16))
