"""`fleet_protocol.pacing.wait_event` and `keep_cancellation`: waits that never lose a cancellation.

Every loop that waits "until stopped or a period passed" (the agent's state reports and
reconnect delays, the controller's alarm and rollout engines) waits this way. With
``asyncio.wait_for`` on Python 3.11, a cancellation arriving in the same loop iteration as the
event was swallowed, and the loop went round again: seen as agents that never ended when a
simulator of 2,000 devices stopped them. aiomqtt waits for every acknowledgement with
``asyncio.wait_for``: the MQTT links wrap those waits in `keep_cancellation`.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from fleet_protocol.pacing import keep_cancellation, wait_event


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


async def _publisher_cancelled_as_its_ack_arrives(wrap: bool) -> asyncio.Task[None]:
    """A loop publishing the way aiomqtt does (``asyncio.wait_for`` on the PUBACK's future),
    cancelled in the same loop iteration as an acknowledgement arrives; the task, once settled."""
    loop = asyncio.get_running_loop()
    acks: list[asyncio.Future[None]] = []

    async def publisher() -> None:  # the shape of the agent's state reports and sends
        while True:
            ack = loop.create_future()
            acks.append(ack)
            wait = asyncio.wait_for(ack, 10)
            await (keep_cancellation(wait) if wrap else wait)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0)
    acks[-1].set_result(None)
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    return task


async def test_a_cancellation_that_a_librarys_wait_for_drops_is_raised_all_the_same() -> None:
    task = await _publisher_cancelled_as_its_ack_arrives(wrap=True)
    assert task.cancelled(), "the cancelled publisher went on publishing"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="python/cpython#86296 is fixed in 3.12")
async def test_without_it_the_cancelled_publisher_goes_on_on_python_3_11() -> None:
    task = await _publisher_cancelled_as_its_ack_arrives(wrap=False)
    assert not task.done(), "asyncio.wait_for no longer drops the cancellation: keep_cancellation may go"
    task.cancel()  # no acknowledgement this time: delivered
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()


async def _timeout_expiring_as_the_ack_arrives(wrap: bool) -> tuple[str, int]:
    """A publish inside ``asyncio.timeout`` whose deadline passes in the loop iteration its
    acknowledgement arrives in: how the block ended, and the task's cancel requests after it."""
    loop = asyncio.get_running_loop()
    ack: asyncio.Future[None] = loop.create_future()
    windows: list[asyncio.Timeout] = []
    outcome: list[tuple[str, int]] = []

    async def publisher() -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(10) as window:
                windows.append(window)
                wait = asyncio.wait_for(ack, 10)
                await (keep_cancellation(wait) if wrap else wait)
        except TimeoutError:
            outcome.append(("timeout", task.cancelling()))
        else:
            outcome.append(("returned", task.cancelling()))

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0)
    ack.set_result(None)
    windows[0].reschedule(loop.time())  # due now: it cancels the task right after the ack wakes it
    await asyncio.wait({task}, timeout=2)
    assert task.done() and not task.cancelled()
    return outcome[0]


async def test_a_timeout_that_expires_as_the_ack_arrives_still_ends_in_timeout_error() -> None:
    assert await _timeout_expiring_as_the_ack_arrives(wrap=True) == ("timeout", 0)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="python/cpython#86296 is fixed in 3.12")
async def test_without_it_that_timeout_is_lost_on_python_3_11() -> None:
    # The block returns as if in time; the timeout's own cancel was dropped (and uncounted after).
    assert await _timeout_expiring_as_the_ack_arrives(wrap=False) == ("returned", 0)
