"""`fleet_protocol.pacing.wait_event`: the daemons' timed wait for an Event, which never loses a cancellation.

Every loop that waits "until stopped or a period passed" (the agent's state reports and
reconnect delays, the controller's alarm and rollout engines) waits this way. With
``asyncio.wait_for`` on Python 3.11, a cancellation arriving in the same loop iteration as the
event was swallowed, and the loop went round again: seen as agents that never ended when a
simulator of 2,000 devices stopped them.
"""

from __future__ import annotations

import asyncio
import time

from fleet_protocol.pacing import wait_event


async def test_it_says_whether_the_event_came_within_the_time() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    assert await wait_event(event, 0.05) is False
    assert time.monotonic() - started >= 0.05
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True


async def test_a_loop_cancelled_as_its_event_is_set_ends() -> None:
    event = asyncio.Event()
    rounds = 0

    async def reporter() -> None:  # the shape of the agent's state reports
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(reporter())
    await asyncio.sleep(0.01)
    for _ in range(3):  # the event wakes the loop without a cancellation: it goes on
        event.set()
        await asyncio.sleep(0.01)
    assert rounds == 3 and not task.done()
    event.set()
    task.cancel()  # in the same iteration as the event: the race wait_for lost on 3.11
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task} and task.cancelled(), "the cancelled loop went on waiting"
