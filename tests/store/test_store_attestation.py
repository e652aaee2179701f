"""The attestation evidence (jig protocol v1.1) in the store: recorded per attempt, in the
results outbox, the audit chain and attempts_v; `attestation_failed` fails the assignment and
lists its DAC as a revocation candidate."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.store.revocations import RevocationLedger
from linehost.store.store import Store

NONCE = "5a" * 32
SIGNATURE = "MEUCIQD" + "A" * 89


async def test_attestation_evidence_is_recorded_everywhere(
    store: Store, make: Any, raw: Any
) -> None:
    req = make.request()
    result = await store.assign(req)
    end = dataclasses.replace(
        make.end(
            Outcome.PROVISIONED,
            assignment_id=result.assignment_id,
            status=AssignmentStatus.CONFIRMED,
        ),
        attest_nonce=NONCE,
        attest_signature=SIGNATURE,
    )
    await store.end_attempt(req.attempt, end)
    attempt_id = req.attempt.attempt_id
    (row,) = await raw.rows("SELECT * FROM attempts_v WHERE attempt_id = :a", a=attempt_id)
    assert (row["attest_nonce"], row["attest_signature"]) == (NONCE, SIGNATURE)
    [(_, payload)] = await store.pending_results(10)
    assert json.loads(payload)["attest_nonce"] == NONCE
    assert json.loads(payload)["attest_signature"] == SIGNATURE
    (event,) = await raw.rows(
        "SELECT data FROM audit_log WHERE entity_id = :a AND event = 'attempt_ended'", a=attempt_id
    )
    assert json.loads(event["data"])["attest_signature"] == SIGNATURE
    assert await store.audit().verify_audit_chain() == []


async def test_attestation_failed_fails_the_assignment_and_makes_a_candidate(
    store: Store, make: Any, raw: Any
) -> None:
    req = make.request()
    result = await store.assign(req)
    end = dataclasses.replace(
        make.end(
            Outcome.ATTESTATION_FAILED,
            assignment_id=result.assignment_id,
            status=AssignmentStatus.FAILED,
            detail="no answer to Attest (timeout)",
        ),
        attest_nonce=NONCE,
    )
    await store.end_attempt(req.attempt, end)
    (a,) = await raw.rows("SELECT status FROM assignments WHERE id = :i", i=result.assignment_id)
    assert a["status"] == "failed"
    (t,) = await raw.rows(
        "SELECT outcome, attest_nonce, attest_signature FROM attempts WHERE attempt_id = :a",
        a=req.attempt.attempt_id,
    )
    assert (t["outcome"], t["attest_nonce"], t["attest_signature"]) == (
        "attestation_failed",
        NONCE,
        None,
    )
    candidates = await RevocationLedger(store.engine).candidates()
    assert [c.dac_serial for c in candidates] == [result.dac_serial]
