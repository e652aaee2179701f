"""LineSupervisor: one task per jig, crash isolation, and the staged shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import structlog

from linehost.backoff import Backoff
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus

RESTART_MIN: Final = 1.0
RESTART_MAX: Final = 30.0
RESTART_JITTER: Final = 0.2
#: After the grace period, how long aborted attempts get to be recorded before cancellation.
RECORD_GRACE: Final = 5.0

_log = structlog.get_logger("linehost.line")


class JigName(Protocol):
    """Where a supervised jig is, for task names and logs."""

    @property
    def station(self) -> str: ...

    @property
    def name(self) -> str: ...


class SupervisedJig(Protocol):
    """What the supervisor needs of a jig runner (JigRunner, or a test's stand-in)."""

    @property
    def spec(self) -> JigName: ...

    @property
    def status(self) -> JigStatus: ...

    @property
    def busy(self) -> bool: ...

    async def run(self) -> None: ...

    def request_stop(self) -> None: ...

    def request_abort(self, detail: str) -> None: ...


def restart_backoff() -> Backoff:
    """The pacing of a crashed jig's restarts: RESTART_MIN doubling to RESTART_MAX, jittered."""
    return Backoff(low=RESTART_MIN, high=RESTART_MAX, jitter=RESTART_JITTER)


class LineSupervisor:
    """Runs every jig of a line until `stop` is set, then shuts down in stages."""

    def __init__(
        self,
        runners: Sequence[SupervisedJig],
        *,
        shutdown_grace: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`sleep` waits between restarts (tests pass a clock they advance themselves)."""
        self.runners = list(runners)
        self.shutdown_grace = shutdown_grace
        self._sleep = sleep

    async def run(self, stop: asyncio.Event) -> None:
        """Return after a clean, staged shutdown once `stop` is set."""
        tasks = [
            asyncio.create_task(
                self._supervise(runner), name=f"jig:{runner.spec.station}/{runner.spec.name}"
            )
            for runner in self.runners
        ]
        try:
            stopper = asyncio.create_task(stop.wait(), name="line:stop")
            # A jig task only ends once stopped, so this waits for the stop signal.
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            await self._shutdown(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        busy = sum(runner.busy for runner in self.runners)
        _log.info("line_stopping", jigs=len(self.runners), attempts_in_flight=busy)
        for runner in self.runners:
            runner.request_stop()
        # A line without jigs (a config being prepared) has nothing to wait for.
        _done, pending = (
            await asyncio.wait(tasks, timeout=self.shutdown_grace) if tasks else (set(), set())
        )
        if pending:
            aborted = 0
            for runner in self.runners:
                if runner.busy:
                    aborted += 1
                runner.request_abort("host shutdown: grace period over")
            _log.warning("shutdown_grace_over", attempts_aborted=aborted)
            _done, pending = await asyncio.wait(pending, timeout=RECORD_GRACE)
            if pending:
                _log.error("jigs_cancelled", count=len(pending))
        _log.info("line_stopped")

    async def _supervise(self, runner: SupervisedJig) -> None:
        """Restart a runner that crashed, with jittered backoff; its siblings carry on."""
        backoff = restart_backoff()
        while True:
            try:
                await runner.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("jig_crashed", station=runner.spec.station, jig=runner.spec.name)
                runner.status.state = JigState.OFFLINE
                await self._sleep(backoff.next_delay())
