"""What one jig's coming device needs around its attempt: the pre step's state, the steps.

The pre step's state is explicit (`PreStep`); the runner applies what it implies to the
protocol session (`holds_new_devices`). Running a step shows it on the jig and tells the
line's observer; nothing here talks the jig protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import Any, Final, TypeVar

from linehost.line.display import JigDisplay
from linehost.line.steps import PRE_NOT_READY, PRE_RETRY_MAX, JigSteps, StepResult, run_step
from linehost.observers import AttemptObserver
from linehost.protocol.outcomes import JigState
from linehost.transport.serial import JigPort, PortLost

T = TypeVar("T")

#: A jig with no configured step.
NO_STEPS: Final = JigSteps()


class PreStep(Enum):
    """Where the coming device stands with its pre step."""

    NONE = "none"  # no pre step configured
    DUE = "due"  # the coming device is prepared before it is provisioned
    DONE = "done"  # the device in the jig was prepared; its output waits for its attempt


class Preparation:
    """One jig's steps around a device, as an explicit state instead of flags."""

    def __init__(
        self,
        steps: JigSteps | None,
        port: str,
        display: JigDisplay,
        observer: AttemptObserver,
        log: Any,  # a structlog logger bound to the jig
    ) -> None:
        self.steps = steps if steps is not None else NO_STEPS
        self.state = PreStep.DUE if self.steps.pre is not None else PreStep.NONE
        status = display.status
        self._places: Mapping[str, str] = {
            "port": port,
            "jig": status.jig,
            "station": status.station,
            "line": status.line,
            "probe": self.steps.probe,
        }
        self._display = display
        self._observer = observer
        self._log = log
        self._pre_output: list[str] = []

    def due(self) -> None:
        """A new device may come (port reopened, device finished): it needs its pre step."""
        if self.steps.pre is not None:
            self.state = PreStep.DUE

    def swap_due(self, state: JigState) -> bool:
        """The jig shows `state`; True when that made the pre step due: a prepared device that
        finished is still in the jig (waiting for the swap), the one after it needs its step."""
        if state is JigState.WAITING_FOR_SWAP and self.state is PreStep.DONE:
            self.due()
            return True
        return False

    def prepared(self, result: StepResult) -> None:
        """The pre step succeeded: keep its output for the attempt's transcript."""
        self.state = PreStep.DONE
        self._pre_output = result.transcript()

    def holds_new_devices(self) -> bool:
        """Hold back a device that answers until it is prepared (not when nothing is left to
        provision: it is refused, and that is recorded)."""
        return self.state is PreStep.DUE and not self._display.work_order_complete

    def pre_step_due(self, jig_free: bool) -> bool:
        """Run the pre step now: it is due, the jig is free and the work order has room."""
        return self.state is PreStep.DUE and jig_free and not self._display.work_order_complete

    def take_pre_output(self) -> list[str]:
        """The pre step's transcript lines for the attempt now ending (once)."""
        lines, self._pre_output = self._pre_output, []
        return lines

    def values(self, uid: str | None, serial_num: str = "") -> dict[str, str]:
        """The placeholders of a step for this jig and device."""
        return {**self._places, "uid": uid or "", "serial_num": serial_num}

    async def run_pre(self, port: JigPort, stopping: Callable[[], bool]) -> PortLost | None:
        """Run the pre step until it succeeds (state DONE); the port's loss, or None.

        Exit code 75 (EX_TEMPFAIL) means "no new device in the jig yet": the jig keeps showing
        waiting, and the step is tried again after `pre_retry` seconds. Any other failure shows
        `pre_step_failed` with the output and backs off (doubling up to PRE_RETRY_MAX). A lost
        port (the operator swapped a USB-attached device) is returned: the runner reopens the
        port and begins with the pre step again. A stop request returns at once.
        """
        step, show, status = self.steps.pre, self._display.show, self._display.status
        assert step is not None
        delay = self.steps.pre_retry
        last_uid = status.last_uid
        while not stopping():
            show(JigState.PRE_STEP)
            result = await watch_port(port, run_step(step, self.values(last_uid)), stopping)
            if not isinstance(result, StepResult):
                return result  # lost, or stopping
            if result.exit_code != PRE_NOT_READY:
                self._observer.step_ran(status, "pre", result.ok, result.seconds)
            if result.ok:
                self._log.info("pre_step_ok", seconds=round(result.seconds, 3))
                self.prepared(result)
                return None
            if result.exit_code == PRE_NOT_READY:
                show(
                    JigState.WAITING_FOR_SWAP if last_uid else JigState.WAITING_FOR_DEVICE, last_uid
                )
                pause = self.steps.pre_retry
            else:
                status.last_detail = result.summary()
                self._log.warning("pre_step_failed", detail=status.last_detail, retry_in=delay)
                show(JigState.PRE_STEP_FAILED)
                pause, delay = delay, min(PRE_RETRY_MAX, delay * 2)
            lost = await watch_port(port, asyncio.sleep(pause), stopping)
            if isinstance(lost, PortLost):
                return lost
        return None

    async def run_post(self, uid: str | None, serial_num: str) -> StepResult | None:
        """Run the post step of a provisioned device (None when none is configured)."""
        step = self.steps.post
        if step is None:
            return None
        self._display.show(JigState.POST_STEP, uid)
        result = await run_step(step, self.values(uid, serial_num))
        self._observer.step_ran(self._display.status, "post", result.ok, result.seconds)
        return result


async def watch_port(
    port: JigPort, work: Awaitable[T], stopping: Callable[[], bool]
) -> T | PortLost | None:
    """Await `work` while watching the port: the port's loss, or None once stopping.

    Lines the device prints meanwhile are dropped: no conversation is running.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        while True:
            getter = asyncio.ensure_future(port.events.get())
            waiters: set[asyncio.Future[object]] = {task, getter}  # type: ignore[arg-type]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if getter.done() and not getter.cancelled():
                item = getter.result()
                if isinstance(item, PortLost):
                    return item
                if stopping():
                    return None
            if task.done():
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
