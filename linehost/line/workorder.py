"""Work orders on the line: what this host's jigs know about the quota the database keeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from linehost.errors import LinehostError, PkiError
from linehost.pki.cd import CertificationDeclaration, check_cd_for, check_cd_signature, load_cd
from linehost.pki.pai import load_certificate
from linehost.store.audit import Audit
from linehost.store.decisions import WORK_ORDER_CLOSED
from linehost.store.store import WORK_ORDER_COMPLETE

if TYPE_CHECKING:
    from linehost.config import LineConfig

WATCH_INTERVAL: Final = 5.0

_log = structlog.get_logger("linehost.workorder")


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """A work order as opened: its quantity and, when it names them, its checked CD and the
    firmware version its devices run."""

    id: str
    quantity: int
    cd: CertificationDeclaration | None = None
    firmware_version: str | None = None

    @property
    def recorded(self) -> tuple[str | None, str | None]:
        """(cd_sha256, firmware_version) as the database keeps them with the work order."""
        return (self.cd.sha256 if self.cd is not None else None, self.firmware_version)


def checked_work_order(config: LineConfig) -> WorkOrder | None:
    """`[work_order]` with its Certification Declaration read and checked (structure, signature
    by a `pki.cd_signer_certs` key, VID/PID of the work order); PkiError in one line."""
    wo = config.work_order
    if wo is None:
        return None
    cd = None
    if wo.cd_file is not None:
        vid, pid = wo.vid or config.pki.vid, wo.pid or config.pki.pid
        cd = load_work_order_cd(wo.id, wo.cd_file, vid, pid, config.pki.cd_signer_certs)
    return WorkOrder(wo.id, wo.quantity, cd, wo.firmware_version)


def load_work_order_cd(
    work_order: str, path: Path, vid: str, pid: str, signer_certs: list[Path]
) -> CertificationDeclaration:
    """The CD a work order names, checked; PkiError naming the work order, file and problem."""
    signers = [load_certificate(p, "CD signer") for p in signer_certs]
    where = f"work order {work_order}: CD file {path}"
    try:
        cd = load_cd(path)
    except PkiError as exc:
        raise PkiError(f"work order {work_order}: {exc}") from None
    try:
        check_cd_signature(cd, signers)
        check_cd_for(cd, vid, pid)
    except PkiError as exc:
        raise PkiError(f"{where}: {exc}") from None
    return cd


class WorkOrderGate:
    """The work order every attempt of this host belongs to, and whether it is complete.

    The database decides (a guarded claim per assignment); the gate only remembers the last
    answer so that jigs show `work_order_complete` and skip issuing while nothing is left.
    """

    def __init__(self, work_order: str, quantity: int) -> None:
        self.id = work_order
        self.quantity = quantity
        self.complete = False
        self.closed = False  # a supervisor closed it: complete for good
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever `complete` changes."""
        self._listeners.append(listener)

    def set_complete(self, complete: bool, *, closed: bool = False) -> None:
        """Record what the database said; tell the jigs when it changed."""
        self.closed = self.closed or closed  # a closed work order is never opened again
        complete = complete or self.closed
        if complete is self.complete:
            return
        self.complete = complete
        event = "work_order_closed" if closed else "work_order_complete"
        _log.info(event if complete else "work_order_open", work_order=self.id)
        for listener in self._listeners:
            listener()

    @property
    def refusal(self) -> str:
        """The attempt detail for a device refused while the work order is complete."""
        if self.closed:
            return f"{WORK_ORDER_CLOSED}: {self.id} takes no more devices"
        return f"{WORK_ORDER_COMPLETE}: {self.id} has all {self.quantity} devices"


class NoWorkOrder:
    """The gate of a line without a work order: never complete, nothing to refuse or tell."""

    id: None = None
    complete: Final = False
    refusal: Final = ""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Nothing ever changes."""

    def set_complete(self, complete: bool, *, closed: bool = False) -> None:
        """No slot to run out of (a quota needs a work order)."""


#: The gate of every line without `[work_order]`.
NO_WORK_ORDER: Final = NoWorkOrder()


def progress_complete(progress: dict[str, Any]) -> bool:
    """No slot left: every device of the quantity has a live (issued/confirmed) DAC."""
    quantity, claimed = progress.get("quantity"), progress.get("claimed")
    return isinstance(quantity, int) and isinstance(claimed, int) and claimed >= quantity


async def watch_line(
    audit: Audit,
    *,
    line: str,
    gate: WorkOrderGate | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
    on_outbox: Callable[[int], None] | None,
    interval: float = WATCH_INTERVAL,
) -> None:
    """Every `interval` s: read the work order's progress (all hosts) and the outbox depth."""
    while True:
        with contextlib.suppress(LinehostError):  # the runners report database trouble
            if gate is not None:
                progress = await audit.work_order_progress(gate.id)
                if progress is not None:
                    gate.set_complete(
                        progress_complete(progress), closed=progress.get("closed_at") is not None
                    )
                    if on_progress is not None:
                        on_progress(progress)
            if on_outbox is not None:
                on_outbox(await audit.outbox_depth(line))
        await asyncio.sleep(interval)
