"""Device CSR checks: what passes, and one rejection per rule with its message."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from linehost.errors import CsrRejected
from linehost.pki import der
from linehost.pki.csr import MAX_CSR_PEM_BYTES, parse_csr

from .builders import make_csr, to_pem


def test_good_csr_gives_the_key_and_its_fingerprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = make_csr(key)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = parse_csr(pem)
    assert info.public_key_der == spki
    assert info.public_key_sha256 == hashlib.sha256(spki).hexdigest()
    assert info.csr_der == x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert parse_csr(pem.decode("ascii")) == info


def test_compressed_point_gives_the_same_fingerprint_as_uncompressed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = parse_csr(make_csr(key))
    info, algid, _signature = der.children(
        x509.load_pem_x509_csr(make_csr(key)).public_bytes(serialization.Encoding.DER)
    )
    fields = der.children(info)
    spki_algid = der.children(fields[2])[0]
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    fields[2] = der.sequence(spki_algid, der.tlv(der.TAG_BIT_STRING, b"\x00" + point))
    new_info = der.sequence(*fields)
    new_sig = key.sign(new_info, ec.ECDSA(hashes.SHA256()))
    compressed = der.sequence(new_info, algid, der.tlv(der.TAG_BIT_STRING, b"\x00" + new_sig))
    got = parse_csr(to_pem(compressed, "CERTIFICATE REQUEST"))
    assert len(fields[2]) < len(plain.public_key_der)
    assert got.public_key_sha256 == plain.public_key_sha256


def big_csr() -> bytes:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 60) for _ in range(60)]
    )
    pem = make_csr(subject=subject)
    assert x509.load_pem_x509_csr(pem).is_signature_valid  # valid, only too large
    return pem


def corrupt_signature() -> bytes:
    data = bytearray(x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    data[-1] ^= 0x01
    return to_pem(bytes(data), "CERTIFICATE REQUEST")


def other_key_signature() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    info, algid, _ = der.children(
        x509.load_pem_x509_csr(make_csr(key)).public_bytes(serialization.Encoding.DER)
    )
    sig = ec.generate_private_key(ec.SECP256R1()).sign(info, ec.ECDSA(hashes.SHA256()))
    return to_pem(
        der.sequence(info, algid, der.tlv(der.TAG_BIT_STRING, b"\x00" + sig)), "CERTIFICATE REQUEST"
    )


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        pytest.param(big_csr(), r"^CSR too large \(\d+ bytes > 4096\)$", id="too-large"),
        pytest.param(b"x" * 5000, r"^CSR too large \(5000 bytes > 4096\)$", id="too-large-junk"),
        pytest.param(b"hello", "^CSR is not a valid PEM certificate request$", id="garbage"),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "^CSR is not a valid PEM certificate request$",
            id="bad-der",
        ),
        pytest.param(
            to_pem(b"\x30\x00", "CERTIFICATE"),
            "^CSR is not a valid PEM certificate request$",
            id="wrong-pem-label",
        ),
        pytest.param(
            make_csr(ec.generate_private_key(ec.SECP384R1())),
            r"^CSR key is not EC P-256 \(secp384r1\)$",
            id="p384",
        ),
        pytest.param(
            make_csr(rsa.generate_private_key(65537, 2048)),
            r"^CSR key is not EC P-256 \(RSA\)$",
            id="rsa",
        ),
        pytest.param(
            make_csr(hash_alg=hashes.SHA384()),
            r"^CSR signature algorithm is not ecdsa-with-SHA256 \(ecdsa-with-SHA384\)$",
            id="sha384",
        ),
        pytest.param(
            corrupt_signature(),
            r"^CSR signature does not verify \(no proof of possession\)$",
            id="corrupted-signature",
        ),
        pytest.param(
            other_key_signature(),
            r"^CSR signature does not verify \(no proof of possession\)$",
            id="signed-by-other-key",
        ),
    ],
)
def test_bad_csr_is_rejected_naming_the_rule(pem: bytes, message: str) -> None:
    with pytest.raises(CsrRejected, match=message):
        parse_csr(pem)


def test_ed25519_csr_is_rejected() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrRejected, match=r"^CSR key is not EC P-256 \(Ed25519\)$"):
        parse_csr(csr)


def test_size_bound_is_inclusive() -> None:
    pem = make_csr()
    padded = pem + b"\n" * (MAX_CSR_PEM_BYTES - len(pem))
    assert len(padded) == MAX_CSR_PEM_BYTES
    assert parse_csr(padded).public_key_der
    with pytest.raises(CsrRejected, match="too large"):
        parse_csr(padded + b"\n")
