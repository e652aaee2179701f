"""Alarms of a plant, evaluated from the messages seen and a clock (pure: no I/O, no timers).

Kinds: `jig_failing` (N attempts in a row failed on one jig), `jig_offline` (longer than T),
`host_offline` (longer than T), `outbox_growing` (results piling up on a host), `crl_next_update`
(the host's CRL within a margin of its nextUpdate, or past it). The dashboard feeds messages in,
calls `evaluate(now)` now and then, and publishes the lines whose set changed.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

PROVISIONED: Final = "provisioned"
JIG_FAILING: Final = "jig_failing"
JIG_OFFLINE: Final = "jig_offline"
HOST_OFFLINE: Final = "host_offline"
OUTBOX_GROWING: Final = "outbox_growing"
CRL_NEXT_UPDATE: Final = "crl_next_update"
HOST: Final = "host"  # the subject of host-wide alarms


@dataclass(frozen=True, slots=True)
class AlarmRules:
    """Thresholds (`[dashboard.alarms]`); seconds for the durations."""

    jig_failures: int = 3
    jig_offline_after: float = 300.0
    host_offline_after: float = 60.0
    outbox_limit: int = 100
    outbox_window: float = 300.0
    crl_margin: float = 3 * 86400.0  # a CRL's nextUpdate closer than this (and not replaced)


@dataclass(frozen=True, slots=True)
class Alarm:
    """One active alarm of a line."""

    kind: str
    line: str
    subject: str  # "station/jig", or "host"
    since: float  # POSIX seconds when it was raised
    detail: str
    count: int | None = None  # jig_failing: failures in a row so far

    @property
    def key(self) -> tuple[str, str]:
        """What identifies it across evaluations."""
        return (self.kind, self.subject)

    def payload(self) -> dict[str, Any]:
        """The JSON object inside `{p}/{line}/alarms`."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "subject": self.subject,
            "since": _iso(self.since),
            "detail": self.detail,
        }
        if self.count is not None:
            out["count"] = self.count
        return out


@dataclass(slots=True)
class _Line:
    online: bool | None = None
    offline_since: float | None = None
    jigs_offline: dict[str, float] = field(default_factory=dict)  # key -> offline since
    streaks: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (n, last outcome)
    outbox: deque[tuple[float, int]] = field(default_factory=deque)  # (at, depth), oldest first
    raised: dict[tuple[str, str], Alarm] = field(default_factory=dict)
    adopted: dict[tuple[str, str], float] = field(default_factory=dict)  # key -> since
    crl: tuple[float, int | None] | None = None  # the host's CRL: (nextUpdate, its number)
    published: bool = False


