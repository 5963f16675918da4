"""Benchmarks for sessiond, run from the repository root as ``python -m bench SCENARIO``.

Benchmarks are not tests (STYLE.md habit 11): they measure and write their figures
to ``bench/results/`` (JSON) and ``bench/RESULTS.md``; no test asserts a timing.
Each scenario is one module (``core.py``, ``daemon.py``, ``latency.py``,
``peers.py``); ``results.py`` describes the machine and writes the figures;
``profiling.py`` says where the time goes. The socket-level scenarios share
``processes.py`` (servers in their own pinned processes), ``loadgen.py`` and
``pingpong.py`` (the bench's own clients), ``library_client.py`` (the sessiond
client library as a load generator), ``histogram.py`` (HDR-style latency
histograms) and the peers' ``mqtt_peer.py`` and ``nats_peer.py``.
"""


class BenchError(Exception):
    """A benchmark could not produce an honest figure (a message was lost, the core stalled)."""
