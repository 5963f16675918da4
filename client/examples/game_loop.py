"""A game-style frame loop: poll() once per frame, never blocking, and a status line.

    python game_loop.py tcp://127.0.0.1:7420 --frames 600

Each frame sends the player's input (if the window has room: a game drops input
rather than stall a frame), applies what the server sent, and shows the connection
state, which reads "reconnecting" while the network is away.
"""

import argparse
import time

import sessiond_client

FRAME = 1 / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args()

    applied = dropped = 0
    shown = None
    with sessiond_client.connect_sync(args.url) as session:
        for frame in range(args.frames):
            started = time.monotonic()
            try:
                session.send(f"input {frame}".encode(), timeout=0)  # never waits
            except TimeoutError:
                dropped += 1
            applied += len(session.poll())  # everything since the last frame
            state = session.state.value
            if state != shown:
                print(f"frame {frame}: connection {state}", flush=True)
                shown = state
            time.sleep(max(0.0, FRAME - (time.monotonic() - started)))
    print(f"frames {args.frames}, updates applied {applied}, inputs dropped {dropped}")


if __name__ == "__main__":
    main()
