"""The pure decisions and helpers of the store, without a database."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from linehost.protocol.outcomes import AssignmentStatus as S
from linehost.protocol.outcomes import Outcome
from linehost.records import iso_utc
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash
from linehost.store.decisions import (
    WORK_ORDER_CLOSED,
    WORK_ORDER_COMPLETE,
    AssignDecision,
    LiveAssignment,
    decide_assign,
    decide_quota,
    next_assignment_status,
)

UID = "AABBCCDD00112233"
OTHER_UID = "1122334455667788"
KEY = "11" * 32
OTHER_KEY = "22" * 32


def live(uid: str, key: str, status: S = S.ISSUED, serial: str = "1A2B") -> LiveAssignment:
    return LiveAssignment(id=7, uid=uid, status=status, public_key_sha256=key, dac_serial=serial)


def test_nothing_known_issues() -> None:
    d = decide_assign(UID, KEY, [])
    assert d.kind == "issue"
    assert d.supersede == ()


@pytest.mark.parametrize("status", [S.ISSUED, S.CONFIRMED, S.UNKNOWN])
def test_key_live_for_another_uid_is_duplicate_key(status: S) -> None:
    d = decide_assign(UID, KEY, [live(OTHER_UID, KEY, status)])
    assert d.kind == "reject"
    assert d.outcome is Outcome.DUPLICATE_KEY
    assert OTHER_UID in d.detail


def test_duplicate_key_wins_over_reprovision() -> None:
    d = decide_assign(
        UID, KEY, [live(UID, OTHER_KEY, S.CONFIRMED), live(OTHER_UID, KEY)], allow_reprovision=True
    )
    assert d.outcome is Outcome.DUPLICATE_KEY


@pytest.mark.parametrize("status", [S.FAILED, S.SUPERSEDED])
def test_dead_assignments_are_ignored(status: S) -> None:
    assert decide_assign(UID, KEY, [live(OTHER_UID, KEY, status)]).kind == "issue"
    d = decide_assign(UID, KEY, [live(UID, OTHER_KEY, status)])
    assert d.kind == "issue"
    assert d.supersede == ()


def test_confirmed_same_key_is_redelivered() -> None:
    current = live(UID, KEY, S.CONFIRMED)
    d = decide_assign(UID, KEY, [current])
    assert d.kind == "redeliver"
    assert d.target is current


def test_confirmed_other_key_is_already_provisioned() -> None:
    d = decide_assign(UID, KEY, [live(UID, OTHER_KEY, S.CONFIRMED, serial="ABC")])
    assert d.kind == "reject"
    assert d.outcome is Outcome.ALREADY_PROVISIONED
    assert "ABC" in d.detail


def test_confirmed_other_key_with_reprovision_supersedes() -> None:
    old = live(UID, OTHER_KEY, S.CONFIRMED)
    d = decide_assign(UID, KEY, [old], allow_reprovision=True)
    assert d.kind == "issue"
    assert d.supersede == (old,)


@pytest.mark.parametrize("status", [S.ISSUED, S.UNKNOWN])
def test_waiting_same_key_is_redelivered(status: S) -> None:
    current = live(UID, KEY, status)
    d = decide_assign(UID, KEY, [current])
    assert d.kind == "redeliver"
    assert d.target is current


@pytest.mark.parametrize("status", [S.ISSUED, S.UNKNOWN])
@pytest.mark.parametrize("allow", [False, True])
def test_waiting_other_key_is_superseded(status: S, allow: bool) -> None:
    old = live(UID, OTHER_KEY, status)
    d = decide_assign(UID, KEY, [old], allow_reprovision=allow)
    assert d.kind == "issue"
    assert d.supersede == (old,)


@pytest.mark.parametrize(
    ("current", "requested", "expected"),
    [
        (S.ISSUED, S.CONFIRMED, S.CONFIRMED),
        (S.ISSUED, S.FAILED, S.FAILED),
        (S.ISSUED, S.UNKNOWN, S.UNKNOWN),
        (S.ISSUED, None, S.UNKNOWN),
        (S.UNKNOWN, S.CONFIRMED, S.CONFIRMED),
        (S.UNKNOWN, S.FAILED, S.FAILED),
        (S.UNKNOWN, S.UNKNOWN, None),
        (S.UNKNOWN, None, None),
        (S.CONFIRMED, S.FAILED, None),
        (S.CONFIRMED, S.UNKNOWN, None),
        (S.CONFIRMED, S.CONFIRMED, None),
        (S.FAILED, S.CONFIRMED, None),
        (S.SUPERSEDED, S.CONFIRMED, None),
    ],
)
def test_next_assignment_status(current: S, requested: S | None, expected: S | None) -> None:
    assert next_assignment_status(current, requested) is expected


@pytest.mark.parametrize("requested", [S.ISSUED, S.SUPERSEDED])
def test_an_attempt_cannot_issue_or_supersede(requested: S) -> None:
    with pytest.raises(ValueError, match=requested.value):
        next_assignment_status(S.ISSUED, requested)


def test_iso_utc_is_fixed_format_utc() -> None:
    moment = datetime(2026, 11, 22, 6, 1, 2, 0, tzinfo=timezone(timedelta(hours=1)))
    assert iso_utc(moment) == "2026-11-22T05:01:02.000000Z"
    assert iso_utc(None) is None
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 1, 1))


def test_row_hash_is_sha256_of_prev_and_canonical_json() -> None:
    data = {"b": 1, "a": "ü"}
    fields = {"seq": 1, "line": "l", "at": "2026-11-22T05:01:02.000000Z"}
    body = canonical_json(
        {**fields, "entity": "attempt", "entity_id": "x", "event": "attempt_started", "data": data}
    )
    expected = hashlib.sha256((GENESIS_HASH + body).encode()).hexdigest()
    got = row_hash(
        GENESIS_HASH, entity="attempt", entity_id="x", event="attempt_started", data=data, **fields
    )
    assert got == expected
    assert canonical_json(data) == '{"a":"ü","b":1}'
    assert iso_utc(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z"


def test_revoked_same_key_is_refused_without_reprovision() -> None:
    revoked = LiveAssignment(7, UID, S.UNKNOWN, KEY, "1A2B", revoked=True)
    d = decide_assign(UID, KEY, [revoked])
    assert d.kind == "reject"
    assert d.outcome is Outcome.ALREADY_PROVISIONED
    assert "1A2B is revoked" in d.detail


def test_revoked_same_key_gets_a_new_dac_with_reprovision() -> None:
    revoked = LiveAssignment(7, UID, S.CONFIRMED, KEY, "1A2B", revoked=True)
    d = decide_assign(UID, KEY, [revoked], allow_reprovision=True)
    assert d.kind == "issue"
    assert d.supersede == (revoked,)


def test_quota_refuses_a_new_dac_beyond_the_quantity_or_on_a_closed_work_order() -> None:
    issue = AssignDecision(kind="issue")
    assert decide_quota(issue, "WO", 3, 2, 0) is issue
    full = decide_quota(issue, "WO", 3, 3, 0)
    assert (full.kind, full.outcome) == ("quota_full", Outcome.ISSUER_ERROR)
    assert full.detail.startswith(WORK_ORDER_COMPLETE)
    assert decide_quota(issue, "WO", 3, 3, 1) is issue  # a supersede frees its slot
    closed = decide_quota(issue, "WO", 3, 0, 0, closed=True)
    assert (closed.kind, closed.outcome) == ("quota_full", Outcome.ISSUER_ERROR)
    assert closed.detail == f"{WORK_ORDER_CLOSED}: WO takes no more devices"
    redeliver = AssignDecision(kind="redeliver")
    assert decide_quota(redeliver, "WO", 3, 3, 0, closed=True) is redeliver  # its DAC again
