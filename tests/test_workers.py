"""``sessiond serve --workers N`` (sessiond/workers.py): what it refuses, and the
supervisor's pieces that need no worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sessiond import config
from sessiond.workers import check, describe_status
from tests.daemonproc import clean_environment


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", *args],
        check=False,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )


def test_several_workers_with_the_memory_store_are_refused_at_start_up() -> None:
    done = serve("--workers", "2", "--listen", "127.0.0.1:7999")
    assert done.returncode == 2
    assert "server.workers = 2 (--workers) needs a shared store" in done.stderr
    assert "store.url" in done.stderr


def test_config_check_refuses_them_too(tmp_path: Path) -> None:
    file = tmp_path / "w.toml"
    file.write_text("[server]\nworkers = 3\n")
    done = subprocess.run(
        [sys.executable, "-m", "sessiond", "config", "check", str(file)],
        check=False,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )
    assert done.returncode == 2
    assert "server.workers = 3" in done.stderr and "shared store" in done.stderr


def test_workers_setting_has_a_range() -> None:
    with pytest.raises(config.ConfigError, match=r"server\.workers"):
        config.load(flags={"server.workers": "0"})
    assert config.load().server.workers == 1
    assert config.load(flags={"server.workers": "4"}).server.workers == 4


def test_one_worker_needs_nothing() -> None:
    check(config.load(flags={"server.workers": "1"}))


def test_exit_statuses_in_words() -> None:
    assert describe_status(0) == "exit status 0"
    assert describe_status(3) == "exit status 3"
    assert describe_status(-9) == "killed by SIGKILL"
