"""Databases holding real Matter DACs (a development PKI and the local issuer), for CLI tests.

`linehost audit verify` checks every DAC against the PAI, so the tests that drive it through
the command line need certificates that really chain; the store's plain-data factory has none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.mqtt.payloads import result_payload
from linehost.pki.csr import parse_csr
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AssignRequest, AttemptEnd, AttemptStart
from linehost.store.store import Store

T0 = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Device:
    """One provisioned device as the test expects to find it."""

    uid: str
    line: str
    station: str
    jig: str
    outcome: Outcome
    dac_serial: str | None
    issued_at: datetime


def dev_pki(out: Path) -> DevPki:
    """A development PAA + PAI in `out`."""
    return init_dev(out)


def write_config(path: Path, pki: DevPki, url: str, line: str = "line-a") -> Path:
    """A station config naming the database and the PKI (one jig that is never opened)."""
    path.write_text(
        f'[line]\nname = "{line}"\n'
        f'[database]\nurl = "{url}"\n'
        f'[pki]\npai_cert = "{pki.pai_cert}"\npai_key = "{pki.pai_key}"\n'
        f'paa_cert = "{pki.paa_cert}"\nvid = "FFF1"\npid = "8000"\n'
        '[[jigs]]\nname = "j1"\nstation = "st1"\nport = "/nonexistent"\n'
    )
    return path


async def provision(
    url: str, pki: DevPki, line: str, places: list[tuple[str, str, Outcome]]
) -> list[Device]:
    """One device per (station, jig, outcome), provisioned one minute apart through the Store:
    `provisioned` confirms its DAC, `device_error` fails it, anything else ends without one."""
    issuer = LocalIssuer.load(pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000")
    store = await Store.open(url, line=line, result_payload=result_payload)
    devices: list[Device] = []
    try:
        for i, (station, jig, outcome) in enumerate(places):
            at = T0 + timedelta(minutes=i)
            uid = uuid.uuid4().hex[:16].upper()
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .sign(key, hashes.SHA256())
            )
            info = parse_csr(csr.public_bytes(serialization.Encoding.PEM))
            start = AttemptStart(str(uuid.uuid4()), line, station, jig, uid, at)
            serial = None
            assignment_id = None
            status = None
            if outcome in (Outcome.PROVISIONED, Outcome.DEVICE_ERROR):
                dac = await issuer.issue(uid, info)
                store.writer.clock = lambda at=at: at  # issued_at on a known minute
                result = await store.assign(AssignRequest(start, info.public_key_sha256, dac))
                assert result.kind == "issued", result
                serial, assignment_id = result.dac_serial, result.assignment_id
                confirmed = outcome is Outcome.PROVISIONED
                status = AssignmentStatus.CONFIRMED if confirmed else AssignmentStatus.FAILED
            end = AttemptEnd(
                outcome=outcome,
                detail="" if outcome is Outcome.PROVISIONED else "test",
                ended_at=at + timedelta(seconds=5),
                device_code=1 if outcome is Outcome.DEVICE_ERROR else None,
                assignment_id=assignment_id,
                assignment_status=status,
            )
            await store.end_attempt(start, end)
            devices.append(Device(uid, line, station, jig, outcome, serial, at))
    finally:
        await store.close()
        await issuer.aclose()
    return devices
