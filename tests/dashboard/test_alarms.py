"""Alarms from messages and a clock: raised when a rule holds, cleared when it stops holding."""

from __future__ import annotations

from datetime import UTC, datetime

from linehost.dashboard.alarms import (
    CRL_NEXT_UPDATE,
    HOST_OFFLINE,
    JIG_FAILING,
    JIG_OFFLINE,
    OUTBOX_GROWING,
    AlarmBook,
    AlarmRules,
    alarms_payload,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def result(jig: str, outcome: str) -> dict[str, object]:
    return {"station": "st1", "jig": jig, "outcome": outcome, "attempt_id": "x"}


def kinds(book: AlarmBook, line: str = "l1") -> list[tuple[str, str]]:
    return [(a.kind, a.subject) for a in book.active(line)]


def test_three_failures_in_a_row_raise_and_a_success_clears() -> None:
    book = AlarmBook()
    book.host("l1", {"online": True}, T0)
    assert book.evaluate(T0) == [("l1", [])]  # first evaluation: every line, even when clear
    for outcome in ("device_error", "timeout"):
        book.result("l1", result("j1", outcome))
    book.result("l1", result("j2", "device_error"))
    assert book.evaluate(T0 + 1) == []  # two in a row on j1, one on j2: nothing changed
    book.result("l1", result("j1", "csr_rejected"))
    (line, active), *_ = book.evaluate(T0 + 2)
    assert line == "l1"
    assert [(a.kind, a.subject, a.count, a.since) for a in active] == [
        (JIG_FAILING, "st1/j1", 3, T0 + 2)
    ]
    assert active[0].detail == "3 failures in a row, last csr rejected"
    book.result("l1", result("j1", "timeout"))
    (_, active), *_ = book.evaluate(T0 + 3)
    assert (active[0].count, active[0].since) == (4, T0 + 2)  # same alarm, counted on
    book.result("l1", result("j1", "provisioned"))
    assert book.evaluate(T0 + 4) == [("l1", [])]
    assert book.evaluate(T0 + 5) == []


def test_the_threshold_is_configurable() -> None:
    book = AlarmBook(AlarmRules(jig_failures=1))
    book.result("l1", result("j1", "device_error"))
    book.evaluate(T0)
    assert kinds(book) == [(JIG_FAILING, "st1/j1")]


def test_a_jig_offline_longer_than_t() -> None:
    book = AlarmBook(AlarmRules(jig_offline_after=60))
    book.host("l1", {"online": True}, T0)
    book.jig("l1", "st1/j1", {"state": "offline", "since": iso(T0)}, T0)
    book.evaluate(T0 + 59)
    assert kinds(book) == []
    book.evaluate(T0 + 60)
    assert kinds(book) == [(JIG_OFFLINE, "st1/j1")]
    assert book.active("l1")[0].since == T0  # from the state's own `since`
    book.jig("l1", "st1/j1", {"state": "waiting_for_device", "since": iso(T0 + 61)}, T0 + 61)
    book.evaluate(T0 + 62)
    assert kinds(book) == []


def test_a_host_offline_longer_than_t_and_its_stale_jigs_are_not_alarmed() -> None:
    book = AlarmBook(AlarmRules(host_offline_after=30, jig_offline_after=10))
    book.host("l1", {"online": True}, T0)
    book.jig("l1", "st1/j1", {"state": "offline", "since": iso(T0)}, T0)
    book.host("l1", {"online": False}, T0 + 5)
    book.evaluate(T0 + 34)
    assert kinds(book) == []  # host down for 29 s; the jig's state is stale
    book.evaluate(T0 + 35)
    assert kinds(book) == [(HOST_OFFLINE, "host")]
    book.host("l1", {"online": True}, T0 + 40)
    book.evaluate(T0 + 40)
    assert kinds(book) == [(JIG_OFFLINE, "st1/j1")]


def test_outbox_over_the_limit_or_only_growing_for_a_window() -> None:
    book = AlarmBook(AlarmRules(outbox_limit=50, outbox_window=100))
    book.outbox("l1", 0, T0)
    book.outbox("l1", 5, T0 + 10)
    book.outbox("l1", 9, T0 + 60)
    book.evaluate(T0 + 99)
    assert kinds(book) == []  # not watched for a whole window since it started growing
    book.outbox("l1", 12, T0 + 105)
    book.evaluate(T0 + 111)
    assert kinds(book) == [(OUTBOX_GROWING, "host")]
    assert book.active("l1")[0].detail == "outbox grew from 5 to 12 without draining"
    book.outbox("l1", 3, T0 + 120)  # draining
    book.evaluate(T0 + 121)
    assert kinds(book) == []
    book.outbox("l1", 80, T0 + 122)
    book.evaluate(T0 + 122)
    assert kinds(book) == [(OUTBOX_GROWING, "host")]
    book.outbox("l1", 0, T0 + 130)
    book.evaluate(T0 + 130)
    assert kinds(book) == []


def test_a_restarted_dashboard_carries_on_from_the_retained_alarms() -> None:
    first = AlarmBook()
    for _ in range(3):
        first.result("l1", result("j1", "timeout"))
    ((_, active),) = first.evaluate(T0)
    retained = alarms_payload("l1", active, T0, "dash-a")
    assert retained["active"] == [{
        "kind": JIG_FAILING, "subject": "st1/j1", "since": iso(T0),
        "detail": "3 failures in a row, last timeout", "count": 3,
    }]  # fmt: skip
    second = AlarmBook()
    second.adopt("l1", retained)
    second.evaluate(T0 + 50)
    assert [(a.kind, a.since, a.count) for a in second.active("l1")] == [(JIG_FAILING, T0, 3)]
    second.adopt("l1", {"active": []})  # published by now: a peer's message changes nothing
    second.result("l1", result("j1", "device_error"))
    second.evaluate(T0 + 51)
    assert second.active("l1")[0].count == 4
    second.result("l1", result("j1", "provisioned"))
    assert second.evaluate(T0 + 52) == [("l1", [])]


def test_malformed_inputs_are_ignored() -> None:
    book = AlarmBook()
    book.result("l1", {"outcome": "timeout"})
    book.adopt("l1", {"active": ["nonsense", {"kind": 1}]})
    book.adopt("l2", {"active": "nope"})
    assert book.evaluate(T0) == [("l1", []), ("l2", [])]


DAY = 86400.0


def crl(number: int, next_update: float) -> dict[str, object]:
    """A `host/crl` message as the host publishes it."""
    return {"pai_skid": "AB12", "crl_number": number, "this_update": iso(next_update - 30 * DAY),
            "next_update": iso(next_update), "seconds_left": 0, "revoked": 0, "line": "l1",
            "at": iso(T0)}  # fmt: skip


def test_a_crl_within_the_margin_raises_and_a_fresh_one_clears() -> None:
    book = AlarmBook(AlarmRules(crl_margin=2 * DAY))
    book.crl("l1", crl(7, T0 + 10 * DAY))
    assert book.evaluate(T0) == [("l1", [])]
    assert book.evaluate(T0 + 8 * DAY - 1) == []  # 2 days and a second left: not yet
    ((line, active),) = book.evaluate(T0 + 8 * DAY)
    assert (line, [(a.kind, a.subject, a.since) for a in active]) == (
        "l1", [(CRL_NEXT_UPDATE, "host", T0 + 8 * DAY)]
    )  # fmt: skip
    assert active[0].detail == "CRL 7 nextUpdate 2026-12-02T12:00:00Z, no fresher CRL yet"
    assert book.evaluate(T0 + 9 * DAY) == []  # the same alarm: nothing to publish again
    ((_, active),) = book.evaluate(T0 + 10 * DAY)
    assert active[0].detail == "CRL 7 nextUpdate 2026-12-02T12:00:00Z has passed"
    assert active[0].since == T0 + 8 * DAY  # still the alarm raised two days ago
    book.crl("l1", crl(8, T0 + 40 * DAY))  # the host signed a fresh CRL
    assert book.evaluate(T0 + 10 * DAY + 1) == [("l1", [])]
    assert kinds(book) == []


def test_a_fresh_crl_still_within_the_margin_keeps_the_alarm() -> None:
    book = AlarmBook(AlarmRules(crl_margin=5 * DAY))
    book.crl("l1", crl(1, T0 + 1 * DAY))  # first seen already close: raised at once
    book.evaluate(T0)
    assert [(a.kind, a.since) for a in book.active("l1")] == [(CRL_NEXT_UPDATE, T0 - 4 * DAY)]
    book.crl("l1", crl(2, T0 + 3 * DAY))  # fresher, but the validity is shorter than the margin
    ((_, active),) = book.evaluate(T0 + 1)
    assert (active[0].since, active[0].detail) == (
        T0 - 4 * DAY, "CRL 2 nextUpdate 2026-11-25T12:00:00Z, no fresher CRL yet"
    )  # fmt: skip


def test_a_cleared_crl_topic_clears_the_alarm_and_malformed_ones_count_as_none() -> None:
    book = AlarmBook(AlarmRules(crl_margin=DAY))
    book.crl("l1", crl(3, T0))
    book.evaluate(T0)
    assert kinds(book) == [(CRL_NEXT_UPDATE, "host")]
    book.crl("l1", None)  # the host keeps no CRL any more: its retained message was cleared
    book.evaluate(T0 + 1)
    assert kinds(book) == []
    book.crl("l1", {"next_update": "soon", "crl_number": 4})
    book.crl("l2", {"next_update": iso(T0), "crl_number": "x"})
    book.evaluate(T0 + 2)
    assert kinds(book) == []
    assert [(a.kind, a.detail) for a in book.active("l2")] == [
        (CRL_NEXT_UPDATE, "CRL nextUpdate 2026-11-22T12:00:00Z has passed")
    ]
