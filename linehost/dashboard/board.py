"""What the dashboard knows: every line's host status, jig tiles, last hour of results, work
order, outbox depth, the host's CRL, alarms, and a shift of per-minute yield and throughput."""

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
SHIFT: Final = 8 * 3600.0  # seconds of history behind the plant chart
BUCKET: Final = 60.0  # seconds per point of the plant chart

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
    work_order: dict[str, Any] | None = None
    outbox: dict[str, Any] | None = None
    crl: dict[str, Any] | None = None  # the host's `host/crl` message
    alarms: list[dict[str, Any]] = field(default_factory=list)
    history: dict[float, list[int]] = field(default_factory=dict)  # bucket -> [attempts, ok]

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
        if topic.kind == "workorder":
            line.work_order = payload
            return [("workorder", {"line": line.name, "work_order": payload})]
        if topic.kind == "outbox":
            line.outbox = payload
            return [("outbox", {"line": line.name, "outbox": payload})]
        if topic.kind == "crl":
            line.crl = payload
            return [("crl", {"line": line.name, "crl": payload})]
        if topic.kind == "results":
            return self._result(line, payload)
        return []  # alarms: the dashboard evaluates its own (see AlarmBook.adopt)

    def set_alarms(self, line_name: str, alarms: list[dict[str, Any]]) -> list[Event]:
        """This dashboard's evaluation of a line's alarms."""
        line = self.lines.get(line_name)
        if line is None:
            line = self.lines[line_name] = LineView(line_name)
        line.alarms = alarms
        return [("alarms", {"line": line_name, "active": alarms})]

    def history(self) -> dict[str, Any]:
        """Per line, `[bucket start, attempts, provisioned]` per minute over the last shift."""
        start = self._clock() - SHIFT
        lines: dict[str, list[list[float]]] = {}
        for name, line in sorted(self.lines.items()):
            for bucket in [b for b in line.history if b < start]:
                del line.history[bucket]
            lines[name] = [[b, n, ok] for b, (n, ok) in sorted(line.history.items())]
        return {"bucket": BUCKET, "shift": SHIFT, "lines": lines}

    def forget(self, topic: ParsedTopic) -> list[Event]:
        """A retained message was cleared (empty payload): a jig left the config, or the host
        keeps no CRL any more."""
        line = self.lines.get(topic.line)
        if topic.kind == "crl":
            if line is None or line.crl is None:
                return []
            line.crl = None
            return [("crl", {"line": line.name, "crl": None})]
        if topic.kind != "jig":
            return []
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
                name: {
                    "host": line.host,
                    "jigs": line.jigs,
                    "stats": line.stats(now),
                    "work_order": line.work_order,
                    "outbox": line.outbox,
                    "crl": line.crl,
                    "alarms": line.alarms,
                }
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
        counts = line.history.setdefault(at - at % BUCKET, [0, 0])
        counts[0] += 1
        counts[1] += outcome == PROVISIONED
        return [("stats", line.stats(self._clock()))]


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
