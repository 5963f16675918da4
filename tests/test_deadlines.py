"""``sessiond.deadlines``: many deadlines on one loop timer, each fired once, in order,
never for a released slot, with few heap entries however often a deadline moves."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sessiond.deadlines import Deadlines, Slot


class Item:
    def __init__(self, name: str) -> None:
        self.name = name


async def test_deadlines_fire_in_order_and_released_slots_never_fire() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadlines: Deadlines[Item] = Deadlines(loop, lambda item: fired.append(item.name))
    now = loop.time()
    slots = {name: Slot(Item(name)) for name in "abcd"}
    deadlines.schedule(slots["c"], now + 0.03)
    deadlines.schedule(slots["a"], now + 0.01)
    deadlines.schedule(slots["b"], now + 0.02)
    deadlines.schedule(slots["d"], now + 0.02)
    deadlines.release(slots["d"])
    await asyncio.sleep(0.1)
    assert fired == ["a", "b", "c"]
    assert len(deadlines) == 0


async def test_a_moving_deadline_keeps_at_most_two_entries() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadlines: Deadlines[Item] = Deadlines(loop, lambda item: fired.append(item.name))
    slot = Slot(Item("x"))
    now = loop.time()
    deadlines.schedule(slot, now + 60)  # a heartbeat far away
    for i in range(1000):  # an ACK deadline moving later and later, before it
        deadlines.schedule(slot, now + 30 + i)
    assert len(deadlines) == 2 and slot.pending == (now + 60, now + 30)
    deadlines.schedule(slot, now + 0.01)  # earlier: one more entry
    await asyncio.sleep(0.05)
    assert fired == ["x"] and len(deadlines) == 2
    deadlines.clear()
    assert len(deadlines) == 0
    assert not slot.pending


async def test_a_released_item_is_not_kept_alive() -> None:
    loop = asyncio.get_running_loop()
    deadlines: Deadlines[Item] = Deadlines(loop, lambda item: None)
    item = Item("gone")
    slot = Slot(item)
    deadlines.schedule(slot, loop.time() + 60)
    ref = weakref.ref(item)
    deadlines.release(slot)
    del item
    gc.collect()
    assert ref() is None
    deadlines.clear()


async def test_a_callback_that_asks_for_a_later_deadline_does_not_delay_an_earlier_one() -> None:
    """A session's timer fires and asks for its next deadline (a heartbeat, far away)
    while another session's earlier one (a 20 ms ACK) is still in the heap: the loop
    timer must stay armed for the earlier one (it once was armed for the heartbeat, so
    that ACK waited a heartbeat: a client's clean close timed out)."""
    loop = asyncio.get_running_loop()
    b_fired = asyncio.Event()
    a, b = Slot(Item("a")), Slot(Item("b"))

    def fire(item: Item) -> None:
        if item.name == "a":
            deadlines.schedule(a, loop.time() + 60)  # its next heartbeat
        else:
            b_fired.set()

    deadlines: Deadlines[Item] = Deadlines(loop, fire)
    now = loop.time()
    deadlines.schedule(a, now + 0.01)
    deadlines.schedule(b, now + 0.05)
    async with asyncio.timeout(10):  # generous: it is due after 50 ms
        await b_fired.wait()
    deadlines.clear()
