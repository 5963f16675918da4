"""An IoT telemetry loop: one reading per interval, published through network loss.

    sessiond serve &  # the quick start: the channels app on 127.0.0.1:7420
    python telemetry.py tcp://127.0.0.1:7420 --count 100 --interval 1 --state-file tele.db

Each reading is published on ``devices/DEVICE/telemetry`` (a dashboard subscribes to
``devices/+/telemetry``); what arrives on ``devices/DEVICE/commands`` is printed.
Publishing never fails because the network is down: while offline, readings wait in
the session's window and go out, in order and once each, after the reconnect. With
``--state-file`` they also survive a reboot of the device; if the daemon lost the saved
session meanwhile (it restarted), the saved readings are published again on a new one.
If the session is lost while running, the readings never acknowledged are listed and
the exit status is 1.
"""

import argparse
import json
import logging
import random
import sys
import time

import sessiond_client
from sessiond_client import ConnectFailed, SessionLost, SyncChannels, SyncSession
from sessiond_client.envelopes import PUB, Message, Refused, Request, parse_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--device", default="sensor-1")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--state-file", default=None)
    args = parser.parse_args()
    # The client's own log (stderr): connects, reconnects and resumes, losses.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        session, saved = open_session(args.url, args.state_file)
    except ConnectFailed as failed:  # nothing listens there, TLS, credentials...
        print(failed, file=sys.stderr)
        return 2
    try:
        with SyncChannels(session) as channels:
            try:
                channels.subscribe(f"devices/{args.device}/commands", timeout=5)
            except TimeoutError:
                print(
                    f"{args.url} does not answer channels requests: this example needs"
                    " the channels app (sessiond serve's default, not --app echo)",
                    file=sys.stderr,
                )
                return 2
            for request in saved:  # oldest first, before the new readings
                channels.publish(request.channel, request.data, wait=False)
            for n in range(args.count):
                reading = {"n": n, "celsius": round(20 + 5 * random.random(), 2)}
                topic = f"devices/{args.device}/telemetry"
                # Queued at once; waits only if the window is full.
                channels.publish(topic, json.dumps(reading).encode(), wait=False)
                for event in channels.poll():  # whatever the server sent meanwhile
                    if isinstance(event, Message):
                        print("command:", event.payload.decode())
                    elif isinstance(event, Refused):
                        print("refused:", event.error)
                print(f"reading {n} queued, connection {session.state.value}", flush=True)
                time.sleep(args.interval)
        # Leaving the block waited (5 s at most) for every reading to be acknowledged.
    except SessionLost as lost:
        print(f"session lost ({lost.reason.name}); not acknowledged:", file=sys.stderr)
        for payload in lost.undelivered:  # oldest first: they may be published again
            print("  ", parse_request(payload).data.decode(), file=sys.stderr)
        return 1
    return 0


def open_session(url: str, state_file: str | None) -> tuple[SyncSession, list[Request]]:
    """A session, and the readings a lost saved session kept (to publish again)."""
    try:
        return sessiond_client.connect_sync(url, state_file=state_file), []
    except ConnectFailed:
        raise
    except SessionLost as lost:  # the daemon no longer knows the saved session
        saved = [r for r in map(parse_request, lost.undelivered) if r.op == PUB]
        print(f"saved session lost ({lost.reason.name}); publishing them again:", file=sys.stderr)
        for request in saved:
            print("  ", request.data.decode(), file=sys.stderr)
        return sessiond_client.connect_sync(url, state_file=state_file), saved


if __name__ == "__main__":
    sys.exit(main())
