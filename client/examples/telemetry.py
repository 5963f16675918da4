"""An IoT telemetry loop: one reading per interval, published through network loss.

    python telemetry.py tcp://127.0.0.1:7420 --count 100 --interval 1 --state-file tele.db

``send`` never fails because the network is down: while offline, readings wait in the
session's window and go out, in order and once each, after the reconnect. With
``--state-file`` they also survive a reboot of the device.
"""

import argparse
import json
import random
import time

import sessiond_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--state-file", default=None)
    args = parser.parse_args()

    with sessiond_client.connect_sync(args.url, state_file=args.state_file) as session:
        for n in range(args.count):
            reading = {"n": n, "celsius": round(20 + 5 * random.random(), 2)}
            session.send(json.dumps(reading).encode())  # waits only if the window is full
            for command in session.poll():  # whatever the server sent meanwhile
                print("from server:", command.decode())
            print(f"reading {n} queued, connection {session.state.value}", flush=True)
            time.sleep(args.interval)
    # Leaving the block waited (bounded) for every reading to be acknowledged.


if __name__ == "__main__":
    main()
