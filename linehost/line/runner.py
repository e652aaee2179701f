"""JigRunner: one jig's life — open the port, converse device after device, survive unplugs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import structlog

from linehost.errors import (
    CsrRejected,
    DatabaseUnavailable,
    IssuerError,
    StoreError,
    TransportError,
)
from linehost.line.status import JigStatus, StatusListener, utcnow
from linehost.pki.csr import parse_csr
from linehost.pki.issuer import Issuer
from linehost.protocol.host import (
    AttemptEnded,
    AttemptStarted,
    CsrReady,
    Effect,
    HostSession,
    SendLine,
    StateChanged,
    Timing,
)
from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome
from linehost.store.records import AssignRequest, AssignResult, AttemptEnd, AttemptStart
from linehost.transport.serial import Backoff, JigPort, PortLost, open_port

DB_RETRY_MIN: Final = 0.5
DB_RETRY_MAX: Final = 5.0
ISSUE_RETRIES: Final = 3

T = TypeVar("T")


class AttemptStore(Protocol):
    """What a runner needs from the store; every call returns only once committed."""

    async def assign(self, req: AssignRequest) -> AssignResult: ...

    async def end_attempt(self, start: AttemptStart, end: AttemptEnd) -> None: ...


@dataclass(frozen=True, slots=True)
class JigSpec:
    """Where a jig is and how to reach it."""

    line: str
    station: str
    name: str
    port: str
    baudrate: int = 115200


@dataclass(slots=True)
class _Attempt:
    start: AttemptStart
    assignment_id: int | None = None
    dac_serial: str | None = None
    recorded: bool = False  # the store already ended it (a rejected assign)


class _Stop(Exception):
    """Internal: leave the conversation loop (host shutting down)."""


class JigRunner:
    """Drives one jig until cancelled; never raises for a port, device or database fault."""

    def __init__(
        self,
        spec: JigSpec,
        *,
        issuer: Issuer,
        store: AttemptStore,
        timing: Timing,
        listener: StatusListener | None = None,
        allow_reprovision: bool = False,
        work_order: str | None = None,
        port_opener: Callable[[str, int], Awaitable[JigPort]] = open_port,
    ) -> None:
        self.spec = spec
        self.status = JigStatus(spec.line, spec.station, spec.name)
        self._issuer = issuer
        self._store = store
        self._timing = timing
        self._listener = listener
        self._allow_reprovision = allow_reprovision
        self._work_order = work_order
        self._open = port_opener
        self._log = structlog.get_logger("linehost.jig").bind(
            line=spec.line, station=spec.station, jig=spec.name
        )
        self._session = HostSession(timing)
        self._attempt: _Attempt | None = None
        self._port: JigPort | None = None
        self._stopping = False
        self._abort_detail: str | None = None
        self._wake = asyncio.Event()
        self._backoff = Backoff()
        self._loop = asyncio.get_running_loop()

    # --- control ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a device is mid-attempt on this jig."""
        return self._attempt is not None

    def request_stop(self) -> None:
        """Take no new device; the current attempt may still finish."""
        self._stopping = True
        self._wake.set()
        if self._port is not None:
            self._port.events.put_nowait([])  # wake the conversation loop

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
        session = self._session = HostSession(self._timing)
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
                    port.send(["Abort"])
                    raise _Stop
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
            now = loop.time()
            for frame in item:
                if isinstance(frame, str):
                    effects = session.on_line(frame, now)
                else:
                    effects = session.on_line_too_long(frame.length, now)
                if effects:
                    await self._apply(effects)

    async def _apply(self, effects: list[Effect]) -> None:
        outgoing: list[str] = []
        for effect in effects:
            if isinstance(effect, SendLine):
                outgoing.append(effect.text)
                continue
            if outgoing:
                self._send(outgoing)
                outgoing = []
            if isinstance(effect, StateChanged):
                self._publish(effect.state, effect.uid)
            elif isinstance(effect, AttemptStarted):
                self._begin(effect)
            elif isinstance(effect, CsrReady):
                await self._apply(await self._provision(effect))
            elif isinstance(effect, AttemptEnded):
                await self._end(effect)
        if outgoing:
            self._send(outgoing)

    def _send(self, lines: list[str]) -> None:
        if self._port is not None:
            self._port.send(lines)

    def _begin(self, started: AttemptStarted) -> None:
        start = AttemptStart(
            attempt_id=str(uuid.uuid4()),
            line=self.spec.line,
            station=self.spec.station,
            jig=self.spec.name,
            uid=started.uid,
            started_at=utcnow(),
            work_order=self._work_order,
        )
        self._attempt = _Attempt(start)
        self.status.attempt_id = start.attempt_id
        self._log.info("attempt_started", uid=started.uid, attempt_id=start.attempt_id)

    async def _provision(self, ready: CsrReady) -> list[Effect]:
        attempt = self._attempt
        assert attempt is not None
        log = self._log.bind(uid=ready.uid, attempt_id=attempt.start.attempt_id)
        now = self._loop.time
        try:
            csr = parse_csr(ready.csr_pem)
        except CsrRejected as exc:
            log.warning("csr_rejected", detail=str(exc))
            return self._session.reject(Outcome.CSR_REJECTED, str(exc), now())
        log.debug("csr_received", key=csr.public_key_sha256[:16])
        for _ in range(ISSUE_RETRIES):
            try:
                candidate = await self._issuer.issue(ready.uid, csr)
            except IssuerError as exc:
                log.error("issuer_failed", detail=str(exc))
                return self._session.reject(Outcome.ISSUER_ERROR, str(exc), now())
            request = AssignRequest(
                attempt=attempt.start,
                public_key_sha256=csr.public_key_sha256,
                candidate=candidate,
                allow_reprovision=self._allow_reprovision,
            )
            try:
                result = await self._with_database(functools.partial(self._store.assign, request))
            except IssuerError as exc:  # a serial collision: draw a new DAC
                log.warning("dac_collision", detail=str(exc))
                continue
            except StoreError as exc:
                log.error("assign_failed", detail=str(exc))
                return self._session.reject(Outcome.ISSUER_ERROR, f"database: {exc}", now())
            break
        else:
            return self._session.reject(Outcome.ISSUER_ERROR, "repeated DAC collisions", now())
        if result.kind == "rejected":
            attempt.recorded = True
            assert result.outcome is not None
            log.warning("assignment_rejected", outcome=result.outcome.value, detail=result.detail)
            return self._session.reject(result.outcome, result.detail, now())
        assert result.dac_pem is not None
        attempt.assignment_id = result.assignment_id
        attempt.dac_serial = result.dac_serial
        log.info(
            "dac_issued" if result.kind == "issued" else "dac_redelivered",
            dac_serial=result.dac_serial,
        )
        # The assignment is committed: only now may the DAC reach the port.
        return self._session.deliver(result.dac_pem, self._issuer.pai_pem, now())

    async def _end(self, ended: AttemptEnded) -> None:
        attempt = self._attempt
        self._attempt = None
        if attempt is None:
            return
        log = self._log.bind(uid=ended.uid, attempt_id=attempt.start.attempt_id)
        status = None
        if attempt.assignment_id is not None:
            if ended.outcome is Outcome.PROVISIONED:
                status = AssignmentStatus.CONFIRMED
            elif ended.outcome is Outcome.DEVICE_ERROR:
                status = AssignmentStatus.FAILED
            else:
                status = AssignmentStatus.UNKNOWN
        end = AttemptEnd(
            outcome=ended.outcome,
            detail=ended.detail,
            ended_at=utcnow(),
            device_code=ended.device_code,
            assignment_id=attempt.assignment_id,
            assignment_status=status,
            dac_serial=attempt.dac_serial,
            transcript="\n".join(ended.transcript),
        )
        if not attempt.recorded:
            try:
                await self._with_database(lambda: self._store.end_attempt(attempt.start, end))
            except StoreError as exc:
                log.error("attempt_not_recorded", detail=str(exc))
        if ended.outcome is Outcome.PROVISIONED:
            self.status.ok += 1
        else:
            self.status.failed += 1
        self.status.last_outcome = ended.outcome
        self.status.last_detail = ended.detail
        self.status.last_uid = ended.uid
        self.status.attempt_id = None
        log.info("attempt_ended", outcome=ended.outcome.value, detail=ended.detail)
        self._publish(self._session.state, None)

    async def _with_database(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry while the database is away, showing `waiting_for_database` meanwhile."""
        delay = DB_RETRY_MIN
        previous: tuple[JigState, str | None] | None = None
        while True:
            try:
                result = await call()
            except DatabaseUnavailable as exc:
                if previous is None:
                    previous = (self.status.state, self.status.uid)
                    self._log.warning("database_unavailable", detail=str(exc))
                    self._publish(JigState.WAITING_FOR_DATABASE, self.status.uid)
                await asyncio.sleep(delay)
                delay = min(DB_RETRY_MAX, delay * 2)
                continue
            if previous is not None:
                self._log.info("database_back")
                self._publish(*previous)
            return result

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

    def _publish(self, state: JigState, uid: str | None = None) -> None:
        status = self.status
        if state is status.state and uid == status.uid:
            return
        status.state = state
        status.uid = uid
        status.since = utcnow()
        if self._listener is not None:
            self._listener.jig_changed(status)
