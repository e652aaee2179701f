"""JigRunner: one jig's life — open the port, converse device after device, survive unplugs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import structlog

from linehost.errors import (
    TransportError,
)
from linehost.line.hold import JigHolds
from linehost.line.latency import LatencyProbe
from linehost.line.provisioning import Attempt, Provisioner, Reject
from linehost.line.status import StatusListener
from linehost.line.steps import (
    PRE_NOT_READY,
    PRE_RETRY_MAX,
    JigSteps,
    StepCommand,
    StepResult,
    run_step,
)
from linehost.protocol.factory import new_session
from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome
from linehost.protocol.session import (
    AttemptEnded,
    AttemptStarted,
    DeviceArrived,
    Effect,
    JigProtocol,
    KeyPresented,
    SendBytes,
    SendLine,
    StateChanged,
    Timing,
)
from linehost.records import (
    AttemptStart,
    JigStatus,
    utcnow,
)
from linehost.transport.serial import JigPort, PortLost, open_port, reopen_backoff

if TYPE_CHECKING:
    from linehost.metrics import JigMetrics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LineContext:
    """What every jig of one line shares: its provisioner, timing, listener and port opener."""

    provisioner: Provisioner
    timing: Timing = field(default_factory=Timing)
    listener: StatusListener | None = None
    open_port: Callable[[str, int], Awaitable[JigPort]] = open_port
    latency: LatencyProbe | None = None  # benchmarks only
    holds: JigHolds = field(default_factory=JigHolds)  # supervisors hold / resume jigs


@dataclass(frozen=True, slots=True)
class JigSpec:
    """Where a jig is and how to reach it."""

    line: str
    station: str
    name: str
    port: str
    baudrate: int = 115200
    protocol: str = "v1"  # the jig protocol its firmware speaks (`[[jigs]] protocol`)


#: Between devices: shown as `work_order_complete` while the work order has no slot left.
_IDLE_STATES: Final = frozenset(
    {JigState.WAITING_FOR_DEVICE, JigState.WAITING_FOR_SWAP, JigState.WORK_ORDER_COMPLETE}
)


class _Stop(Exception):
    """Internal: leave the conversation loop (host shutting down)."""


class JigRunner:
    """Drives one jig until cancelled; never raises for a port, device or database fault."""

    def __init__(
        self,
        spec: JigSpec,
        line: LineContext,
        *,
        steps: JigSteps | None = None,
        metrics: JigMetrics | None = None,
    ) -> None:
        self.spec = spec
        self.status = JigStatus(spec.line, spec.station, spec.name)
        self._provisioner = provisioner = line.provisioner
        timing = line.timing
        self._timing = timing
        self._listener = line.listener
        self._work_order = provisioner.work_order
        self._open = line.open_port
        self._log = structlog.get_logger("linehost.jig").bind(
            line=spec.line, station=spec.station, jig=spec.name
        )
        self._session = new_session(spec.protocol, timing)
        self._attempt: Attempt | None = None
        self._before_wait: tuple[JigState, str | None] | None = None
        self._port: JigPort | None = None
        self._stopping = False
        self._abort_detail: str | None = None
        self._wake = asyncio.Event()
        self._backoff = reopen_backoff()
        self._loop = asyncio.get_running_loop()
        self._probe = line.latency
        self._steps = steps if steps is not None and steps.any else None
        self._pre_pending = steps is not None and steps.pre is not None
        self._pre_result: StepResult | None = None  # the pre step of the coming device
        self._in_post = False
        self._gate = gate = provisioner.gate
        self._metrics = metrics
        if gate is not None:
            gate.subscribe(self._on_work_order)
        self._hold = line.holds.of(spec.station, spec.name)
        self._hold.subscribe(self._wake_conversation)

    # --- control ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a device is mid-attempt on this jig."""
        return self._attempt is not None or self._in_post

    def request_stop(self) -> None:
        """Take no new device; the current attempt may still finish."""
        self._stopping = True
        self._wake.set()
        self._wake_conversation()

    def request_abort(self, detail: str) -> None:
        """Shutdown grace is over: end the running attempt (recorded) and stop."""
        self._abort_detail = detail
        self.request_stop()

    async def run(self) -> None:
        """Open, converse, reopen with backoff; returns once stopped."""
        self._publish(JigState.OFFLINE)
        while not self._stopping:
            try:
                port = await self._open(self.spec.port, self.spec.baudrate)
            except TransportError as exc:
                await self._offline(str(exc))
                continue
            self._port = port
            self._backoff.reset()
            self._log.info("jig_online", port=self.spec.port)
            try:
                await self._converse(port)
            except _Stop:
                pass
            except TransportError as exc:
                await self._lost(str(exc))
                continue
            finally:
                port.close()
                self._port = None
        self._publish(JigState.STOPPED)

    # --- the conversation --------------------------------------------------------------------

    async def _converse(self, port: JigPort) -> None:
        session = self._session = new_session(self.spec.protocol, self._timing)
        if self._steps is not None and self._steps.pre is not None:
            self._set_pre_pending(True)  # a reopened port may hold a new device
        if self._hold.held:
            await self._held(port, session)  # nothing sent before the resume
        else:
            if self._pre_step_due(session):
                await self._pre_step(port)
            await self._apply(session.open(self._loop.time()))
        events = port.events
        loop = self._loop
        while True:
            if self._stopping:
                if self._attempt is not None and self._abort_detail is not None:
                    await self._apply(
                        session.abort(Outcome.DISCONNECTED, self._abort_detail, loop.time())
                    )
                if self._attempt is None:
                    await self._apply(session.stop(loop.time()))
                    raise _Stop
            elif self._hold.held and self._attempt is None:
                await self._held(port, session)
                continue
            elif self._pre_pending and self._pre_step_due(session):
                await self._pre_step(port)
                await self._apply(session.open(loop.time()))  # prepared: start it clean
                self._publish(session.state)
                continue
            wake = session.next_wakeup()
            if events.empty() and wake is not None:
                try:
                    async with asyncio.timeout_at(wake):
                        item = await events.get()
                except TimeoutError:
                    await self._apply(session.on_timer(loop.time()))
                    continue
            else:
                item = await events.get()
            if isinstance(item, PortLost):
                await self._port_lost(item.reason)
                raise TransportError(item.reason)
            effects = session.on_bytes(item, loop.time())
            if effects:
                await self._apply(effects)

    async def _apply(self, effects: list[Effect]) -> None:
        outgoing: list[bytes] = []
        for effect in effects:
            if isinstance(effect, SendLine | SendBytes):
                outgoing.append(effect.data)
                continue
            if outgoing:
                self._send(outgoing)
                outgoing = []
            if isinstance(effect, StateChanged):
                self._publish(effect.state, effect.uid)
            elif isinstance(effect, AttemptStarted):
                self._begin(effect)
            elif isinstance(effect, KeyPresented):
                await self._apply(await self._provision(effect))
                if self._probe is not None and self._port is not None and self._session.in_attempt:
                    self._probe.dac_written(self._port.received_at, self._loop.time())
                if (
                    self._metrics is not None
                    and self._port is not None
                    and self._session.in_attempt
                ):
                    self._metrics.host_latency(self._loop.time() - self._port.received_at)
            elif isinstance(effect, AttemptEnded):
                await self._end(effect)
                if (
                    self._probe is not None
                    and self._port is not None
                    and effect.outcome is Outcome.PROVISIONED
                ):
                    self._probe.result_committed(self._port.received_at, self._loop.time())
            elif isinstance(effect, DeviceArrived):
                self._log.info("device_arrived", uid=effect.uid)  # its pre step runs next
        if outgoing:
            self._send(outgoing)

    def _send(self, chunks: list[bytes]) -> None:
        if self._port is not None:
            self._port.send(b"".join(chunks))

    def _begin(self, started: AttemptStarted) -> None:
        start = AttemptStart(
            attempt_id=str(uuid.uuid4()),
            line=self.spec.line,
            station=self.spec.station,
            jig=self.spec.name,
            uid=started.uid,
            started_at=utcnow(),
            work_order=self._work_order,
            key_proof=started.key_proof,
        )
        self._attempt = Attempt(start, self._log, on_wait=self._waiting, metrics=self._metrics)
        self.status.attempt_id = start.attempt_id
        self._log.debug("attempt_started", uid=started.uid, attempt_id=start.attempt_id)

    async def _provision(self, key: KeyPresented) -> list[Effect]:
        attempt = self._attempt
        assert attempt is not None
        decision = await self._provisioner.provision(attempt, key.pem, key.key_proof)
        now = self._loop.time()
        if isinstance(decision, Reject):
            return self._session.reject(decision.outcome, decision.detail, now)
        return self._session.deliver(
            decision.dac_pem,
            decision.pai_pem,
            now,
            cd_b64=decision.cd_b64,
            factory_data=decision.factory_data,
            root_key_pem=decision.root_key_pem,
        )

    async def _end(self, ended: AttemptEnded) -> None:
        attempt = self._attempt
        self._attempt = None
        if attempt is None:
            return
        log = self._log.bind(uid=ended.uid, attempt_id=attempt.start.attempt_id)
        outcome, detail = self._provisioner.attestation_verdict(
            attempt, ended.outcome, ended.detail, ended.attestation
        )
        provisioned = outcome is Outcome.PROVISIONED  # and proved its DAC when challenged
        transcript = list(ended.transcript)
        if self._pre_result is not None:
            transcript[:0] = self._pre_result.transcript()
            self._pre_result = None
        if self._steps is not None:
            self._set_pre_pending(self._steps.pre is not None)
            if provisioned and self._steps.post is not None:
                post = await self._post_step(self._steps.post, ended.uid, attempt)
                transcript.extend(post.transcript())
                if not post.ok:
                    # The device keeps its DAC (confirmed below); only the step failed.
                    outcome, detail = Outcome.POST_STEP_FAILED, post.summary()
                    log.warning("post_step_failed", detail=detail)
        end = await self._provisioner.record(
            attempt,
            outcome,
            detail,
            ended.device_code,
            "\n".join(transcript),
            provisioned=provisioned,
            attestation=ended.attestation,
        )
        if self._metrics is not None:
            seconds = (end.ended_at - attempt.start.started_at).total_seconds()
            self._metrics.attempt_ended(
                outcome, seconds, confirmed=end.assignment_status is AssignmentStatus.CONFIRMED
            )
        if outcome is Outcome.PROVISIONED:
            self.status.ok += 1
        else:
            self.status.failed += 1
        self.status.last_outcome = outcome
        self.status.last_detail = detail
        self.status.last_uid = ended.uid
        self.status.attempt_id = None
        log.info("attempt_ended", outcome=outcome.value, detail=detail)
        self._publish(self._session.state, None)

    def _waiting(self, waiting: JigState | None) -> None:
        """Show what the provisioner waits for (database, issuer), then the state before."""
        if waiting is not None:
            if self._before_wait is None:
                self._before_wait = (self.status.state, self.status.uid)
            self._publish(waiting, self.status.uid)
        elif self._before_wait is not None:
            self._publish(*self._before_wait)
            self._before_wait = None

    async def _port_lost(self, reason: str) -> None:
        await self._apply(
            self._session.close(Outcome.DISCONNECTED, f"port lost: {reason}", self._loop.time())
        )

    async def _lost(self, reason: str) -> None:
        self._log.warning("jig_lost", reason=reason)
        await self._pause(self._backoff.next_delay())

    async def _offline(self, reason: str) -> None:
        if self.status.state is not JigState.OFFLINE or self.status.last_detail != reason:
            self._log.warning("jig_offline", reason=reason)
            self.status.last_detail = reason
            self._publish(JigState.OFFLINE)
        await self._pause(self._backoff.next_delay())

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _held(self, port: JigPort, session: JigProtocol) -> None:
        """Between devices, held: stop the device and send nothing until resumed or stopped.

        The port stays watched (an unplug still ends in offline); what the device prints is
        dropped. On resume the session starts syncing again, as on a freshly opened port.
        """
        swap_uid = self.status.uid if session.state is JigState.WAITING_FOR_SWAP else None
        await self._apply(session.stop(self._loop.time()))
        self._publish(JigState.HELD)
        self._log.info("jig_held")
        while self._hold.held and not self._stopping:
            item = await port.events.get()
            if isinstance(item, PortLost):
                await self._port_lost(item.reason)
                raise TransportError(item.reason)
        if self._stopping:
            return
        self._log.info("jig_resumed")
        await self._apply(session.open(self._loop.time()))
        self._publish(session.state, swap_uid)

    def _wake_conversation(self) -> None:
        """A stop, hold or resume: let the conversation loop look at it now."""
        if self._port is not None:
            self._port.events.put_nowait(b"")

    # --- steps around a device and the work order (issue 8) ---------------------------------

    def _pre_step_due(self, session: JigProtocol) -> bool:
        """A pre step is configured, not yet run for the coming device, and the jig is free."""
        if self._steps is None or self._steps.pre is None or not self._pre_pending:
            return False
        if self._gate is not None and self._gate.complete:
            return False  # nothing will be provisioned: do not flash devices for nothing
        return session.ready_for_device

    async def _pre_step(self, port: JigPort) -> None:
        """Run the pre step until it succeeds, then let the session sync the prepared device.

        Exit code 75 (EX_TEMPFAIL) means "no new device in the jig yet": the jig keeps showing
        waiting, and the step is tried again after `pre_retry` seconds. Any other failure shows
        `pre_step_failed` with the output and backs off (doubling up to PRE_RETRY_MAX). A lost
        port (the operator swapped a USB-attached device) raises TransportError: the runner
        reopens the port and begins with the pre step again. A stop request returns at once.
        """
        assert self._steps is not None
        step = self._steps.pre
        assert step is not None
        delay = self._steps.pre_retry
        last_uid = self.status.last_uid
        while not self._stopping:
            self._publish(JigState.PRE_STEP)
            result = await self._watching(port, run_step(step, self._step_values(last_uid)))
            if result is None:
                return  # stopping
            if result.ok:
                self._log.info("pre_step_ok", seconds=round(result.seconds, 3))
                if self._metrics is not None:
                    self._metrics.step("pre", True, result.seconds)
                self._pre_result = result
                self._set_pre_pending(False)
                self._session.expect_swap(last_uid)  # in case the step left the old device
                return
            if result.exit_code == PRE_NOT_READY:
                waiting = JigState.WAITING_FOR_SWAP if last_uid else JigState.WAITING_FOR_DEVICE
                self._publish(waiting, last_uid)
                await self._watching(port, asyncio.sleep(self._steps.pre_retry))
                continue
            if self._metrics is not None:
                self._metrics.step("pre", False, result.seconds)
            self.status.last_detail = result.summary()
            self._log.warning("pre_step_failed", detail=self.status.last_detail, retry_in=delay)
            self._publish(JigState.PRE_STEP_FAILED)
            await self._watching(port, asyncio.sleep(delay))
            delay = min(PRE_RETRY_MAX, delay * 2)

    def _set_pre_pending(self, pending: bool) -> None:
        self._pre_pending = pending
        # While a pre step is due, a device that answers is prepared before it is provisioned
        # (not when the work order is complete: it is refused, and that is recorded).
        complete = self._gate is not None and self._gate.complete
        self._session.hold_new_devices(pending and not complete)

    async def _post_step(self, step: StepCommand, uid: str | None, attempt: Attempt) -> StepResult:
        self._in_post = True
        try:
            self._publish(JigState.POST_STEP, uid)
            serial = attempt.onboarding.serial_num if attempt.onboarding is not None else ""
            result = await run_step(step, self._step_values(uid, serial))
        finally:
            self._in_post = False
        if self._metrics is not None:
            self._metrics.step("post", result.ok, result.seconds)
        return result

    def _step_values(self, uid: str | None, serial_num: str = "") -> dict[str, str]:
        assert self._steps is not None
        spec = self.spec
        return {
            "port": spec.port,
            "uid": uid or "",
            "jig": spec.name,
            "station": spec.station,
            "line": spec.line,
            "serial_num": serial_num,
            "probe": self._steps.probe,
        }

    async def _watching(self, port: JigPort, work: Awaitable[T]) -> T | None:
        """Await `work` while watching the port: lost -> TransportError, stop -> None.

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
                        await self._port_lost(item.reason)
                        raise TransportError(item.reason)
                    if self._stopping:
                        return None
                if task.done():
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _on_work_order(self) -> None:
        """The work order became complete (or open again): show it on idle jigs."""
        self._set_pre_pending(self._pre_pending)
        if self.status.state in _IDLE_STATES:
            state = self._session.state
            if state in _IDLE_STATES:
                self._publish(state, self.status.uid)

    def _publish(self, state: JigState, uid: str | None = None) -> None:
        if state is JigState.WAITING_FOR_SWAP and self._steps is not None and not self._pre_pending:
            # A finished device is still in the jig: the one after it needs its pre step.
            self._set_pre_pending(self._steps.pre is not None)
        if state in _IDLE_STATES and self._gate is not None and self._gate.complete:
            state = JigState.WORK_ORDER_COMPLETE  # nothing more to do here: say so first
        status = self.status
        if state is status.state and uid == status.uid:
            return
        status.state = state
        status.uid = uid
        status.since = utcnow()
        if self._listener is not None:
            self._listener.jig_changed(status)
