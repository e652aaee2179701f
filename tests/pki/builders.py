"""Certificate and CSR builders for the PKI tests: a conforming chain, and ways to break it."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from linehost.pki import der
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.signer import assemble_certificate

Hash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

FAR = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
PAA_FROM = datetime(2020, 1, 1, tzinfo=UTC)
PAI_FROM = datetime(2021, 1, 1, tzinfo=UTC)
DAC_FROM = datetime(2022, 1, 1, tzinfo=UTC)

PAA_KEY = ec.generate_private_key(ec.SECP256R1())
PAI_KEY = ec.generate_private_key(ec.SECP256R1())
DAC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())

DEFAULT = object()  # "use the profile's value" for an extension or attribute override
OMIT = None  # leave the extension out


def ku(*names: str) -> x509.KeyUsage:
    """A KeyUsage with exactly the named bits set."""
    bits = {
        "digital_signature": False,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    for name in names:
        bits[name] = True
    return x509.KeyUsage(**bits)


def name(cn: str, vid: str | None = "FFF1", pid: str | None = "8000") -> x509.Name:
    """A subject with CN and Matter VID/PID attributes (None leaves one out)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if vid is not None:
        attrs.append(x509.NameAttribute(OID_MATTER_VID, vid))
    if pid is not None:
        attrs.append(x509.NameAttribute(OID_MATTER_PID, pid))
    return x509.Name(attrs)


PAA_NAME = name("Test PAA", pid=None)
PAI_NAME = name("Test PAI")


def skid_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The RFC 5280 method-1 key identifier of `key`'s public half."""
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).key_identifier


@dataclass
class Spec:
    """Everything that goes into one test certificate; defaults give a conforming DAC."""

    subject: x509.Name = field(default_factory=lambda: name("DAC 0001"))
    issuer: x509.Name = PAI_NAME
    key: Any = DAC_KEY  # private key whose public half is certified
    sign_key: CertificateIssuerPrivateKeyTypes = PAI_KEY
    issuer_key_id: bytes | None = None  # AKID; None: sign_key's SKID
    serial: int = 0x1234567890ABCDEF
    not_before: datetime = DAC_FROM
    not_after: datetime = FAR
    hash: Hash = field(default_factory=hashes.SHA256)
    basic_constraints: Any = DEFAULT  # x509.BasicConstraints, (value, critical), or OMIT
    key_usage: Any = DEFAULT
    skid: Any = DEFAULT
    akid: Any = DEFAULT
    extra: Sequence[tuple[x509.ExtensionType, bool]] = ()

    def build(self) -> x509.Certificate:
        """The certificate this spec describes."""
        public: CertificatePublicKeyTypes = self.key.public_key()
        akid_id = self.issuer_key_id
        if akid_id is None:
            akid_id = x509.SubjectKeyIdentifier.from_public_key(
                self.sign_key.public_key()
            ).key_identifier
        builder = x509.CertificateBuilder(
            issuer_name=self.issuer,
            subject_name=self.subject,
            public_key=public,
            serial_number=self.serial,
            not_valid_before=self.not_before,
            not_valid_after=self.not_after,
        )
        defaults: list[tuple[Any, Any]] = [
            (self.basic_constraints, (x509.BasicConstraints(False, None), True)),
            (self.key_usage, (ku("digital_signature"), True)),
            (self.skid, (x509.SubjectKeyIdentifier.from_public_key(public), False)),
            (self.akid, (x509.AuthorityKeyIdentifier(akid_id, None, None), False)),
        ]
        for override, default in defaults:
            chosen = default if override is DEFAULT else override
            if chosen is OMIT:
                continue
            value, critical = chosen if isinstance(chosen, tuple) else (chosen, default[1])
            builder = builder.add_extension(value, critical)
        for value, critical in self.extra:
            builder = builder.add_extension(value, critical)
        return builder.sign(self.sign_key, self.hash)


def paa_spec(**changes: Any) -> Spec:
    """A conforming self-signed PAA, with `changes`."""
    spec = Spec(
        subject=PAA_NAME,
        issuer=PAA_NAME,
        key=PAA_KEY,
        sign_key=PAA_KEY,
        not_before=PAA_FROM,
        basic_constraints=x509.BasicConstraints(True, 1),
        key_usage=ku("key_cert_sign", "crl_sign"),
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def pai_spec(**changes: Any) -> Spec:
    """A conforming PAI issued by PAA_KEY, with `changes`."""
    spec = Spec(
        subject=PAI_NAME,
        issuer=PAA_NAME,
        key=PAI_KEY,
        sign_key=PAA_KEY,
        not_before=PAI_FROM,
        basic_constraints=x509.BasicConstraints(True, 0),
        key_usage=ku("key_cert_sign", "crl_sign"),
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def dac_spec(**changes: Any) -> Spec:
    """A conforming DAC issued by PAI_KEY, with `changes`."""
    spec = Spec()
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def resign_tbs(
    cert: x509.Certificate,
    edit: Callable[[list[bytes]], list[bytes]],
    key: ec.EllipticCurvePrivateKey = PAI_KEY,
) -> x509.Certificate:
    """`cert` with its TBSCertificate fields edited by `edit`, signed again by `key`."""
    fields = edit(der.children(cert.tbs_certificate_bytes))
    tbs = der.sequence(*fields)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(assemble_certificate(tbs, signature))


def with_serial_der(serial: int) -> Callable[[list[bytes]], list[bytes]]:
    """A TBS edit replacing the serial number with any INTEGER, even one cryptography refuses."""
    return lambda fields: [fields[0], der.integer(serial), *fields[2:]]


def duplicate_first_extension(fields: list[bytes]) -> list[bytes]:
    """A TBS edit repeating the first extension."""
    explicit = fields[-1]
    assert explicit[0] == 0xA3
    exts = der.children(der.children(explicit)[0])
    return [*fields[:-1], der.tlv(0xA3, der.sequence(exts[0], *exts))]


def make_csr(
    key: Any = None, hash_alg: Hash | None = None, subject: x509.Name | None = None
) -> bytes:
    """A PEM CSR signed by `key` (a fresh P-256 key by default) with `hash_alg` (SHA-256)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    )
    return builder.sign(key, hash_alg or hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def to_pem(der_bytes: bytes, label: str) -> bytes:
    """`der_bytes` as one PEM block with `label`."""
    body = base64.encodebytes(der_bytes).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()])
        + b"\n"
    )


class PlainSigner:
    """A Signer that is not a FileKeySigner: forces the TBS + assembly path, like PKCS#11."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.signed: list[bytes] = []

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    async def sign(self, data: bytes) -> bytes:
        self.signed.append(data)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    async def aclose(self) -> None:
        pass


def write(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` and return the path."""
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an external tool (openssl, softhsm2-util) and return its result without raising."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def openssl_verify(
    openssl: str, paa: Path, pai: Path, leaf: Path
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -CAfile paa -untrusted pai leaf`: the independent chain check."""
    return run_tool(openssl, "verify", "-CAfile", paa, "-untrusted", pai, leaf)
