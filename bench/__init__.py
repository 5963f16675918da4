"""Benchmarks for sessiond, run from the repository root as ``python -m bench``.

Benchmarks are not tests (STYLE.md habit 11): they write their figures to
``bench/results/`` (JSON and a PNG) and ``bench/RESULTS.md``; no test asserts a
timing. ``__main__.py`` lists the scenarios, ``runner.py`` runs them and sums up
(``summary.py``, ``plot.py``). Each scenario is one module saying what to run (its
options, one pass, its table) and hands the rest to ``harness.py`` (machine and
commit, pinning, servers, warm-up, rotated repetitions, the JSON and markdown).
"""


class BenchError(Exception):
    """A benchmark could not produce an honest figure (a message was lost, the core stalled)."""
