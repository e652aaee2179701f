"""The dashboard's board: tiles, host status and the per-line figures over the last hour."""

from __future__ import annotations

from datetime import UTC, datetime

from linehost.dashboard.board import Board
from linehost.mqtt.topics import parse_topic

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def result(attempt: str, uid: str, outcome: str, ago: float) -> dict[str, object]:
    return {"attempt_id": attempt, "uid": uid, "outcome": outcome, "ended_at": iso(ago)}


def board_with(*results: dict[str, object]) -> Board:
    board = Board(clock=lambda: NOW)
    topic = parse_topic("p", "p/l1/results")
    assert topic is not None
    for r in results:
        board.apply(topic, r)
    return board


def test_topics_are_classified() -> None:
    assert parse_topic("p", "p/l1/host/status") == parse_topic("p", "p/l1/host/status")
    jig = parse_topic("p", "p/l1/jigs/st1/j2/state")
    assert jig is not None
    assert (jig.kind, jig.line, jig.station, jig.jig) == ("jig", "l1", "st1", "j2")
    assert parse_topic("p", "p/l1/jigs/st1/state") is None
    assert parse_topic("p", "other/l1/results") is None


def test_yield_rate_and_failures_over_the_last_hour() -> None:
    board = board_with(
        result("a1", "U1", "provisioned", 1800),
        result("a2", "U2", "device_error", 1700),
        result("a3", "U2", "provisioned", 1600),  # a retry: not first pass
        result("a4", "U3", "timeout", 100),
        result("a1", "U1", "provisioned", 1800),  # delivered twice (QoS 1)
        result("old", "U9", "provisioned", 7200),  # outside the hour
    )
    stats = board.lines["l1"].stats(NOW)
    assert stats["attempts"] == 4
    assert stats["provisioned"] == 2
    assert stats["first_pass_yield"] == 1 / 3
    assert stats["failures"] == {"device_error": 1, "timeout": 1}
    # two devices in the 30 minutes seen so far: projected to four an hour
    assert stats["devices_per_hour"] == 4


def test_jig_and_host_events() -> None:
    board = Board(clock=lambda: NOW)
    jig = parse_topic("p", "p/l1/jigs/st1/j1/state")
    host = parse_topic("p", "p/l1/host/status")
    assert jig is not None
    assert host is not None
    events = board.apply(jig, {"state": "provisioning", "uid": "AB"})
    assert events == [
        ("jig", {"line": "l1", "key": "st1/j1", "state": {
            "state": "provisioning", "uid": "AB", "station": "st1", "jig": "j1"}})
    ]  # fmt: skip
    assert board.apply(host, {"online": False})[0][1]["status"] == {"online": False}
    assert board.forget(jig) == [("jig_removed", {"line": "l1", "key": "st1/j1"})]
    assert board.snapshot()["lines"]["l1"]["jigs"] == {}


def test_shift_history_work_order_and_outbox() -> None:
    board = board_with(
        result("a1", "U1", "provisioned", 130),
        result("a2", "U2", "device_error", 125),
        result("a3", "U3", "provisioned", 10),
    )
    history = board.history()
    assert history["bucket"] == 60
    # NOW is on a minute: 130 s and 125 s ago share the bucket starting 180 s ago
    assert history["lines"]["l1"] == [[NOW - 180, 2, 1], [NOW - 60, 1, 1]]
    wo = parse_topic("p", "p/l1/workorder")
    outbox = parse_topic("p", "p/l1/host/outbox")
    alarms = parse_topic("p", "p/l1/alarms")
    assert wo is not None
    assert outbox is not None
    assert alarms is not None
    progress = {"work_order": "WO-1", "quantity": 10, "done": 2, "remaining": 8}
    assert board.apply(wo, progress) == [("workorder", {"line": "l1", "work_order": progress})]
    assert board.apply(outbox, {"depth": 3}) == [("outbox", {"line": "l1", "outbox": {"depth": 3}})]
    assert board.apply(alarms, {"active": []}) == []  # the dashboard evaluates its own
    line = board.snapshot()["lines"]["l1"]
    assert (line["work_order"], line["outbox"], line["alarms"]) == (progress, {"depth": 3}, [])
