"""What one jig shows: its status record, told to the line's observer on every change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from linehost.observers import AttemptObserver
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus, utcnow

#: Between devices: shown as `work_order_complete` while the work order has no slot left.
IDLE_STATES: Final = frozenset(
    {JigState.WAITING_FOR_DEVICE, JigState.WAITING_FOR_SWAP, JigState.WORK_ORDER_COMPLETE}
)


class JigDisplay:
    """The jig's shown state: idle shows `work_order_complete` when nothing is left to do, and
    a wait for the database or issuer is shown over the state it interrupts."""

    def __init__(
        self,
        status: JigStatus,
        observer: AttemptObserver,
        work_order_complete: Callable[[], bool],
    ) -> None:
        self.status = status
        self._observer = observer
        self._complete = work_order_complete
        self._before_wait: tuple[JigState, str | None] | None = None

    @property
    def work_order_complete(self) -> bool:
        """The line's work order has no slot left: nothing will be provisioned."""
        return self._complete()

    def show(self, state: JigState, uid: str | None = None) -> None:
        """Show `state` (and the device's UID); tell the observer when anything changed."""
        if state in IDLE_STATES and self._complete():
            state = JigState.WORK_ORDER_COMPLETE  # nothing more to do here: say so first
        status = self.status
        if state is status.state and uid == status.uid:
            return
        status.state = state
        status.uid = uid
        status.since = utcnow()
        self._observer.jig_changed(status)

    def waiting(self, waiting: JigState | None) -> None:
        """Show what the attempt waits for (database, issuer); None: back to the state before."""
        if waiting is not None:
            if self._before_wait is None:
                self._before_wait = (self.status.state, self.status.uid)
            self.show(waiting, self.status.uid)
        elif self._before_wait is not None:
            self.show(*self._before_wait)
            self._before_wait = None

    def work_order_changed(self, session_state: JigState) -> None:
        """The work order became complete or open again: an idle jig shows it at once."""
        if self.status.state in IDLE_STATES and session_state in IDLE_STATES:
            self.show(session_state, self.status.uid)
