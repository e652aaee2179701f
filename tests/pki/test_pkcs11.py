"""Pkcs11Signer against SoftHSM2: DACs signed in the token, verified by openssl; failures,
an unplugged token and its reopening."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import IssuerError, PkiError
from linehost.pki.csr import parse_csr
from linehost.pki.local import LocalIssuer
from linehost.pki.profile import check_dac
from linehost.pki.signer import FileKeySigner, open_signer

from .builders import make_csr, openssl_verify, write
from .softhsm import MODULE, PIN, TOKEN, SoftHsm

try:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    from linehost.pki.pkcs11 import Pkcs11Signer

    HAVE_PKCS11 = True
except ImportError:  # the hsm extra is optional; the fixture reports it
    HAVE_PKCS11 = False

pytestmark = pytest.mark.hsm


@pytest.fixture
async def hsm_signer(softhsm: SoftHsm) -> AsyncIterator[Pkcs11Signer]:
    """A Pkcs11Signer on the PAI key, closed after the test."""
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=pai", softhsm.module, PIN)
    yield signer
    await signer.aclose()


async def test_dac_signed_in_the_token_verifies_with_openssl(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    signer = open_signer(
        f"pkcs11:token={TOKEN};object=pai;id=%01", pkcs11_module=softhsm.module, pkcs11_pin=PIN
    )
    assert isinstance(signer, Pkcs11Signer)
    file_key = FileKeySigner.load(softhsm.pki.pai_key)
    assert signer.public_key() == file_key.public_key()
    issuer = LocalIssuer.load(
        softhsm.pki.pai_cert, signer, "FFF1", "8000", paa_cert=softhsm.pki.paa_cert
    )
    try:
        dacs = [await issuer.issue(f"{i:016X}", parse_csr(make_csr())) for i in range(5)]
    finally:
        await issuer.aclose()
    pai = x509.load_pem_x509_certificate(softhsm.pki.pai_cert.read_bytes())
    for dac in dacs:
        cert = x509.load_der_x509_certificate(dac.der)
        assert check_dac(cert, pai) == []
        path = write(tmp_path / f"{dac.serial_hex}.pem", dac.pem)
        result = openssl_verify("openssl", softhsm.pki.paa_cert, softhsm.pki.pai_cert, path)
        assert result.returncode == 0, result.stdout + result.stderr
    assert len({d.serial_hex for d in dacs}) == 5


async def test_signature_is_der_ecdsa_sha256_over_the_data(hsm_signer: Pkcs11Signer) -> None:
    signature = await hsm_signer.sign(b"to be signed")
    hsm_signer.public_key().verify(signature, b"to be signed", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        hsm_signer.public_key().verify(signature, b"something else", ec.ECDSA(hashes.SHA256()))


async def test_key_stays_in_the_token(softhsm: SoftHsm, hsm_signer: Pkcs11Signer) -> None:
    token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
    with token.open() as session:  # shares the signer's login
        key = session.get_key(ObjectClass.PRIVATE_KEY, label="pai")
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False


async def test_concurrent_signing_is_serialised_and_correct(hsm_signer: Pkcs11Signer) -> None:
    messages = [f"m{i}".encode() for i in range(40)]
    signatures = await asyncio.gather(*(hsm_signer.sign(m) for m in messages))
    for message, signature in zip(messages, signatures, strict=True):
        hsm_signer.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


async def test_second_login_to_the_same_token_is_refused(hsm_signer: Pkcs11Signer) -> None:
    assert await hsm_signer.sign(b"x")
    with pytest.raises(PkiError, match=r"already logged in by this process"):
        Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=other", MODULE, PIN)


async def test_wrong_pin_is_a_clear_pki_error(softhsm: SoftHsm) -> None:
    with pytest.raises(PkiError, match=r"^PKCS#11 token 'linehost-test': wrong PIN$"):
        Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=pai", softhsm.module, "0000")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:token=nope;object=pai", r"^PKCS#11 token 'nope': not found$"),
        (f"pkcs11:token={TOKEN};object=nope", r"key 'nope' on token 'linehost-test': no such"),
    ],
)
async def test_missing_token_or_key_is_a_pki_error(
    softhsm: SoftHsm, uri: str, message: str
) -> None:
    with pytest.raises(PkiError, match=message):
        Pkcs11Signer.open(uri, softhsm.module, PIN)


async def test_token_key_that_is_not_the_pai_key_is_refused(softhsm: SoftHsm) -> None:
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=other", softhsm.module, PIN)
    try:
        with pytest.raises(PkiError, match="signing key does not match"):
            LocalIssuer.load(softhsm.pki.pai_cert, signer, "FFF1", "8000")
    finally:
        await signer.aclose()


async def test_hsm_failure_during_sign_is_an_issuer_error(softhsm: SoftHsm) -> None:
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=doomed", softhsm.module, PIN)
    issuer = LocalIssuer.load(softhsm.pki.pai_cert, signer, "FFF1", "8000")
    try:
        await issuer.issue("00000001", parse_csr(make_csr()))  # works while the key exists
        token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
        with token.open(rw=True) as session:  # shares the signer's login
            session.get_key(ObjectClass.PRIVATE_KEY, label="doomed").destroy()
        with pytest.raises(IssuerError, match=r"^PKCS#11 key 'doomed' .*: HSM failed \(\w+"):
            await issuer.issue("00000002", parse_csr(make_csr()))
    finally:
        await issuer.aclose()
    with pytest.raises(IssuerError, match="signer is closed"):
        await signer.sign(b"after close")
    await signer.aclose()  # idempotent


def test_open_signer_needs_module_and_pin() -> None:
    with pytest.raises(PkiError, match="no PKCS#11 module path configured"):
        open_signer("pkcs11:token=t;object=o", pkcs11_pin=PIN)
    with pytest.raises(PkiError, match="no PIN configured"):
        open_signer("pkcs11:token=t;object=o", pkcs11_module=MODULE)


def test_softhsm_pki_key_file_is_the_one_imported(softhsm: SoftHsm) -> None:
    key = serialization.load_pem_private_key(softhsm.pki.pai_key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(softhsm.pki.pai_cert.read_bytes())
    assert key.public_key() == cert.public_key()


@contextlib.contextmanager
def unplugged(softhsm: SoftHsm) -> Iterator[Callable[[], None]]:
    """Take the token directory away (SoftHSM2's unplug); the callable plugs it back in."""
    tokens = softhsm.workdir / "tokens"
    away = softhsm.workdir / "tokens-unplugged"
    tokens.rename(away)

    def plug_in() -> None:
        if away.exists():
            away.rename(tokens)

    try:
        yield plug_in
    finally:
        plug_in()


async def test_unplugged_token_fails_signing_until_it_is_back(
    softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("linehost.pki.pkcs11.REOPEN_INTERVAL", 0.0)
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=pai", softhsm.module, PIN)
    try:
        assert await signer.sign(b"before")
        with unplugged(softhsm) as plug_in:
            # the session still open dies with the token directory; the module cannot restart
            with pytest.raises(IssuerError) as first:
                await signer.sign(b"during")
            assert str(first.value).startswith(
                "PKCS#11 key 'pai' on token 'linehost-test': HSM failed (ObjectHandleInvalid); "
                "cannot reopen: PKCS#11 module "
            )
            with pytest.raises(IssuerError, match=r": HSM unavailable \(cannot reopen: "):
                await signer.sign(b"still away")
            plug_in()
            signature = await signer.sign(b"after")
        signer.public_key().verify(signature, b"after", ec.ECDSA(hashes.SHA256()))
    finally:
        await signer.aclose()


async def test_a_lost_token_is_reopened_at_most_every_interval(
    softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("linehost.pki.pkcs11.REOPEN_INTERVAL", 1.0)
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=pai", softhsm.module, PIN)
    try:
        with unplugged(softhsm) as plug_in:
            with pytest.raises(IssuerError, match="HSM failed"):
                await signer.sign(b"during")
            plug_in()
            # back, but the last try is too recent: fail at once, without touching the module
            with pytest.raises(IssuerError, match=r"HSM unavailable \(cannot reopen: "):
                await signer.sign(b"too soon")
        await asyncio.sleep(1.1)
        assert await signer.sign(b"a second later")
    finally:
        await signer.aclose()


async def test_a_changed_pin_stops_the_reopening(
    softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("linehost.pki.pkcs11.REOPEN_INTERVAL", 0.0)
    signer = Pkcs11Signer.open(f"pkcs11:token={TOKEN};object=pai", softhsm.module, PIN)
    token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
    new_pin = "9876"
    with token.open(rw=True) as session:  # shares the signer's login
        session.set_pin(PIN, new_pin)
    try:
        assert await signer.sign(b"still logged in")
        with unplugged(softhsm), pytest.raises(IssuerError, match="HSM failed"):
            await signer.sign(b"while away")
        with pytest.raises(IssuerError) as failed:
            await signer.sign(b"reopen with the old PIN")
        assert "cannot reopen: PKCS#11 token 'linehost-test': wrong PIN" in str(failed.value)
        assert "not trying again until the host restarts" in str(failed.value)
        assert PIN not in str(failed.value)
        # no more log-in attempts against a PIN counter
        with pytest.raises(IssuerError, match="not trying again"):
            await signer.sign(b"again")
    finally:
        await signer.aclose()
        token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
        with token.open(rw=True, user_pin=new_pin) as session:
            session.set_pin(new_pin, PIN)


@pytest.mark.parametrize(
    ("pin", "status", "says"),
    [(PIN, "ok", "HSM token key matches the PAI"), ("0000", "fail", "PIN")],
)
def test_doctor_opens_the_token_with_its_pin(
    softhsm: SoftHsm, tmp_path: Path, pin: str, status: str, says: str
) -> None:
    pin_file = write(tmp_path / "pin", pin + "\n")
    config = write(
        tmp_path / "line.toml",
        f'[line]\nname = "hsm"\n\n[pki]\npai_cert = "{softhsm.pki.pai_cert}"\n'
        f'pai_key = "pkcs11:token={TOKEN};object=pai"\npkcs11_module = "{softhsm.module}"\n'
        f'pkcs11_pin_file = "{pin_file}"\npaa_cert = "{softhsm.pki.paa_cert}"\n'
        'vid = "FFF1"\npid = "8000"\n',
    )
    proc = subprocess.run(
        [sys.executable, "-m", "linehost.cli", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    row = next(line for line in proc.stdout.splitlines() if line.startswith("PAI key "))
    assert row.split()[2] == status, proc.stdout
    assert says in proc.stdout, proc.stdout
    assert proc.returncode == (0 if status == "ok" else 1), proc.stdout


async def test_audit_key_in_the_token_signs_checkpoints(softhsm: SoftHsm) -> None:
    """Issue 14: `[audit] key` as a PKCS#11 object (P-256), never the PAI key."""
    from linehost.evidence.checkpoint import (
        ECDSA_P256,
        open_audit_key,
        sign_checkpoint,
        verify_checkpoint,
    )

    key = open_audit_key(
        f"pkcs11:token={TOKEN};object=other", pkcs11_module=softhsm.module, pkcs11_pin=PIN
    )
    try:
        body = {"line": "l1", "seq": 3, "tree_size": 3, "head_hash": "a" * 64,
                "root_hash": "b" * 64, "at": "2026-12-02T03:00:00.000000Z"}  # fmt: skip
        checkpoint = await sign_checkpoint(key, body)
    finally:
        await key.aclose()
    assert checkpoint.algorithm == ECDSA_P256
    assert verify_checkpoint(checkpoint, key.public_key()) is None
    tampered = checkpoint.__class__(**{**checkpoint.as_json(), "root_hash": "c" * 64})
    assert verify_checkpoint(tampered, key.public_key()) == (
        "signature does not verify with the audit public key"
    )
