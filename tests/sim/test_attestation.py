"""The attestation extension back to back: the host session and each attesting personality,
wired together without ports, the signature checked by `pki.attestation` and by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.pki.attestation import BAD_SIGNATURE, attestation_message, verify_attestation
from linehost.protocol.device import DeviceSession, DeviceState, FlowEnd, FlowEnded, Send
from linehost.protocol.host import AttemptEnded, HostSession, KeyPresented, SendLine, Timing
from linehost.protocol.outcomes import Outcome
from linehost.protocol.session import AttestMode, Effect
from linehost.sim.firmware import SimulatedDevice, Write
from linehost.sim.identity import IdentityPool
from linehost.sim.personalities import get_personality

from .helpers import Ca, make_root

UID = "A1B2C3D4E5F60718"


def run(personality: str, attest: AttestMode, pai: Ca) -> tuple[AttemptEnded, str, SimulatedDevice]:
    """One device through one attempt; returns the host's end, the DAC delivered, the device."""
    identity = IdentityPool().make(UID)
    device = SimulatedDevice(identity, get_personality(personality))
    host = HostSession(Timing(result_timeout=5.0, attest=attest))
    now = 0.0
    dac_pem = ""
    pending: list[Effect] = host.open(now)
    ends: list[AttemptEnded] = []
    for _ in range(200):
        for effect in list(pending):
            if isinstance(effect, KeyPresented):
                csr = x509.load_pem_x509_csr(effect.pem.encode())
                dac_pem = pai.issue(csr.public_key())  # type: ignore[arg-type]
                pending += host.deliver(dac_pem, pai.pem, now)
            elif isinstance(effect, AttemptEnded):
                ends.append(effect)
        to_device = b"".join(e.data for e in pending if isinstance(e, SendLine))
        if ends:
            return ends[0], dac_pem, device
        from_device = b"".join(
            a.data for a in device.receive(to_device, now) if isinstance(a, Write)
        )
        pending = host.on_bytes(from_device, now) if from_device else []
        if not pending:
            now += 1.0
            pending = host.on_timer(now)
    raise AssertionError("the attempt never ended")


@pytest.fixture(scope="module")
def pai() -> Ca:
    return make_root().sub_ca("Test PAI")


def test_good_attesting_device_signs_what_the_host_recorded(pai: Ca, tmp_path: Path) -> None:
    end, dac_pem, device = run("attest", "require", pai)
    assert end.outcome is Outcome.PROVISIONED
    assert end.attestation is not None
    assert end.attestation.signature is not None
    assert device.log.attest_nonce == end.attestation.nonce.hex()
    assert device.log.first_sync_at is not None  # `Start_provisioning attest` counts as a sync
    assert verify_attestation(dac_pem, end.attestation.nonce, end.attestation.signature) is None
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    dac = x509.load_pem_x509_certificate(dac_pem.encode())
    (tmp_path / "pub.pem").write_bytes(
        dac.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "sig.der").write_bytes(end.attestation.signature)
    der = dac.public_bytes(serialization.Encoding.DER)
    (tmp_path / "data").write_bytes(attestation_message(end.attestation.nonce, der))
    proc = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
         "-signature", str(tmp_path / "sig.der"), str(tmp_path / "data")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Verified OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("personality", ["attest_wrong_key", "attest_wrong_dac"])
def test_a_wrong_signature_does_not_verify(personality: str, pai: Ca) -> None:
    end, dac_pem, _ = run(personality, "when_offered", pai)
    assert end.outcome is Outcome.PROVISIONED  # on the wire all is well: the crypto says no
    assert end.attestation is not None
    assert end.attestation.signature is not None
    problem = verify_attestation(dac_pem, end.attestation.nonce, end.attestation.signature)
    assert problem == BAD_SIGNATURE


def test_a_silent_device_times_out(pai: Ca) -> None:
    end, _, device = run("attest_silent", "when_offered", pai)
    assert (end.outcome, end.detail) == (
        Outcome.ATTESTATION_FAILED,
        "no answer to Attest (timeout)",
    )
    assert device.log.attest_nonce is not None


def test_a_device_that_cannot_sign_answers_a_finish_code(pai: Ca) -> None:
    end, _, _ = run("attest_error", "when_offered", pai)
    assert end.outcome is Outcome.ATTESTATION_FAILED
    assert end.device_code == 0x001


@pytest.mark.parametrize("attest", ["off", "when_offered"])
def test_a_v1_device_is_provisioned_unless_attestation_is_required(
    attest: AttestMode, pai: Ca
) -> None:
    end, _, _ = run("good", attest, pai)
    assert end.outcome is Outcome.PROVISIONED
    assert end.attestation is None


def test_a_v1_device_is_refused_under_require(pai: Ca) -> None:
    end, dac_pem, _ = run("good", "require", pai)
    assert (end.outcome, end.detail) == (Outcome.PROTOCOL_ERROR, "attestation not offered")
    assert dac_pem == ""  # refused before its CSR was accepted


def test_an_attesting_device_under_a_host_that_never_challenges(pai: Ca) -> None:
    end, _, device = run("attest", "off", pai)
    assert end.outcome is Outcome.PROVISIONED
    assert end.attestation is None
    assert device.log.attest_nonce is None


def test_device_session_offers_and_ends_its_flow_when_the_host_moves_on() -> None:
    session = DeviceSession(UID, "", capabilities=("attest",))
    out = session.receive_line("Init", 0.0)
    assert next(e.line for e in out if isinstance(e, Send)) == "Start_provisioning attest"
    block = ["-----BEGIN CERTIFICATE-----", "REFD", "-----END CERTIFICATE-----"]
    for line in [*block, *block, "END"]:
        session.receive_line(line, 0.5)
    assert session.state is DeviceState.AWAITING_RESULT
    assert [e.line for e in session.finish(0, 1.0) if isinstance(e, Send)] == ["finish:000"]
    assert session.state is DeviceState.AWAITING_CHALLENGE
    # an Init instead of a challenge: the flow is over (finished, code 000 sent before)
    assert session.receive_line("Init", 2.0) == [FlowEnded(FlowEnd.FINISHED, 0)]
    assert session.state is DeviceState.IDLE
