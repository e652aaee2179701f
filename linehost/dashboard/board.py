"""What the dashboard knows: every line's host status, jig tiles and last hour of results."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from linehost.mqtt.topics import ParsedTopic

WINDOW: Final = 3600.0  # seconds of results behind the per-line figures
MIN_SPAN: Final = 60.0  # seconds: below this the devices/hour projection is too noisy
PROVISIONED: Final = "provisioned"

Event = tuple[str, dict[str, Any]]  # (SSE event name, data)


@dataclass(slots=True)
class _Result:
    at: float  # ended_at as a POSIX timestamp
    attempt_id: str
    uid: str | None
    outcome: str


@dataclass(slots=True)
class LineView:
    """One line as the dashboard sees it."""

    name: str
    host: dict[str, Any] = field(default_factory=lambda: {"online": False})
    jigs: dict[str, dict[str, Any]] = field(default_factory=dict)  # "station/jig" -> state
    results: deque[_Result] = field(default_factory=deque)
    attempt_ids: set[str] = field(default_factory=set)

    def stats(self, now: float) -> dict[str, Any]:
        """Devices/hour, first-pass yield and failures by outcome over the last hour."""
        self._expire(now)
        ok = sum(1 for r in self.results if r.outcome == PROVISIONED)
        span = now - self.results[0].at if self.results else 0.0
        per_hour = ok * WINDOW / max(span, MIN_SPAN) if span < WINDOW else float(ok)
        first: dict[str, str] = {}
        for r in self.results:
            if r.uid is not None:
                first.setdefault(r.uid, r.outcome)
        passed = sum(1 for outcome in first.values() if outcome == PROVISIONED)
        failures = Counter(r.outcome for r in self.results if r.outcome != PROVISIONED)
        return {
            "line": self.name,
            "devices_per_hour": round(per_hour),
            "provisioned": ok,
            "attempts": len(self.results),
            "first_pass_yield": passed / len(first) if first else None,
            "failures": dict(failures.most_common()),
        }

    def _expire(self, now: float) -> None:
        while self.results and self.results[0].at < now - WINDOW:
            gone = self.results.popleft()
            self.attempt_ids.discard(gone.attempt_id)


class Board:
    """Applies received messages; answers with the events the browsers need."""

    def __init__(self, clock: Any = time.time) -> None:
        self.lines: dict[str, LineView] = {}
        self._clock = clock

    def apply(self, topic: ParsedTopic, payload: dict[str, Any]) -> list[Event]:
        """Fold one message in; the SSE events it causes (none for a duplicate result)."""
        line = self.lines.get(topic.line)
        if line is None:
            line = self.lines[topic.line] = LineView(topic.line)
        if topic.kind == "host":
            line.host = payload
            return [("host", {"line": line.name, "status": payload})]
        if topic.kind == "jig":
            key = f"{topic.station}/{topic.jig}"
            state = {**payload, "station": topic.station, "jig": topic.jig}
            line.jigs[key] = state
            return [("jig", {"line": line.name, "key": key, "state": state})]
        return self._result(line, payload)

    def forget_jig(self, topic: ParsedTopic) -> list[Event]:
        """A retained state was cleared (empty payload): the jig left the config."""
        line = self.lines.get(topic.line)
        key = f"{topic.station}/{topic.jig}"
        if line is None or line.jigs.pop(key, None) is None:
            return []
        return [("jig_removed", {"line": line.name, "key": key})]

    def stats_events(self) -> list[Event]:
        """Fresh per-line figures (the window slides even without new results)."""
        now = self._clock()
        return [("stats", line.stats(now)) for line in self.lines.values()]

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a browser that just connected."""
        now = self._clock()
        return {
            "now": now,
            "lines": {
                name: {"host": line.host, "jigs": line.jigs, "stats": line.stats(now)}
                for name, line in sorted(self.lines.items())
            },
        }

    def _result(self, line: LineView, payload: dict[str, Any]) -> list[Event]:
        attempt_id = payload.get("attempt_id")
        outcome = payload.get("outcome")
        if not isinstance(attempt_id, str) or not isinstance(outcome, str):
            return []
        if attempt_id in line.attempt_ids:
            return []  # delivered again (QoS 1 is at least once)
        at = _timestamp(payload.get("ended_at")) or self._clock()
        if at < self._clock() - WINDOW:
            return []
        uid = payload.get("uid")
        line.attempt_ids.add(attempt_id)
        result = _Result(at, attempt_id, uid if isinstance(uid, str) else None, outcome)
        if line.results and at < line.results[-1].at:
            ordered = sorted([*line.results, result], key=lambda r: r.at)
            line.results = deque(ordered)
        else:
            line.results.append(result)
        return [("stats", line.stats(self._clock()))]


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
