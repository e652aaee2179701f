"""Who hears what happens on the jigs: one observer protocol, a no-op base and a fan-out.

Metrics, the latency probe, the status board and the publishers (MQTT, Sparkplug, OPC UA,
the demo table) are observers; the runner and the provisioner only ever call one observer.
Every method is called on the hot path, on the event loop: it must be O(1) and never block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from linehost.records import AttemptEnd, AttemptStart, JigStatus

#: The database operations timed by `database_committed`.
DB_ASSIGN: Final = "assign"
DB_END_ATTEMPT: Final = "end_attempt"


class AttemptObserver(Protocol):
    """Told about jig state changes and each attempt's life and latencies.

    Every event does nothing by default: subclass `Observer` and override what you listen to.
    """

    def jig_changed(self, status: JigStatus) -> None:
        """The jig's shown state (or its counters) changed."""
        return None

    def attempt_started(self, start: AttemptStart) -> None:
        """A device identified itself; its attempt begins."""
        return None

    def attempt_ended(self, start: AttemptStart, end: AttemptEnd) -> None:
        """The attempt is over and (when the database allowed) recorded."""
        return None

    def key_taken_up(self, start: AttemptStart, seconds: float) -> None:
        """The host began checking the key (CSR) `seconds` after it was read: the time it
        waited for the event loop, behind the other jigs' work."""
        return None

    def dac_written(self, start: AttemptStart, seconds: float) -> None:
        """Host-added latency: the key (CSR) was read `seconds` before its DAC was written."""
        return None

    def result_committed(self, start: AttemptStart, seconds: float) -> None:
        """A provisioned device's finish line was read `seconds` before it was committed."""
        return None

    def issuer_answered(self, start: AttemptStart, seconds: float) -> None:
        """The issuer took `seconds` for one DAC."""
        return None

    def database_committed(self, start: AttemptStart, operation: str, seconds: float) -> None:
        """A store call (`DB_ASSIGN`, `DB_END_ATTEMPT`) took `seconds` until durably committed."""
        return None

    def step_ran(self, status: JigStatus, step: str, ok: bool, seconds: float) -> None:
        """A pre or post step ran on the jig."""
        return None


class Observer(AttemptObserver):
    """An observer that ignores everything: the base to override what you listen to."""

    __slots__ = ()


#: The observer of a line nobody watches (tests, tools).
NO_OBSERVER: Final[AttemptObserver] = Observer()


class Observers:
    """Fans every event out to several observers, in order."""

    __slots__ = ("_all",)

    def __init__(self, observers: Iterable[AttemptObserver]) -> None:
        self._all = tuple(observers)

    def jig_changed(self, status: JigStatus) -> None:
        for observer in self._all:
            observer.jig_changed(status)

    def attempt_started(self, start: AttemptStart) -> None:
        for observer in self._all:
            observer.attempt_started(start)

    def attempt_ended(self, start: AttemptStart, end: AttemptEnd) -> None:
        for observer in self._all:
            observer.attempt_ended(start, end)

    def key_taken_up(self, start: AttemptStart, seconds: float) -> None:
        for observer in self._all:
            observer.key_taken_up(start, seconds)

    def dac_written(self, start: AttemptStart, seconds: float) -> None:
        for observer in self._all:
            observer.dac_written(start, seconds)

    def result_committed(self, start: AttemptStart, seconds: float) -> None:
        for observer in self._all:
            observer.result_committed(start, seconds)

    def issuer_answered(self, start: AttemptStart, seconds: float) -> None:
        for observer in self._all:
            observer.issuer_answered(start, seconds)

    def database_committed(self, start: AttemptStart, operation: str, seconds: float) -> None:
        for observer in self._all:
            observer.database_committed(start, operation, seconds)

    def step_ran(self, status: JigStatus, step: str, ok: bool, seconds: float) -> None:
        for observer in self._all:
            observer.step_ran(status, step, ok, seconds)


def fan_out(observers: Iterable[AttemptObserver | None]) -> AttemptObserver:
    """One observer for all those given (None entries dropped): itself when only one."""
    present = [observer for observer in observers if observer is not None]
    if not present:
        return NO_OBSERVER
    return present[0] if len(present) == 1 else Observers(present)
