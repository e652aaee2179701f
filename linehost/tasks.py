"""Stopping background tasks: cancel, and cancel again when a library swallowed the first cancel.

One `Task.cancel()` is not always enough on Python 3.11. `asyncio.wait_for`, which aiomqtt and
asyncua use for every acknowledged operation (SUBACK, PUBACK, a read), returns the result
instead of raising when the cancel arrives in the same loop turn as the answer (CPython
gh-86296, fixed in 3.12). The task then goes on as if it had never been cancelled (a dashboard
following the broker, say, goes back to waiting for messages) and `await task` never returns:
a `linehost dashboard` that ignores SIGTERM until systemd kills it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog

_log = structlog.get_logger(__name__)

CANCEL_GRACE: Final = (
    1.0  # seconds a cancelled task has for its own clean-up before the next cancel
)


async def cancel_and_wait(*tasks: asyncio.Task[Any], grace: float = CANCEL_GRACE) -> None:
    """Cancel `tasks` and return once every one has ended; re-raise the first failure that is
    not a cancellation (it is the caller's to see, as with `await task`).

    A task still running `grace` seconds after a cancel is cancelled again: its clean-up (an
    MQTT DISCONNECT, say) has had its time, and it may have swallowed the first cancel."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            _log.info("task_cancelled_again", task=task.get_name(), after_seconds=grace)
            task.cancel()
    failure: BaseException | None = None
    for task in tasks:
        if task.cancelled():
            continue
        error = task.exception()  # retrieved, so asyncio does not log it as never retrieved
        if error is not None and failure is None:
            failure = error
    if failure is not None:
        raise failure
