"""A game-style frame loop: poll() once per frame, never blocking, and a status line.

    sessiond serve &  # the quick start: the channels app on 127.0.0.1:7420
    python game_loop.py tcp://127.0.0.1:7420 --frames 600

Each frame publishes the player's input on ``games/ROOM/inputs`` (if the window has
room: a game drops input rather than stall a frame), applies the inputs the room's
channel delivered (every player's, its own included), and shows the connection
state, which reads "reconnecting" while the network is away.
"""

import argparse
import sys
import time

import sessiond_client
from sessiond_client import ConnectFailed, SessionLost, SyncChannels
from sessiond_client.envelopes import Message

FRAME = 1 / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args()

    channel = f"games/{args.room}/inputs"
    applied = dropped = 0
    shown = None
    try:
        session = sessiond_client.connect_sync(args.url)
    except ConnectFailed as failed:
        print(failed, file=sys.stderr)
        return 2
    try:
        with SyncChannels(session) as room:
            try:
                room.subscribe(channel, timeout=5)
            except TimeoutError:
                print(
                    f"{args.url} does not answer channels requests: this example needs"
                    " the channels app (sessiond serve's default, not --app echo)",
                    file=sys.stderr,
                )
                return 2
            for frame in range(args.frames):
                started = time.monotonic()
                try:
                    room.publish(channel, f"input {frame}".encode(), wait=False, timeout=0)
                except TimeoutError:  # the window is full: never wait in a frame
                    dropped += 1
                events = room.poll()  # everything since the last frame
                applied += sum(isinstance(event, Message) for event in events)
                state = session.state.value
                if state != shown:
                    print(f"frame {frame}: connection {state}", flush=True)
                    shown = state
                time.sleep(max(0.0, FRAME - (time.monotonic() - started)))
    except SessionLost as lost:
        print(
            f"session lost ({lost.reason.name}), {len(lost.undelivered)} input(s) not acknowledged",
            file=sys.stderr,
        )
        return 1
    print(f"frames {args.frames}, updates applied {applied}, inputs dropped {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
