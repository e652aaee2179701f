"""What a jig shows the line: the record behind dashboard tiles, MQTT state and the demo table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from linehost.protocol.outcomes import JigState, Outcome


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the only clock for recorded times)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class JigStatus:
    """One jig's live status (contracts.md: the `jigs/{station}/{jig}/state` payload)."""

    line: str
    station: str
    jig: str
    state: JigState = JigState.OFFLINE
    uid: str | None = None
    attempt_id: str | None = None
    since: datetime = field(default_factory=utcnow)
    ok: int = 0
    failed: int = 0
    last_outcome: Outcome | None = None
    last_detail: str | None = None
    last_uid: str | None = None

    def payload(self) -> dict[str, object]:
        """The MQTT/dashboard JSON object."""
        return {
            "state": self.state.value,
            "uid": self.uid,
            "attempt_id": self.attempt_id,
            "since": iso(self.since),
            "ok": self.ok,
            "failed": self.failed,
            "last_outcome": self.last_outcome.value if self.last_outcome else None,
            "last_detail": self.last_detail,
            "last_uid": self.last_uid,
            "line": self.line,
            "station": self.station,
            "jig": self.jig,
        }


class StatusListener(Protocol):
    """Told about every jig status change (publisher, terminal table, metrics)."""

    def jig_changed(self, status: JigStatus) -> None: ...


def iso(value: datetime) -> str:
    """ISO 8601 UTC with a Z suffix, microseconds kept."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
