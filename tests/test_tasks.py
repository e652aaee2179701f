"""`cancel_and_wait`: background tasks stop even when a library swallowed the first cancel."""

from __future__ import annotations

import asyncio
import sys

import pytest

from linehost.tasks import cancel_and_wait


async def _answered_as_cancelled() -> tuple[asyncio.Task[None], asyncio.Event]:
    """A task like the dashboard's broker follower: it awaits an acknowledged operation
    through `asyncio.wait_for` (as aiomqtt does), then waits for messages forever. The cancel
    lands in the loop turn in which the acknowledgement arrives."""
    loop = asyncio.get_running_loop()
    ack: asyncio.Future[int] = loop.create_future()
    following = asyncio.Event()

    async def follow() -> None:
        await asyncio.wait_for(ack, timeout=10)
        following.set()
        await asyncio.Event().wait()  # the message loop

    task = asyncio.create_task(follow(), name="follower")
    await asyncio.sleep(0)  # it is waiting for the acknowledgement now
    ack.set_result(0)
    task.cancel()
    return task, following


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython gh-86296 is fixed in 3.12")
async def test_python_311_loses_a_cancel_that_races_an_acknowledgement() -> None:
    """The defect itself, so the workaround is known to be needed where it runs."""
    task, following = await _answered_as_cancelled()
    await asyncio.sleep(0.05)
    assert following.is_set()  # it went on as if never cancelled
    assert not task.done()
    await cancel_and_wait(task, grace=0.05)
    assert task.cancelled()


async def test_a_swallowed_cancel_is_repeated_until_the_task_ends() -> None:
    task, _following = await _answered_as_cancelled()
    async with asyncio.timeout(5):  # a single cancel-and-await would hang here on 3.11
        await cancel_and_wait(task, grace=0.05)
    assert task.cancelled()


async def test_clean_up_gets_its_grace_before_a_second_cancel() -> None:
    cleaned = asyncio.Event()

    async def publisher() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a DISCONNECT on its way out
            cleaned.set()
            raise

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0)
    await cancel_and_wait(task, grace=1.0)
    assert cleaned.is_set()
    assert task.cancelled()


async def test_every_task_is_stopped_and_the_first_failure_is_raised() -> None:
    async def fails_on_the_way_out() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("broker link broken while closing") from None

    async def quiet() -> None:
        await asyncio.Event().wait()

    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    tasks = [asyncio.create_task(quiet()), asyncio.create_task(fails_on_the_way_out()), finished]
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken while closing"):
        await cancel_and_wait(*tasks)
    assert all(task.done() for task in tasks)
    assert tasks[0].cancelled()
