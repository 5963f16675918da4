"""Benchmarks for sessiond, run from the repository root as ``python -m bench SCENARIO``.

Benchmarks are not tests (STYLE.md habit 11): they measure and write their figures
to ``bench/results/`` (JSON) and ``bench/RESULTS.md``; no test asserts a timing.
Each scenario is one module (``core.py``, ...); ``results.py`` describes the machine
and writes the figures; ``profiling.py`` says where the time goes.
"""


class BenchError(Exception):
    """A benchmark could not produce an honest figure (a message was lost, the core stalled)."""
