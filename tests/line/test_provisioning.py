"""Provisioner: the line's deliver-or-refuse decision with the real local issuer and SQLite."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.errors import DacCollision, DatabaseUnavailable, IssuerUnavailable, QuotaExhausted
from linehost.line import provisioning
from linehost.line.provisioning import Attempt, Deliver, Provisioner, Reject
from linehost.line.workorder import WorkOrderGate
from linehost.mqtt.payloads import result_payload
from linehost.pki.attestation import BAD_SIGNATURE, sign_attestation
from linehost.pki.devpki import init_dev
from linehost.pki.issuer import Issuer
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.outcomes import JigState, Outcome
from linehost.protocol.session import Attestation
from linehost.records import (
    AssignRequest,
    AssignResult,
    AttemptEnd,
    AttemptStart,
    CsrInfo,
    IssuedDac,
    utcnow,
)
from linehost.store.store import Store

LINE = "prov-line"


def csr_pem(key: ec.EllipticCurvePrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dut")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def attempt(uid: str, waits: list[JigState | None] | None = None) -> Attempt:
    start = AttemptStart(str(uuid.uuid4()), LINE, "st1", "j1", uid, utcnow())
    hook = waits.append if waits is not None else provisioning._ignore_wait
    return Attempt(start, structlog.get_logger("test"), on_wait=hook)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[LocalIssuer, Store]]:
    pki = init_dev(tmp_path / "pki")
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", line=LINE, result_payload=result_payload
    )
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    yield issuer, store
    await issuer.aclose()
    await store.close()


async def assignment_status(store: Store, serial: str) -> str | None:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        return await conn.scalar(
            text("SELECT status FROM assignments WHERE dac_serial = :s"), {"s": serial}
        )


async def test_a_good_csr_is_recorded_before_deliver_and_confirmed_by_record(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store, cd_b64="Q0Q=")
    a = attempt("00112233AABBCCDD")
    decision = await prov.provision(a, csr_pem())
    assert isinstance(decision, Deliver)
    assert decision.pai_pem == issuer.pai_pem
    assert decision.cd_b64 == "Q0Q="
    dac = x509.load_pem_x509_certificate(decision.dac_pem.encode())
    assert a.dac_serial == format(dac.serial_number, "X")
    assert await assignment_status(store, a.dac_serial) == "issued"  # committed already
    end = await prov.record(a, Outcome.PROVISIONED, "done", 0, "t", provisioned=True)
    assert end.assignment_status is not None
    assert end.assignment_status.value == "confirmed"
    assert await assignment_status(store, a.dac_serial) == "confirmed"


async def test_a_bad_csr_is_refused_and_a_duplicate_key_too(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    bad = await prov.provision(attempt("00112233AABBCCDD"), "-----BEGIN CERTIFICATE REQUEST-----")
    assert isinstance(bad, Reject)
    assert bad.outcome is Outcome.CSR_REJECTED
    key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(await prov.provision(attempt("0000000000000001"), csr_pem(key)), Deliver)
    other = attempt("0000000000000002")
    dup = await prov.provision(other, csr_pem(key))
    assert isinstance(dup, Reject)
    assert dup.outcome is Outcome.DUPLICATE_KEY
    assert other.recorded  # the store ended it: record() writes nothing more


async def test_without_work_order_or_onboarding_nothing_is_gated_or_drawn(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    assert prov.work_order is None
    assert not prov.work_order_complete
    a = attempt("0000000000000009")
    done = await prov.provision(a, csr_pem())
    assert isinstance(done, Deliver)
    assert done.factory_data == ()
    assert a.onboarding is None


async def test_a_full_work_order_is_a_typed_refusal_that_closes_the_gate(parts) -> None:
    issuer, store = parts
    await store.open_work_order("WO-1", 1)
    gate = WorkOrderGate("WO-1", 1)
    prov = Provisioner(issuer, store, gate=gate)

    def wo_attempt(uid: str) -> Attempt:
        a = attempt(uid)
        a.start = AttemptStart(a.start.attempt_id, LINE, "st1", "j1", uid, utcnow(), "WO-1")
        return a

    assert isinstance(await prov.provision(wo_attempt("0000000000000001"), csr_pem()), Deliver)
    full = await prov.provision(wo_attempt("0000000000000002"), csr_pem())
    assert isinstance(full, Reject)
    assert full.outcome is Outcome.ISSUER_ERROR
    assert gate.complete
    assert prov.work_order_complete
    again = await prov.provision(wo_attempt("0000000000000003"), csr_pem())
    assert isinstance(again, Reject)
    assert again.detail == gate.refusal


class FlakyStore:
    """The real store behind a database that is away `outages` times, or collides."""

    def __init__(self, store: Store, outages: int = 0, collisions: int = 0) -> None:
        self.store, self.outages, self.collisions = store, outages, collisions

    async def assign(self, req: AssignRequest) -> AssignResult:
        if self.outages:
            self.outages -= 1
            raise DatabaseUnavailable("connection refused")
        if self.collisions:
            self.collisions -= 1
            raise DacCollision("serial taken")
        return await self.store.assign(req)

    async def end_attempt(self, start: AttemptStart, end: AttemptEnd) -> None:
        await self.store.end_attempt(start, end)


async def test_the_database_is_waited_for_and_the_jig_told(parts, monkeypatch) -> None:
    issuer, store = parts
    monkeypatch.setattr(provisioning, "DB_RETRY_MIN", 0.01)
    waits: list[JigState | None] = []
    prov = Provisioner(issuer, FlakyStore(store, outages=3))
    assert isinstance(await prov.provision(attempt("00112233AABBCCDD", waits), csr_pem()), Deliver)
    assert waits == [JigState.WAITING_FOR_DATABASE, None]


async def test_collisions_draw_again_then_give_up(parts) -> None:
    issuer, store = parts
    ok = await Provisioner(issuer, FlakyStore(store, collisions=2)).provision(
        attempt("0000000000000001"), csr_pem()
    )
    assert isinstance(ok, Deliver)
    stuck = Provisioner(issuer, FlakyStore(store, collisions=provisioning.ISSUE_RETRIES))
    refused = await stuck.provision(attempt("0000000000000002"), csr_pem())
    assert refused == Reject(Outcome.ISSUER_ERROR, "repeated DAC collisions")


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki.decode()


async def test_a_bare_p256_key_gets_a_dac_for_that_key(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    key = ec.generate_private_key(ec.SECP256R1())
    decision = await prov.provision(attempt("0123456789ABCDEF01"), public_pem(key), "none")
    assert isinstance(decision, Deliver)
    dac = x509.load_pem_x509_certificate(decision.dac_pem.encode())
    assert dac.public_key() == key.public_key()
    # the same key shown by another device is a duplicate, as with a CSR
    dup = await prov.provision(attempt("0123456789ABCDEF02"), csr_pem(key))
    assert isinstance(dup, Reject)
    assert dup.outcome is Outcome.DUPLICATE_KEY


async def test_a_bare_key_that_is_not_p256_is_refused(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    p384 = public_pem(ec.generate_private_key(ec.SECP384R1()))
    refused = await prov.provision(attempt("0123456789ABCDEF03"), p384, "none")
    assert refused == Reject(Outcome.CSR_REJECTED, "public key is not EC P-256 (secp384r1)")
    garbage = await prov.provision(
        attempt("0123456789ABCDEF04"), "-----BEGIN PUBLIC KEY-----", "none"
    )
    assert garbage == Reject(Outcome.CSR_REJECTED, "public key is not a valid PEM PUBLIC KEY")


class FlakyIssuer:
    """The real local issuer behind a gateway that is away `outages` times, or out of quota."""

    def __init__(
        self, issuer: LocalIssuer, outages: int = 0, retry_after: float | None = None
    ) -> None:
        self.issuer, self.outages, self.retry_after = issuer, outages, retry_after
        self.quota_spent = False
        self.asked = 0
        self.pai_pem = issuer.pai_pem

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        self.asked += 1
        if self.quota_spent:
            raise QuotaExhausted(
                "gateway refused (429 quota_exhausted): client line-a", scope="client", name="a"
            )
        if self.outages:
            self.outages -= 1
            raise IssuerUnavailable("gateway unreachable", retry_after=self.retry_after)
        return await self.issuer.issue(uid, csr)


async def test_an_unavailable_issuer_is_waited_for_and_the_device_kept(parts, monkeypatch) -> None:
    issuer, store = parts
    monkeypatch.setattr(provisioning, "ISSUER_RETRY_MIN", 0.01)
    flaky = FlakyIssuer(issuer, outages=2, retry_after=0.1)
    waits: list[JigState | None] = []
    a = attempt("00112233AABBCCDD", waits)
    started = time.monotonic()
    decision = await Provisioner(cast(Issuer, flaky), store).provision(a, csr_pem())
    assert isinstance(decision, Deliver)
    assert time.monotonic() - started >= 0.2  # at least retry_after, twice
    assert flaky.asked == 3
    assert waits == [JigState.WAITING_FOR_ISSUER, None]
    assert a.dac_serial is not None
    assert await assignment_status(store, a.dac_serial) == "issued"
    assert not a.recorded  # the attempt goes on: no issuer_error was recorded


async def test_a_spent_quota_ends_the_attempt_with_its_own_detail(parts) -> None:
    issuer, store = parts
    flaky = FlakyIssuer(issuer)
    flaky.quota_spent = True
    waits: list[JigState | None] = []
    decision = await Provisioner(cast(Issuer, flaky), store).provision(
        attempt("00112233AABBCCDD", waits), csr_pem()
    )
    assert decision == Reject(
        Outcome.ISSUER_ERROR,
        "quota exhausted: gateway refused (429 quota_exhausted): client line-a",
    )
    assert flaky.asked == 1  # never retried
    assert waits == []


# --- bare public keys (the ECC608 letter protocol, key_proof "none") --------------------------


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def key_proof_of(store: Store, serial: str) -> tuple[str | None, str | None]:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT a.key_proof, t.key_proof FROM assignments a "
                    "JOIN attempts t ON t.attempt_id = a.attempt_id WHERE a.dac_serial = :s"
                ),
                {"s": serial},
            )
        ).one()
        return row[0], row[1]


async def test_a_bare_key_gets_a_dac_for_that_key_recorded_key_proof_none(parts) -> None:
    issuer, store = parts
    root = "-----BEGIN PUBLIC KEY-----\nUEFB\n-----END PUBLIC KEY-----\n"
    prov = Provisioner(issuer, store, root_key_pem=root)
    key = ec.generate_private_key(ec.SECP256R1())
    start = AttemptStart(
        str(uuid.uuid4()), LINE, "st1", "j1", "0123ABCDEF01234567", utcnow(), key_proof="none"
    )
    a = Attempt(start, structlog.get_logger("test"))
    decision = await prov.provision(a, public_key_pem(key), "none")
    assert isinstance(decision, Deliver)
    assert decision.root_key_pem == root
    dac = x509.load_pem_x509_certificate(decision.dac_pem.encode())
    assert dac.public_key() == key.public_key()
    assert a.dac_serial is not None
    assert await key_proof_of(store, a.dac_serial) == ("none", "none")
    # A read-back that failed (a device error without a finish code) leaves the DAC unknown...
    await prov.record(a, Outcome.DEVICE_ERROR, "readback mismatch", None, "", provisioned=False)
    assert await assignment_status(store, a.dac_serial) == "unknown"
    # ...and the same chip, back with the same key, gets the same DAC again.
    again = Attempt(
        AttemptStart(
            str(uuid.uuid4()), LINE, "st1", "j2", "0123ABCDEF01234567", utcnow(), key_proof="none"
        ),
        structlog.get_logger("test"),
    )
    redelivered = await prov.provision(again, public_key_pem(key), "none")
    assert isinstance(redelivered, Deliver)
    assert redelivered.dac_pem == decision.dac_pem
    # A v1 device's finish code still fails its DAC.
    v1 = attempt("00112233AABBCCEE")
    assert isinstance(await prov.provision(v1, csr_pem()), Deliver)
    assert v1.dac_serial is not None
    assert await key_proof_of(store, v1.dac_serial) == ("csr", "csr")
    await prov.record(v1, Outcome.DEVICE_ERROR, "finish:003", 3, "", provisioned=False)
    assert await assignment_status(store, v1.dac_serial) == "failed"


@pytest.mark.parametrize(
    ("pem", "detail"),
    [
        ("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", "not a valid PEM"),
        (None, "not EC P-256 (secp384r1)"),
    ],
)
async def test_a_bare_key_keeps_the_csr_path_checks(parts, pem: str | None, detail: str) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    if pem is None:
        pem = public_key_pem(ec.generate_private_key(ec.SECP384R1()))
    decision = await prov.provision(attempt("0123ABCDEF01234568"), pem, "none")
    assert isinstance(decision, Reject)
    assert decision.outcome is Outcome.CSR_REJECTED
    assert detail in decision.detail


async def test_a_bare_key_of_another_uid_is_a_duplicate(parts) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store)
    key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(
        await prov.provision(attempt("0123ABCDEF0123456A"), public_key_pem(key), "none"), Deliver
    )
    clone = await prov.provision(attempt("0123ABCDEF0123456B"), public_key_pem(key), "none")
    assert isinstance(clone, Reject)
    assert clone.outcome is Outcome.DUPLICATE_KEY


async def _delivered(prov: Provisioner, key: ec.EllipticCurvePrivateKey) -> tuple[Attempt, bytes]:
    a = attempt(uuid.uuid4().hex[:16].upper())
    decision = await prov.provision(a, csr_pem(key))
    assert isinstance(decision, Deliver)
    der = x509.load_pem_x509_certificate(decision.dac_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    return a, der


@pytest.mark.parametrize("attest", ["when_offered", "require"])
async def test_a_good_attestation_confirms_the_dac_and_is_recorded(parts, attest) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store, attest=attest)
    key = ec.generate_private_key(ec.SECP256R1())
    a, der = await _delivered(prov, key)
    nonce = bytes(range(32))
    proof = Attestation(nonce, sign_attestation(key, nonce, der))
    outcome, detail = prov.attestation_verdict(a, Outcome.PROVISIONED, "finish:000 ok", proof)
    assert (outcome, detail) == (Outcome.PROVISIONED, "finish:000 ok; attestation verified")
    end = await prov.record(a, outcome, detail, 0, "t", provisioned=True, attestation=proof)
    assert end.attest_nonce == nonce.hex()
    assert end.attest_signature is not None
    assert base64.b64decode(end.attest_signature) == proof.signature
    assert a.dac_serial is not None
    assert await assignment_status(store, a.dac_serial) == "confirmed"


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ("wrong_key", BAD_SIGNATURE),
        ("wrong_dac", BAD_SIGNATURE),
        ("none", "no ATTEST answer"),
    ],
)
async def test_a_bad_attestation_fails_the_dac(parts, answer: str, detail: str) -> None:
    issuer, store = parts
    prov = Provisioner(issuer, store, attest="when_offered")
    key = ec.generate_private_key(ec.SECP256R1())
    a, der = await _delivered(prov, key)
    nonce = b"\x07" * 32
    signature: bytes | None = None
    if answer == "wrong_key":
        signature = sign_attestation(ec.generate_private_key(ec.SECP256R1()), nonce, der)
    elif answer == "wrong_dac":
        signature = sign_attestation(key, nonce, der[:-1] + bytes([der[-1] ^ 1]))
    proof = Attestation(nonce, signature)
    outcome, found = prov.attestation_verdict(a, Outcome.PROVISIONED, "finish:000", proof)
    assert (outcome, found) == (Outcome.ATTESTATION_FAILED, detail)
    await prov.record(a, outcome, found, 0, "t", provisioned=False, attestation=proof)
    assert a.dac_serial is not None
    assert await assignment_status(store, a.dac_serial) == "failed"


async def test_require_never_confirms_without_an_attestation(parts) -> None:
    issuer, store = parts
    key = ec.generate_private_key(ec.SECP256R1())
    required = Provisioner(issuer, store, attest="require")
    a, _ = await _delivered(required, key)
    outcome, detail = required.attestation_verdict(a, Outcome.PROVISIONED, "finish:000", None)
    assert (outcome, detail) == (Outcome.ATTESTATION_FAILED, "no attestation (attest = require)")
    offered = Provisioner(issuer, store, attest="when_offered")
    verdict = offered.attestation_verdict(a, Outcome.PROVISIONED, "finish:000", None)
    assert verdict == (Outcome.PROVISIONED, "finish:000")  # a v1 device, attestation optional
    # other outcomes pass through untouched
    assert required.attestation_verdict(a, Outcome.TIMEOUT, "result", None) == (
        Outcome.TIMEOUT,
        "result",
    )
