"""Jig holds: a supervisor stops a jig taking new devices, and lets it take them again.

A held jig finishes the device in progress, tells the firmware to stop (Abort) and sends
nothing more — no Init, no new attempt — until it is resumed. The runner asks its `JigHold`
between devices; whoever decides (OPC UA, a command) holds or resumes it through `JigHolds`.
Holds live in the process: a restarted host takes devices on every jig.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

_log = structlog.get_logger("linehost.hold")

JigKey = tuple[str, str]  # (station, jig)


class JigHold:
    """Whether one jig may take a new device; listeners hear every change."""

    def __init__(self) -> None:
        self.held = False
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever `held` changes."""
        self._listeners.append(listener)

    def set(self, held: bool) -> bool:
        """Hold (True) or resume (False); returns whether anything changed."""
        if held is self.held:
            return False
        self.held = held
        for listener in self._listeners:
            listener()
        return True


class JigHolds:
    """The holds of one line's jigs, by (station, jig)."""

    def __init__(self) -> None:
        self._holds: dict[JigKey, JigHold] = {}

    def of(self, station: str, jig: str) -> JigHold:
        """The hold of one jig (made on first use: every jig has one)."""
        return self._holds.setdefault((station, jig), JigHold())

    def known(self, station: str, jig: str) -> bool:
        """A runner asked for this jig's hold (the jig is configured on this host)."""
        return (station, jig) in self._holds

    def hold(self, station: str, jig: str) -> bool:
        """Stop the jig taking new devices; False when it was held already."""
        changed = self.of(station, jig).set(True)
        _log.info("jig_hold_requested", station=station, jig=jig, changed=changed)
        return changed

    def resume(self, station: str, jig: str) -> bool:
        """Let the jig take devices again; False when it was not held."""
        changed = self.of(station, jig).set(False)
        _log.info("jig_resume_requested", station=station, jig=jig, changed=changed)
        return changed
