"""Ending background tasks (the Redis store's, the channels bus's, the durable writer's).

One ``task.cancel()`` is not enough on Python 3.11: ``asyncio.wait_for`` returns its
inner result instead of raising ``CancelledError`` when the cancel arrives in the few
loop iterations between its inner future finishing and the cancelled task resuming
(python/cpython#86296; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout``). redis-py
sends every command through ``asyncio.wait_for`` when its client has a socket timeout
(``send_packed_command``), so a task cancelled while it sends a command goes on: it
reads the reply and loops. A command it issues after its client was closed opens a
new connection that nothing closes; the garbage collector reports it much later as
redis-py's "Unclosed client session", in whichever test or loop it happens to run.

:func:`end` cancels again whatever is still running, and the tasks' loops also check
a flag of their own, so that a lost cancel costs at most the command in progress.

Our own code bounds its waits with ``asyncio.timeout``, which on 3.11 counts cancels
(``Task.uncancel``) and raises them, never with ``asyncio.wait_for``
(tests/test_tasks.py checks): a client's ``close()``, a resume waiting for the owner's
release and ``Server.close()`` each lost a cancel there. ``Server.close()`` also
ends its resumes with :func:`end`, before it releases the sessions: a resume's claim
goes through redis-py where the URL or the owner's state needs it (``rediss://``, the
dead owner's lease), and there a cancel can still be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

#: Seconds between cancels of a task that is still running.
AGAIN_EVERY = 0.01

__all__ = ["AGAIN_EVERY", "end"]


async def end(tasks: Iterable[asyncio.Task[None]], timeout: float) -> set[asyncio.Task[None]]:
    """Cancel *tasks* and wait until every one has ended, cancelling those still running
    again every :data:`AGAIN_EVERY` seconds (a cancel can be lost: see above); at most
    *timeout* seconds. Returns the tasks still running then: stuck where no cancel
    reaches them, they end when the caller closes what they wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    running = {task for task in tasks if not task.done()}
    while running:
        for task in running:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, running = await asyncio.wait(running, timeout=min(AGAIN_EVERY, left))
    return running
