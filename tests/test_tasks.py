"""sessiond/tasks.py: ending background tasks when one cancel can be lost.

The task below loops on ``asyncio.wait_for`` of a coroutine that finishes in its first
step, as redis-py's send of a command does. On Python 3.11 a cancel arriving one to
three loop iterations after such a ``wait_for`` started is lost (python/cpython#86296):
the task goes on. Every offset from 0 to 7 is tried; no timing is asserted. Our own
code bounds its waits with ``asyncio.timeout`` instead, and the last test keeps it so.
"""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

from sessiond.tasks import end


async def sent() -> int:
    return 1


async def sender(turns: list[int]) -> None:
    """Send, then wait a little, for ever (a bus's or a store's loop, in short)."""
    while True:
        turns.append(await asyncio.wait_for(sent(), 1.0))
        await asyncio.sleep(0.001)


async def test_end_ends_a_task_whatever_the_loop_iteration_its_cancel_arrives_at() -> None:
    for offset in range(8):
        turns: list[int] = []
        task = asyncio.create_task(sender(turns))
        for _ in range(offset):
            await asyncio.sleep(0)
        assert await end([task], 5.0) == set(), offset
        assert task.cancelled(), offset
        ended_after = len(turns)
        await asyncio.sleep(0.01)
        assert len(turns) == ended_after  # nothing runs any more


async def test_end_returns_the_tasks_no_cancel_reaches() -> None:
    """A task that refuses every cancel is returned once the timeout is spent."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await end([task], 0.05) == {task}
    release.set()
    await asyncio.wait_for(task, 5.0)
    assert await end([task], 0.05) == set()  # ended tasks are left alone


async def test_a_single_cancel_can_be_lost_here() -> None:
    """Why end() cancels again: with one cancel, some offset leaves the task running
    (Python 3.11; on 3.12 and later every offset ends it, and this test says so)."""
    lost: list[int] = []
    for offset in range(8):
        task = asyncio.create_task(sender([]))
        for _ in range(offset):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
        if not task.done():
            lost.append(offset)
        await end([task], 5.0)
    assert bool(lost) == (sys.version_info < (3, 12)), lost


def test_our_code_bounds_its_waits_with_asyncio_timeout_not_wait_for() -> None:
    """On Python 3.11 a task cancelled in ``asyncio.wait_for`` as its future completes
    goes on (above); ``asyncio.timeout`` raises the cancel. The client's close(), a
    resume's wait for the owner's release and Server.close() each lost an
    application's or the server's cancel that way (their tests: test_client_failures,
    test_store_redis, test_store_server)."""
    root = Path(__file__).parent.parent
    found = []
    for folder in (root / "sessiond", root / "client" / "sessiond_client"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "wait_for") or (
                    isinstance(node, ast.alias) and node.name == "wait_for"
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
