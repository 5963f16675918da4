"""A client process for the ``state_file`` tests: ``python -m tests.state_child URL PATH``.

It opens a session with ``connect_sync(URL, state_file=PATH)``, prints ``ready ID``,
prints ``got PAYLOAD`` for every message it receives, and obeys commands on stdin:
``send A B`` sends ``mA`` .. ``mB`` then prints ``sent B``; ``close`` closes the session
and exits. The test kills it with SIGKILL at chosen moments.
"""

from __future__ import annotations

import sys
import threading

import sessiond_client
from sessiond_client import Params, ReconnectPolicy, SessionLost

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(url: str, path: str) -> None:
    session = sessiond_client.connect_sync(
        url,
        state_file=path,
        params=Params(heartbeat_interval=0.5, heartbeat_min=0.05, handshake_timeout=2.0),
        policy=ReconnectPolicy(base=0.01, cap=0.1),
    )
    say(f"ready {session.id}")

    def receive() -> None:
        try:
            while True:
                say(f"got {session.recv().decode()}")
        except SessionLost as lost:
            say(f"lost {lost.reason.name}")

    threading.Thread(target=receive, daemon=True).start()
    for line in sys.stdin:
        command, *args = line.split()
        if command == "send":
            first, last = int(args[0]), int(args[1])
            for i in range(first, last + 1):
                session.send(f"m{i}".encode(), timeout=10)
            say(f"sent {last}")
        elif command == "close":
            session.close()
            say("closed")
            return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
