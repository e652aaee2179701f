"""What a jig runner is given: where its jig is, and what every jig of the line shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from linehost.line.provisioning import Provisioner
from linehost.observers import NO_OBSERVER, AttemptObserver
from linehost.protocol.session import Timing
from linehost.transport.serial import JigPort, open_port


@dataclass(frozen=True, slots=True)
class LineContext:
    """What every jig of one line shares: its provisioner, timing, observer and port opener."""

    provisioner: Provisioner
    timing: Timing = field(default_factory=Timing)
    observer: AttemptObserver = NO_OBSERVER
    open_port: Callable[[str, int], Awaitable[JigPort]] = open_port


@dataclass(frozen=True, slots=True)
class JigSpec:
    """Where a jig is and how to reach it."""

    line: str
    station: str
    name: str
    port: str
    baudrate: int = 115200
    protocol: str = "v1"  # the jig protocol its firmware speaks (`[[jigs]] protocol`)