class AlarmBook:
    """Raises and clears alarms from what the lines publish."""

    def __init__(self, rules: AlarmRules | None = None) -> None:
        self.rules = rules or AlarmRules()
        self._lines: dict[str, _Line] = {}

    # --- inputs ------------------------------------------------------------------------------

    def host(self, line: str, status: dict[str, Any], now: float) -> None:
        """A `host/status` message."""
        view = self._line(line)
        online = status.get("online") is True
        if not online and view.offline_since is None:
            view.offline_since = now
        if online:
            view.offline_since = None
        view.online = online

    def jig(self, line: str, key: str, state: dict[str, Any], now: float) -> None:
        """A jig `state` message (`key` = "station/jig")."""
        view = self._line(line)
        if state.get("state") == "offline":
            view.jigs_offline.setdefault(key, _timestamp(state.get("since")) or now)
        else:
            view.jigs_offline.pop(key, None)

    def jig_removed(self, line: str, key: str) -> None:
        """The jig left the config (its retained state was cleared)."""
        view = self._line(line)
        view.jigs_offline.pop(key, None)
        view.streaks.pop(key, None)

    def result(self, line: str, record: dict[str, Any]) -> None:
        """A new (de-duplicated) attempt record."""
        station, jig, outcome = record.get("station"), record.get("jig"), record.get("outcome")
        if not isinstance(station, str) or not isinstance(jig, str) or not isinstance(outcome, str):
            return
        view = self._line(line)
        key = f"{station}/{jig}"
        if outcome == PROVISIONED:
            view.streaks.pop(key, None)
        else:
            n, _ = view.streaks.get(key, (0, outcome))
            view.streaks[key] = (n + 1, outcome)

    def outbox(self, line: str, depth: int, now: float) -> None:
        """A `host/outbox` message: the depth holds from `now` until the next one."""
        samples = self._line(line).outbox
        samples.append((now, depth))
        # keep one sample older than the window: it is the depth in effect at its start
        while len(samples) > 2 and samples[1][0] <= now - self.rules.outbox_window:
            samples.popleft()

    def crl(self, line: str, payload: dict[str, Any] | None) -> None:
        """A `host/crl` message; None when it was cleared (the host keeps no CRL any more)."""
        view = self._line(line)
        next_update = None if payload is None else _timestamp(payload.get("next_update"))
        if next_update is None:
            view.crl = None
            return
        number = payload.get("crl_number") if payload is not None else None
        view.crl = (next_update, number if isinstance(number, int) else None)

    def adopt(self, line: str, payload: dict[str, Any]) -> None:
        """A retained `alarms` message seen before this book published the line: carry on."""
        view = self._line(line)
        if view.published:
            return  # our own echo, or a peer's: ours decides from now on
        active = payload.get("active")
        for item in active if isinstance(active, list) else []:
            if not isinstance(item, dict):
                continue
            kind, subject = item.get("kind"), item.get("subject")
            since = _timestamp(item.get("since"))
            if not isinstance(kind, str) or not isinstance(subject, str) or since is None:
                continue
            view.adopted[(kind, subject)] = since
            count = item.get("count")
            if kind == JIG_FAILING and isinstance(count, int) and subject not in view.streaks:
                view.streaks[subject] = (count, "")

    # --- outputs -----------------------------------------------------------------------------

    def evaluate(self, now: float) -> list[tuple[str, list[Alarm]]]:
        """The lines whose set of alarms changed since the last call (every line the first
        time), each with its whole active set."""
        changed: list[tuple[str, list[Alarm]]] = []
        for name, view in sorted(self._lines.items()):
            found = {a.key: a for a in self._conditions(name, view, now)}
            raised: dict[tuple[str, str], Alarm] = {}
            for key, alarm in found.items():
                before = view.raised.get(key)
                since = before.since if before else view.adopted.get(key, alarm.since)
                raised[key] = Alarm(alarm.kind, name, alarm.subject, since, alarm.detail,
                                    alarm.count)  # fmt: skip
            if raised != view.raised or not view.published:
                view.raised = raised
                view.published = True
                view.adopted.clear()
                changed.append((name, self.active(name)))
        return changed

    def active(self, line: str) -> list[Alarm]:
        """The line's alarms as last evaluated, oldest first."""
        view = self._lines.get(line)
        if view is None:
            return []
        return sorted(view.raised.values(), key=lambda a: (a.since, a.kind, a.subject))

    def lines(self) -> list[str]:
        """Every line seen."""
        return sorted(self._lines)

    # --- the rules ---------------------------------------------------------------------------

    def _conditions(self, line: str, view: _Line, now: float) -> list[Alarm]:
        rules = self.rules
        found: list[Alarm] = []
        if view.offline_since is not None and now - view.offline_since >= rules.host_offline_after:
            found.append(Alarm(HOST_OFFLINE, line, HOST, view.offline_since, "host offline"))
        if view.online is not False:  # a stopped host's jigs are stale, not offline
            for key, since in view.jigs_offline.items():
                if now - since >= rules.jig_offline_after:
                    found.append(Alarm(JIG_OFFLINE, line, key, since, "jig offline"))
        for key, (n, outcome) in view.streaks.items():
            if n >= rules.jig_failures:
                last = f", last {outcome.replace('_', ' ')}" if outcome else ""
                found.append(Alarm(JIG_FAILING, line, key, now,
                                   f"{n} failures in a row{last}", count=n))  # fmt: skip
        growing = self._outbox_growing(view.outbox, now)
        if growing is not None:
            found.append(Alarm(OUTBOX_GROWING, line, HOST, now, growing))
        if view.crl is not None and view.crl[0] - now <= rules.crl_margin:
            next_update, number = view.crl
            # Stable wording (no countdown): a changed detail would republish every evaluation.
            crl = "CRL" if number is None else f"CRL {number}"
            when = _iso(next_update)[:19] + "Z"
            passed = " has passed" if now >= next_update else ", no fresher CRL yet"
            detail = f"{crl} nextUpdate {when}{passed}"
            found.append(Alarm(CRL_NEXT_UPDATE, line, HOST, next_update - rules.crl_margin, detail))
        return found

    def _outbox_growing(self, samples: deque[tuple[float, int]], now: float) -> str | None:
        if not samples:
            return None
        depth = samples[-1][1]
        if depth >= self.rules.outbox_limit:
            return f"{depth} results waiting in the outbox"
        start = now - self.rules.outbox_window
        older = [i for i, (at, _) in enumerate(samples) if at <= start]
        if depth == 0 or not older:
            return None  # empty, or not watched for a whole window yet
        depths = [d for _, d in list(samples)[older[-1] :]]
        if depths[-1] > depths[0] and all(a <= b for a, b in itertools.pairwise(depths)):
            return f"outbox grew from {depths[0]} to {depth} without draining"
        return None

    def _line(self, line: str) -> _Line:
        view = self._lines.get(line)
        if view is None:
            view = self._lines[line] = _Line()
        return view


def alarms_payload(line: str, alarms: list[Alarm], now: float, by: str) -> dict[str, Any]:
    """The retained `{p}/{line}/alarms` message; `{"active": []}` (and these fields) when clear."""
    return {"line": line, "active": [a.payload() for a in alarms], "at": _iso(now), "by": by}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
