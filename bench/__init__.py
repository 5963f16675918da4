"""Benchmarks for sessiond, run from the repository root as ``python -m bench``.

Benchmarks are not tests (STYLE.md habit 11): they measure and write their figures
to ``bench/results/`` (JSON and a PNG) and ``bench/RESULTS.md``; no test asserts a
timing. ``python -m bench`` runs every scenario of issue 5 (``__main__.py`` lists
them, ``runner.py`` runs them, ``progress.py`` shows it, ``summary.py`` and
``plot.py`` sum up); ``python -m bench latency resume`` runs those named. Each
scenario is one module: ``throughput.py``, ``latency.py``, ``resume.py``,
``storm.py``, ``idle.py``, ``tls.py``, ``fanout.py``, and ``core.py`` (the protocol
core alone, only when named). ``results.py`` describes the machine and writes the
figures; ``profiling.py`` says where the time goes. The socket-level scenarios
share ``processes.py`` (servers in their own pinned processes), ``systems.py``
(sessiond, the ceiling and the peers side by side), ``peers.py`` (echo passes over
them), ``daemon.py`` (what set a pass's pace, where many sessions connect from),
``loadgen.py`` and ``pingpong.py`` (the bench's own clients), ``library_client.py``
(the sessiond client library as a load generator), ``histogram.py`` (HDR-style
latency histograms) and the peers' ``mqtt_peer.py`` and ``nats_peer.py``.
"""


class BenchError(Exception):
    """A benchmark could not produce an honest figure (a message was lost, the core stalled)."""
