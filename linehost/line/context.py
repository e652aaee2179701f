"""What a jig runner is given: where its jig is, and what every jig of the line shares."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from linehost.line.hold import JigHolds
from linehost.line.provisioning import Provisioner
from linehost.observers import NO_OBSERVER, AttemptObserver
from linehost.protocol.session import AttemptStarted, Timing
from linehost.records import AttemptStart, utcnow
from linehost.transport.serial import JigPort, open_port


@dataclass(frozen=True, slots=True)
class LineContext:
    """What every jig of one line shares: its provisioner, timing, observer and port opener."""

    provisioner: Provisioner
    timing: Timing = field(default_factory=Timing)
    observer: AttemptObserver = NO_OBSERVER
    open_port: Callable[[str, int], Awaitable[JigPort]] = open_port
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

    def attempt_start(self, started: AttemptStarted, work_order: str | None) -> AttemptStart:
        """The attempt the session just started on this jig, from now."""
        return AttemptStart(
            attempt_id=str(uuid.uuid4()),
            line=self.line,
            station=self.station,
            jig=self.name,
            uid=started.uid,
            started_at=utcnow(),
            work_order=work_order,
            key_proof=started.key_proof,
        )
