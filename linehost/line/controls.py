"""LineControls: what a supervisor may do to a running line, each call recorded in the audit chain.

Hold / resume a jig, open / close a work order. The front end (OPC UA today) says who calls;
this decides, records the call (refused ones too, with the reason) in the line's hash-chained
audit log, and only then changes the line. A call that cannot be recorded changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import structlog

from linehost.errors import LinehostError
from linehost.line.hold import JigHolds
from linehost.line.workorder import WorkOrderGate
from linehost.store.controls import ControlEvent, WorkOrderRefused
from linehost.store.models import NAME_LEN

_log = structlog.get_logger("linehost.controls")

#: Why a call was refused: the front end maps it to its own status (OPC UA Bad... codes).
RefusalKind = Literal["denied", "bad_argument", "invalid_state", "unavailable"]
REFUSED: Final = "control_refused"


class ControlRefused(LinehostError):
    """A control call that changed nothing; `kind` says why, the message is the reason."""

    def __init__(self, kind: RefusalKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: the front end (`opcua`), the user, and whether the user may change the line."""

    via: str
    user: str
    may_control: bool = True


class ControlStore(Protocol):
    """The store's part: the audit row of a call, and a work order opened or closed with it."""

    async def record_control(self, event: ControlEvent) -> None: ...

    async def control_work_order(
        self, event: ControlEvent, *, open_quantity: int | None = None, close_by: str = ""
    ) -> None: ...


class LineControls:
    """The supervisor operations of one line host."""

    def __init__(
        self,
        store: ControlStore,
        holds: JigHolds,
        *,
        jigs: Sequence[tuple[str, str]],
        gate: WorkOrderGate | None = None,
    ) -> None:
        self._store = store
        self.holds = holds
        self._jigs = set(jigs)
        self._gate = gate

    async def hold(self, caller: Caller, station: str, jig: str) -> bool:
        """Stop the jig taking new devices (the one in progress finishes); False: held already."""
        return await self._jig(caller, "Jig.Hold", station, jig, held=True)

    async def resume(self, caller: Caller, station: str, jig: str) -> bool:
        """Let the jig take devices again; False: it was not held."""
        return await self._jig(caller, "Jig.Resume", station, jig, held=False)

    async def open_work_order(self, caller: Caller, work_order: str, quantity: int) -> None:
        """Register a work order (the same quantity again is fine)."""
        operation, args = "WorkOrder.Open", {"work_order": work_order, "quantity": quantity}
        await self._allowed(caller, operation, work_order, args)
        if not work_order or len(work_order) > NAME_LEN or quantity <= 0:
            await self._refuse(caller, operation, work_order, args, "bad_argument",
                               f"needs a work order id of 1..{NAME_LEN} characters and a "
                               "quantity above 0")  # fmt: skip
        event = self._event(caller, "work_order_opened", operation, work_order, args)
        await self._work_order(caller, operation, args, event, open_quantity=quantity)

    async def close_work_order(self, caller: Caller, work_order: str) -> None:
        """Close a work order: no device is provisioned against it any more (on any host)."""
        operation, args = "WorkOrder.Close", {"work_order": work_order}
        await self._allowed(caller, operation, work_order, args)
        if not work_order or len(work_order) > NAME_LEN:
            await self._refuse(caller, operation, work_order, args, "bad_argument",
                               f"needs a work order id of 1..{NAME_LEN} characters")  # fmt: skip
        event = self._event(caller, "work_order_closed", operation, work_order, args)
        await self._work_order(caller, operation, args, event, close_by=caller.user)
        if self._gate is not None and self._gate.id == work_order:
            self._gate.set_complete(True, closed=True)  # at once, not at the next poll

    # --- helpers -----------------------------------------------------------------------------

    async def _jig(self, caller: Caller, operation: str, station: str, jig: str, *,
                   held: bool) -> bool:  # fmt: skip
        target, args = f"{station}/{jig}", {"station": station, "jig": jig}
        await self._allowed(caller, operation, target, args)
        if (station, jig) not in self._jigs:
            await self._refuse(caller, operation, target, args, "bad_argument",
                               f"no jig {target} on this line host")  # fmt: skip
        hold = self.holds.of(station, jig)
        changed = hold.held is not held
        result = "done" if changed else ("held already" if held else "not held")
        name = "jig_held" if held else "jig_resumed"
        await self._record(caller, self._event(caller, name, operation, target, args, result))
        hold.set(held)
        _log.info(name, station=station, jig=jig, via=caller.via, user=caller.user,
                  changed=changed)  # fmt: skip
        return changed

    async def _work_order(
        self,
        caller: Caller,
        operation: str,
        args: dict[str, Any],
        event: ControlEvent,
        *,
        open_quantity: int | None = None,
        close_by: str = "",
    ) -> None:
        try:
            await self._store.control_work_order(
                event, open_quantity=open_quantity, close_by=close_by
            )
        except WorkOrderRefused as exc:
            await self._refuse(caller, operation, event.target, args, "invalid_state", str(exc))
        except LinehostError as exc:
            _log.warning("control_not_recorded", operation=operation, user=caller.user,
                         detail=str(exc))  # fmt: skip
            raise ControlRefused("unavailable", f"not recorded, nothing changed: {exc}") from None
        _log.info(event.event, work_order=event.target, via=caller.via, user=caller.user)

    async def _allowed(
        self, caller: Caller, operation: str, target: str, args: dict[str, Any]
    ) -> None:
        if not caller.may_control:
            await self._refuse(caller, operation, target, args, "denied",
                               f"user {caller.user!r} may only read")  # fmt: skip

    async def _refuse(
        self,
        caller: Caller,
        operation: str,
        target: str,
        args: dict[str, Any],
        kind: RefusalKind,
        reason: str,
    ) -> None:
        """Record the refusal, then raise ControlRefused (always)."""
        event = self._event(caller, REFUSED, operation, target, args, "refused", kind, reason)
        _log.warning(REFUSED, operation=operation, target=target, via=caller.via,
                     user=caller.user, reason=reason)  # fmt: skip
        await self._record(caller, event)
        raise ControlRefused(kind, reason)

    async def _record(self, caller: Caller, event: ControlEvent) -> None:
        try:
            await self._store.record_control(event)
        except LinehostError as exc:
            _log.warning("control_not_recorded", control_event=event.event, user=caller.user,
                         detail=str(exc))  # fmt: skip
            raise ControlRefused("unavailable", f"not recorded, nothing changed: {exc}") from None

    @staticmethod
    def _event(
        caller: Caller,
        name: str,
        operation: str,
        target: str,
        args: dict[str, Any],
        result: str = "done",
        refusal: RefusalKind | None = None,
        reason: str | None = None,
    ) -> ControlEvent:
        data: dict[str, Any] = {
            "via": caller.via,
            "user": caller.user,
            "operation": operation,
            "arguments": args,
            "result": result,
        }
        if refusal is not None:
            data["refusal"] = refusal
            data["reason"] = reason
        return ControlEvent(name, target or "-", data)
