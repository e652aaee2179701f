"""Which device may begin an attempt, and what the jig shows meanwhile: sans-IO, shared by
every jig protocol.

Two rules sit between "a device identified itself" and "an attempt begins", whatever the
firmware speaks:

* **Swap hold.** The device that just finished (or that a previous host finished, see
  `expect_swap`) is still in the jig when it answers again: it waits for a swap, no attempt.
  The hold ends when another device answers, or when `empty_after_syncs` sync rounds go
  unanswered (the jig is empty) - unless the device was told to fall silent (`silent`), since
  then silence proves nothing.
* **New-device hold.** While a pre step is due (`hold_new_devices(True)`), a new device is only
  announced (`DeviceArrived`), so the runner can prepare it first.

The gate also keeps the sync clock (when the next sync round is due) and the visible jig state,
since the swap hold decides between `waiting_for_swap` and `waiting_for_device`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from linehost.protocol.outcomes import JigState
from linehost.protocol.session import DeviceArrived, Effect, StateChanged, Timing


class Admission(Enum):
    """What becomes of a device that identified itself."""

    ATTEMPT = "attempt"  # its attempt begins
    SWAP = "swap"  # it is the finished device, still in the jig: it waits for a swap
    ARRIVED = "arrived"  # new devices are held: announced (DeviceArrived), to be prepared


class DeviceGate:
    """The swap hold, the new-device hold, the sync clock and the visible state of one jig."""

    def __init__(self, timing: Timing, *, turn_away: Sequence[Effect] = ()) -> None:
        self.timing = timing
        #: What the protocol tells a device that may not begin (v1: `Abort`; letters: nothing).
        self._turn_away = tuple(turn_away)
        self.next_sync = 0.0  # loop time of the next sync round, while syncing
        self._state = JigState.OFFLINE
        self._swap_uid: str | None = None  # the finished device still (maybe) in the jig
        self._silent = False  # that device was told to stop talking: silence is no swap
        self._hold_new = False  # a pre step is due: a new device yields DeviceArrived
        self._unanswered = 0  # sync rounds without an answer since the last one

    @property
    def state(self) -> JigState:
        """The visible jig state."""
        return self._state

    @property
    def holding(self) -> bool:
        """A finished device may still be in the jig: no new device is expected yet."""
        return self._swap_uid is not None

    # --- the runner's controls (JigProtocol) ------------------------------------------------

    def hold_new_devices(self, hold: bool) -> None:
        """While held, a new device yields DeviceArrived (to be prepared) instead of an attempt."""
        self._hold_new = hold

    def expect_swap(self, uid: str | None) -> None:
        """`uid` finished here earlier: if it answers again, it waits for a swap (no attempt)."""
        if uid is not None:
            self._swap_uid = uid
            self._unanswered = 0

    # --- the session's events ---------------------------------------------------------------

    def finished(self, uid: str | None, *, silent: bool = False) -> None:
        """An attempt with `uid` ended: hold it until it is swapped (None holds nothing).

        `silent`: the device was told to stop talking, so unanswered syncs do not end the hold.
        """
        self._swap_uid = uid
        self._silent = silent
        self._unanswered = 0

    def answered(self) -> None:
        """A device answered the sync round."""
        self._unanswered = 0

    def admit(self, uid: str, out: list[Effect]) -> Admission:
        """`uid` identified itself: may its attempt begin?

        If not, the device is turned away (the protocol's `turn_away` effects) and either
        waits for a swap (it is the held one) or is announced with `DeviceArrived`.
        """
        if uid == self._swap_uid:
            out += self._turn_away
            self.show(JigState.WAITING_FOR_SWAP, uid, out)
            return Admission.SWAP
        self._swap_uid = None
        self._silent = False
        if self._hold_new:
            out += self._turn_away
            out.append(DeviceArrived(uid))
            return Admission.ARRIVED
        return Admission.ATTEMPT

    def start_syncing(self, now: float, first: float, out: list[Effect]) -> bool:
        """The session syncs again, its first round at `first`: True when that is now.

        The jig shows `waiting_for_device` unless it still holds a finished device.
        """
        if self._state is not JigState.WAITING_FOR_SWAP or self._swap_uid is None:
            self.show(JigState.WAITING_FOR_DEVICE, None, out)
        if first <= now:
            self.next_sync = now + self.timing.sync_interval
            return True
        self.next_sync = first
        return False

    def sync_due(self, now: float, out: list[Effect]) -> bool:
        """Time passed while syncing: True when the next sync round is to be sent now.

        A round that is due counts the previous one as unanswered; after `empty_after_syncs`
        of them the jig is empty and the swap hold is over.
        """
        if now < self.next_sync:
            return False
        self._unanswered += 1
        if (
            self._swap_uid is not None
            and not self._silent
            and self._unanswered > self.timing.empty_after_syncs
        ):
            self._swap_uid = None
            self.show(JigState.WAITING_FOR_DEVICE, None, out)
        self.next_sync = now + self.timing.sync_interval
        return True

    def show(self, state: JigState, uid: str | None, out: list[Effect]) -> None:
        """The jig's visible state becomes `state` (a StateChanged effect when it changes)."""
        if state is not self._state:
            self._state = state
            out.append(StateChanged(state, uid))


class GatedSession:
    """The JigProtocol members a session answers from its `DeviceGate`."""

    _gate: DeviceGate

    @property
    def state(self) -> JigState:
        """The visible jig state."""
        return self._gate.state

    def hold_new_devices(self, hold: bool) -> None:
        """While held, a new device yields DeviceArrived (to be prepared) instead of an attempt."""
        self._gate.hold_new_devices(hold)

    def expect_swap(self, uid: str | None) -> None:
        """`uid` finished here earlier: if it answers again, it waits for a swap (no attempt)."""
        self._gate.expect_swap(uid)
