"""The client examples (``client/examples``) run for real against the daemon, through the
fault proxy, and the README shows them verbatim."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.test_state_file import recording_daemon

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "client" / "examples"
TIMEOUT = 60.0


@dataclass
class Run:
    stdout: str
    recorded: list[bytes]  # what the daemon received, in order
    transports: int  # connections the example opened


async def run_example(name: str, *args: str, cuts: int, cut_every: float) -> Run:
    """Run example *name* with *args*, cutting its transport *cuts* times meanwhile."""
    async with recording_daemon() as (_server, proxy, recorded):
        host, port = proxy.address
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / name),
            f"tcp://{host}:{port}",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        communicate = asyncio.ensure_future(proc.communicate())
        for _ in range(cuts):
            await asyncio.wait([communicate], timeout=cut_every)
            if communicate.done():
                break
            proxy.cut()
        async with asyncio.timeout(TIMEOUT):
            stdout, _ = await communicate
        assert proc.returncode == 0, stdout
        return Run(stdout.decode(), list(recorded), len(proxy.connections))


async def test_telemetry_keeps_publishing_through_network_loss() -> None:
    run = await run_example(
        "telemetry.py", "--count", "150", "--interval", "0.01", cuts=8, cut_every=0.2
    )
    readings = [json.loads(p) for p in run.recorded]
    assert [r["n"] for r in readings] == list(range(150))  # every reading once, in order
    assert "reading 149 queued" in run.stdout
    assert run.transports > 1  # it did lose the network, and reconnected


async def test_game_loop_polls_every_frame_and_shows_the_state() -> None:
    run = await run_example("game_loop.py", "--frames", "120", cuts=2, cut_every=0.5)
    summary = re.search(r"frames 120, updates applied (\d+), inputs dropped (\d+)", run.stdout)
    assert summary is not None, run.stdout
    inputs = [int(p.split()[1]) for p in run.recorded]
    assert inputs == sorted(set(inputs))  # no input twice, none out of order
    assert len(inputs) + int(summary[2]) == 120  # each input either delivered or dropped
    assert "frame 0: connection active" in run.stdout
    assert run.transports > 1


def test_the_readme_shows_the_examples_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    for example in sorted(EXAMPLES.glob("*.py")):
        assert example.read_text() in blocks, f"README lacks {example.name} verbatim"
