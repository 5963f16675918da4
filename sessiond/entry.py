"""The ``sessiond`` command (and ``python -m sessiond``).

``sessiond serve`` ignores SIGHUP from its first instruction: the default disposition
kills the process, and the daemon installs its reload handler only once its modules
are loaded (about a second), so a SIGHUP in that window would kill a starting daemon.
A SIGHUP that arrives then is dropped; later ones reload (README, "Operating sessiond").
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if sys.argv[1:2] == ["serve"] and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .cli import main as cli_main  # noqa: PLC0415 (after the signal disposition)

    return cli_main()
