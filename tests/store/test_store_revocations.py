"""The revocation ledger on a real database: one revocation per DAC, audit rows, CRL numbers,
and a revoked DAC never delivered again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.store.revocations import RevocationError, RevocationLedger
from linehost.store.store import Store

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


async def _revoke(store: Store, serial: str, reason: str = "keyCompromise") -> None:
    ledger = RevocationLedger(store.engine)
    targets = await ledger.targets(serials=[serial])
    await ledger.revoke(targets, reason=reason, by="tester@host", now=NOW)


@pytest.mark.parametrize("allow", [False, True])
async def test_a_revoked_dac_is_never_redelivered(store: Store, make: Any, allow: bool) -> None:
    first = make.request()
    issued = await store.assign(first)  # issued, not confirmed: would normally be re-delivered
    await _revoke(store, issued.dac_serial)
    again = make.request(
        uid=first.attempt.uid, key=first.public_key_sha256, allow_reprovision=allow
    )
    result = await store.assign(again)
    if allow:
        assert result.kind == "issued"
        assert result.dac_serial != issued.dac_serial
    else:
        assert result.kind == "rejected"
        assert result.outcome is Outcome.ALREADY_PROVISIONED
        assert f"{issued.dac_serial} is revoked" in result.detail


async def test_revocation_is_audited_and_verify_holds(store: Store, make: Any) -> None:
    issued = await store.assign(make.request())
    await _revoke(store, issued.dac_serial, "cessationOfOperation")
    audit = store.audit()
    assert await audit.verify_audit_chain() == []
    found = await audit.dac_lookup(issued.dac_serial)
    assert found is not None
    assert found["assignment"]["revocation_reason"] == "cessationOfOperation"
    assert found["events"][-1]["event"] == "assignment_revoked"
    assert found["events"][-1]["data"]["revoked_by"] == "tester@host"


async def test_the_database_allows_one_revocation_per_known_dac(store: Store, make: Any) -> None:
    issued = await store.assign(make.request())
    await _revoke(store, issued.dac_serial)
    ledger = RevocationLedger(store.engine)
    targets = await ledger.targets(serials=[issued.dac_serial])
    with pytest.raises(RevocationError, match="already revoked"):
        await ledger.revoke(targets, reason="superseded", by="x", now=NOW)
    insert = (
        "INSERT INTO revocations (dac_serial, pai_sha256, reason, revoked_at, revoked_by) "
        "VALUES (:s, 'ab', 'keyCompromise', :t, 'x')"
    )
    for serial in (issued.dac_serial, "DEADBEEF"):  # twice; a DAC nobody recorded
        with pytest.raises(IntegrityError):
            async with store.engine.begin() as conn:
                await conn.execute(text(insert), {"s": serial, "t": NOW})


async def test_crl_numbers_only_grow(store: Store) -> None:
    ledger = RevocationLedger(store.engine)
    numbers = [await ledger.next_crl_number("ab" * 32, NOW) for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert await RevocationLedger(store.engine).next_crl_number("ab" * 32, NOW) == 4
    assert await ledger.next_crl_number("cd" * 32, NOW) == 1


async def test_candidates_are_delivered_dacs_of_failed_devices(store: Store, make: Any) -> None:
    good = make.request()
    good_dac = await store.assign(good)
    await store.end_attempt(
        good.attempt,
        make.end(assignment_id=good_dac.assignment_id, status=AssignmentStatus.CONFIRMED),
    )
    lost = make.request()
    lost_dac = await store.assign(lost)
    await store.end_attempt(
        lost.attempt,
        make.end(Outcome.TIMEOUT, assignment_id=lost_dac.assignment_id),
    )
    ledger = RevocationLedger(store.engine)
    [candidate] = await ledger.candidates()
    assert candidate.dac_serial == lost_dac.dac_serial
    assert candidate.status == "unknown"
    await _revoke(store, lost_dac.dac_serial)
    assert await ledger.candidates() == []
