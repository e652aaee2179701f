"""JigRunner: one jig's life — open the port, converse device after device, survive unplugs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import NoReturn

import structlog

from linehost.errors import TransportError
from linehost.line.context import JigSpec, LineContext
from linehost.line.display import JigDisplay
from linehost.line.preparation import Preparation, PreStep
from linehost.line.provisioning import Attempt, Reject
from linehost.line.steps import JigSteps
from linehost.protocol.factory import new_session
from linehost.protocol.outcomes import JigState, Outcome
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
)
from linehost.records import JigStatus
from linehost.transport.serial import JigPort, PortLost, reopen_backoff

__all__ = ["JigRunner", "JigSpec", "LineContext"]  # the line's seam: import them from here


class JigRunner:
    """Drives one jig until cancelled; never raises for a port, device or database fault."""

    def __init__(self, spec: JigSpec, line: LineContext, *, steps: JigSteps | None = None) -> None:
        self.spec = spec
        self.status = JigStatus(spec.line, spec.station, spec.name)
        self._provisioner = line.provisioner
        self._timing = line.timing
        self._observer = line.observer
        self._open = line.open_port
        self._log = structlog.get_logger("linehost.jig").bind(
            line=spec.line, station=spec.station, jig=spec.name
        )
        self._session = new_session(spec.protocol, line.timing)
        self._attempt: Attempt | None = None  # set from the UID line until recorded (post step)
        self._port: JigPort | None = None
        self._stopping = False
        self._abort_detail: str | None = None
        self._wake = asyncio.Event()
        self._backoff = reopen_backoff()
        self._loop = asyncio.get_running_loop()
        self._display = JigDisplay(
            self.status, line.observer, lambda: line.provisioner.work_order_complete
        )
        self._prep = Preparation(steps, spec.port, self._display, line.observer, self._log)
        self._provisioner.on_work_order(self._on_work_order)
        self._hold = line.holds.of(spec.station, spec.name)
        self._hold.subscribe(self._wake_conversation)

    # --- control ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a device is mid-attempt on this jig (its post step included)."""
        return self._attempt is not None

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
                await self._converse(port)  # returns once stopping
            except TransportError as exc:
                self._log.warning("jig_lost", reason=str(exc))
                await self._pause(self._backoff.next_delay())
                continue
            finally:
                port.close()
                self._port = None
        self._publish(JigState.STOPPED)

    # --- the conversation --------------------------------------------------------------------

    async def _converse(self, port: JigPort) -> None:
        session = self._session = new_session(self.spec.protocol, self._timing)
        self._prep.due()  # a reopened port may hold a new device
        self._hold_new_devices()
        loop = self._loop
        if not self._hold.held:  # held: the loop below waits, nothing sent before the resume
            if self._prep.pre_step_due(session.ready_for_device):
                await self._pre_step(port)
            await self._apply(session.open(loop.time()))
        while True:
            if self._stopping:
                if self._attempt is not None and self._abort_detail is not None:
                    await self._apply(
                        session.abort(Outcome.DISCONNECTED, self._abort_detail, loop.time())
                    )
                if self._attempt is None:
                    await self._apply(session.stop(loop.time()))
                    return
            elif self._hold.held and self._attempt is None:
                await self._held(port, session)
                continue
            elif self._prep.pre_step_due(session.ready_for_device):
                await self._pre_step(port)
                await self._apply(session.open(loop.time()))  # prepared: start it clean
                self._publish(session.state)
                continue
            wake = session.next_wakeup()
            if port.events.empty() and wake is not None:
                try:
                    async with asyncio.timeout_at(wake):
                        item = await port.events.get()
                except TimeoutError:
                    await self._apply(session.on_timer(loop.time()))
                    continue
            else:
                item = await port.events.get()
            if isinstance(item, PortLost):
                await self._port_lost(item.reason)
            effects = session.on_bytes(item, loop.time())
            if effects:
                await self._apply(effects)

    async def _apply(self, effects: list[Effect]) -> None:
        outgoing: list[bytes] = []
        sent_ahead = 0  # effects before this index that are sends went out already
        for index, effect in enumerate(effects):
            if isinstance(effect, SendLine | SendBytes):
                if index < sent_ahead:
                    continue
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
                attempt = self._attempt
                assert attempt is not None
                self._observer.key_taken_up(attempt.start, self._since_read())
                await self._apply(await self._provision(attempt, effect))
                if self._session.in_attempt:  # delivered: the DAC is on its way
                    self._observer.dac_written(attempt.start, self._since_read())
            elif isinstance(effect, AttemptEnded):
                sent_ahead = self._send_ahead(effects, index + 1)
                await self._end(effect)
            elif isinstance(effect, DeviceArrived):
                self._log.info("device_arrived", uid=effect.uid)  # its pre step runs next
        if outgoing:
            self._send(outgoing)

    def _send_ahead(self, effects: list[Effect], start: int) -> int:
        """Send now what the protocol sends after an attempt's end (the next device's sync),
        before that end is recorded: the finished device needs nothing more from the host, and
        the record (a commit) would otherwise stand between every two devices on a jig whose
        swap is instant. Not with a post step: it may still work on the device in the jig; nor
        when the jig is held or stopping: that goes on as before, after the record.
        Returns the index up to which the sends are done."""
        if self._prep.steps.post is not None or self._hold.held or self._stopping:
            return start
        ahead: list[bytes] = []
        end = start
        while end < len(effects) and isinstance(effects[end], SendLine | SendBytes | StateChanged):
            effect = effects[end]
            if isinstance(effect, SendLine | SendBytes):
                ahead.append(effect.data)
            end += 1
        if ahead:
            self._send(ahead)
        return end

    def _send(self, chunks: list[bytes]) -> None:
        if self._port is not None:
            self._port.send(b"".join(chunks))

    def _since_read(self) -> float:
        """Seconds since the port last received bytes (the line being handled)."""
        return self._loop.time() - self._port.received_at if self._port is not None else 0.0

    def _begin(self, started: AttemptStarted) -> None:
        start = self.spec.attempt_start(started, self._provisioner.work_order)
        self._attempt = Attempt(start, self._log, self._display.waiting, self._observer)
        self.status.attempt_id = start.attempt_id
        self._observer.attempt_started(start)
        self._log.debug("attempt_started", uid=started.uid, attempt_id=start.attempt_id)

    async def _provision(self, attempt: Attempt, key: KeyPresented) -> list[Effect]:
        decision = await self._provisioner.provision(attempt, key.pem, key.key_proof)
        now = self._loop.time()
        if isinstance(decision, Reject):
            return self._session.reject(decision.outcome, decision.detail, now)
        d = decision
        return self._session.deliver(
            d.dac_pem, d.pai_pem, now, cd_b64=d.cd_b64, factory_data=d.factory_data,
            root_key_pem=d.root_key_pem,
        )  # fmt: skip

    async def _end(self, ended: AttemptEnded) -> None:
        attempt = self._attempt
        if attempt is not None:
            try:
                await self._finish(attempt, ended)
            finally:
                self._attempt = None  # busy until recorded, its post step included

    async def _finish(self, attempt: Attempt, ended: AttemptEnded) -> None:
        """Run the post step of a provisioned device, record the attempt, show its result."""
        log = self._log.bind(uid=ended.uid, attempt_id=attempt.start.attempt_id)
        outcome, detail = self._provisioner.attestation_verdict(
            attempt, ended.outcome, ended.detail, ended.attestation
        )
        transcript = [*self._prep.take_pre_output(), *ended.transcript]
        self._prep.due()
        self._hold_new_devices()
        serial = attempt.onboarding.serial_num if attempt.onboarding is not None else ""
        provisioned = outcome is Outcome.PROVISIONED  # and proved its DAC when challenged
        post = await self._prep.run_post(ended.uid, serial) if provisioned else None
        if post is not None:
            transcript.extend(post.transcript())
            if not post.ok:
                # The device keeps its DAC (confirmed below); only the step failed.
                outcome, detail = Outcome.POST_STEP_FAILED, post.summary()
                log.warning("post_step_failed", detail=detail)
        end = await self._provisioner.record(
            attempt, outcome, detail, ended.device_code, "\n".join(transcript),
            provisioned=provisioned, attestation=ended.attestation,
        )  # fmt: skip
        if provisioned:
            self._observer.result_committed(attempt.start, self._since_read())
        self._observer.attempt_ended(attempt.start, end)
        self.status.attempt_ended(outcome, detail, ended.uid)
        log.info("attempt_ended", outcome=outcome.value, detail=detail)
        self._publish(self._session.state, None)

    async def _port_lost(self, reason: str) -> NoReturn:
        """The port went away: end the conversation (recorded) and let `run` reopen it."""
        now = self._loop.time()
        await self._apply(self._session.close(Outcome.DISCONNECTED, f"port lost: {reason}", now))
        raise TransportError(reason)

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
        """Between devices, held: stop the device, send nothing until resumed (or stopped); the
        port stays watched, what the device prints is dropped, a resume syncs afresh."""
        swap_uid = self.status.uid if session.state is JigState.WAITING_FOR_SWAP else None
        await self._apply(session.stop(self._loop.time()))
        self._publish(JigState.HELD)
        self._log.info("jig_held")
        while self._hold.held and not self._stopping:
            if isinstance(item := await port.events.get(), PortLost):
                await self._port_lost(item.reason)
        if not self._stopping:
            self._log.info("jig_resumed")
            await self._apply(session.open(self._loop.time()))
            self._publish(session.state, swap_uid)

    def _wake_conversation(self) -> None:
        """A stop, hold or resume: let the conversation loop look at it now."""
        if self._port is not None:
            self._port.events.put_nowait(b"")

    # --- the pre step and the work order (issue 8) ------------------------------------------

    async def _pre_step(self, port: JigPort) -> None:
        """Prepare the coming device (see Preparation.run_pre); a lost port -> TransportError."""
        lost = await self._prep.run_pre(port, lambda: self._stopping)
        if lost is not None:
            await self._port_lost(lost.reason)
        if self._prep.state is PreStep.DONE:
            self._hold_new_devices()
            self._session.expect_swap(self.status.last_uid)  # the step may leave the old device

    def _hold_new_devices(self) -> None:
        self._session.hold_new_devices(self._prep.holds_new_devices())

    def _on_work_order(self) -> None:
        """The work order became complete (or open again): hold devices, show it when idle."""
        self._hold_new_devices()
        self._display.work_order_changed(self._session.state)

    def _publish(self, state: JigState, uid: str | None = None) -> None:
        if self._prep.swap_due(state):
            self._hold_new_devices()
        self._display.show(state, uid)
