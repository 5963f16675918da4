"""The standalone measurement scripts behind figures in closing notes still run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.daemonproc import clean_environment

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    env = clean_environment(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "client")]))
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def test_connect_fail_times_each_case_and_names_the_cause() -> None:
    out = run("bench.connect_fail", "--count", "2")
    assert re.search(r"closed port: median [\d.]+ ms, max [\d.]+ ms: .*connection refused", out)
    assert out.count("TLS certificate verification failed") == 2, out


def test_redis_clients_measures_both_clients() -> None:
    out = run("bench.redis_clients", "--sessions", "10", "--iterations", "5", "--repeat", "1")
    assert re.search(r"redis-py: cpu [\d.]+ us/XADD", out), out
    assert re.search(r"hiredis: +cpu [\d.]+ us/XADD", out), out
