"""Benchmarks for sessiond, run from the repository root as ``python -m bench``.

Benchmarks are not tests (STYLE.md habit 11): they measure and write their figures
to ``bench/results/`` (JSON and a PNG) and ``bench/RESULTS.md``; no test asserts a
timing. ``python -m bench`` runs every scenario of issue 5 (``__main__.py`` lists
them, ``runner.py`` runs them, ``progress.py`` shows it, ``summary.py`` and
``plot.py`` sum up); ``python -m bench latency resume`` runs those named. Each
scenario is one module that says what to run (its options, one pass, its table)
and hands the rest to ``harness.py`` (machine and commit, pinning, servers,
warm-up, rotated repetitions, the JSON and the markdown, in the spirit of
pyperf's Runner): ``throughput.py``, ``latency.py``, ``resume.py``, ``storm.py``,
``idle.py``, ``tls.py``, ``fanout.py``, and ``core.py`` (the protocol core alone,
only when named). To add one, write such a module and list it in
``__main__.py``. ``results.py`` describes the machine and writes the figures
(RESULTS.md only from a clean default run); ``profiling.py`` says where the time
goes. The socket-level scenarios share ``processes.py`` (servers in their own
pinned processes, their CPU in nanoseconds, what bound a pass), ``systems.py``
(sessiond, the ceiling and the peers side by side), ``peers.py`` (echo passes
over them), ``loadgen.py`` and ``pingpong.py`` (the bench's own clients),
``library_client.py`` (the sessiond client library as a load generator),
``histogram.py`` (HDR-style latency histograms) and the peers' ``mqtt_peer.py``
and ``nats_peer.py``.
"""


class BenchError(Exception):
    """A benchmark could not produce an honest figure (a message was lost, the core stalled)."""
