"""A development PAA + PAI under the Matter profile, for demos and tests; never for production."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.errors import PkiError
from linehost.pki.cd import sign_test_cd
from linehost.pki.local import NO_EXPIRY
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID

README_TEXT = """\
linehost development PKI -- DEVELOPMENT ONLY, NEVER FOR PRODUCTION.

paa.pem / paa.key   development Product Attestation Authority (self-signed root)
pai.pem / pai.key   development Product Attestation Intermediate, signed by the PAA

Made by `linehost pki init-dev`. The keys are plain files on this machine and no Matter
commissioner trusts this PAA: devices provisioned with it are for development only.
"""

CD_README_TEXT = """\
cd.der              a TEST Certification Declaration (DER CMS SignedData, certification_type
                    development) signed by a throwaway development CD key; cd-signer.pem is
                    that key's certificate. No commissioner accepts it outside development.
"""


@dataclass(frozen=True, slots=True)
class DevPki:
    """Where init_dev wrote the development PAA and PAI."""

    paa_cert: Path
    paa_key: Path
    pai_cert: Path
    pai_key: Path
    cd: Path | None = None  # a test Certification Declaration (DER), when asked for
    cd_signer: Path | None = None  # the development CD signing certificate


def init_dev(out: Path, vid: str = "FFF1", pid: str = "8000", *, cd: bool = False) -> DevPki:
    """Write a development PAA + PAI (and with `cd` a test CD signed by a development CD key)
    into `out`; raise PkiError rather than overwrite a file."""
    vid, pid = vid.upper(), pid.upper()
    for name, value in (("vid", vid), ("pid", pid)):
        if len(value) != 4 or any(c not in "0123456789ABCDEF" for c in value):
            raise PkiError(f"{name} {value!r}: not 4 hex digits")
    paths = DevPki(
        out / "paa.pem",
        out / "paa.key",
        out / "pai.pem",
        out / "pai.key",
        cd=out / "cd.der" if cd else None,
        cd_signer=out / "cd-signer.pem" if cd else None,
    )
    readme = out / "README.txt"
    extra = (paths.cd, paths.cd_signer) if paths.cd is not None else ()
    for path in (paths.paa_cert, paths.paa_key, paths.pai_cert, paths.pai_key, readme, *extra):
        if path.exists() or path.is_symlink():
            raise PkiError(f"{path}: already exists; refusing to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"{out}: cannot create directory ({exc.strerror or exc})") from None

    not_before = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    paa_key = ec.generate_private_key(ec.SECP256R1())
    pai_key = ec.generate_private_key(ec.SECP256R1())
    stamp = not_before.strftime("%Y%m%d%H%M%S")
    paa_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"linehost Dev PAA {stamp}"),
            x509.NameAttribute(OID_MATTER_VID, vid),
        ]
    )
    pai_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"linehost Dev PAI {vid} {pid}"),
            x509.NameAttribute(OID_MATTER_VID, vid),
            x509.NameAttribute(OID_MATTER_PID, pid),
        ]
    )
    paa_skid = x509.SubjectKeyIdentifier.from_public_key(paa_key.public_key())
    paa = (
        _ca_builder(paa_name, paa_name, paa_key.public_key(), not_before, path_length=1)
        .add_extension(x509.AuthorityKeyIdentifier(paa_skid.key_identifier, None, None), False)
        .sign(paa_key, hashes.SHA256())
    )
    pai = (
        _ca_builder(pai_name, paa_name, pai_key.public_key(), not_before, path_length=0)
        .add_extension(x509.AuthorityKeyIdentifier(paa_skid.key_identifier, None, None), False)
        .sign(paa_key, hashes.SHA256())
    )
    try:
        _write(paths.paa_key, _key_pem(paa_key), 0o600)
        _write(paths.pai_key, _key_pem(pai_key), 0o600)
        _write(paths.paa_cert, paa.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(paths.pai_cert, pai.public_bytes(serialization.Encoding.PEM), 0o644)
        text = README_TEXT
        if paths.cd is not None and paths.cd_signer is not None:
            cd_der, cd_signer = _test_cd(vid, pid, not_before)
            _write(paths.cd, cd_der, 0o644)
            _write(paths.cd_signer, cd_signer.public_bytes(serialization.Encoding.PEM), 0o644)
            text += CD_README_TEXT
        _write(readme, text.encode("ascii"), 0o644)
    except FileExistsError as exc:
        raise PkiError(f"{exc.filename}: already exists; refusing to overwrite") from None
    except OSError as exc:
        raise PkiError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    return paths


def issue_dev_pai(
    paa_dir: Path,
    out: Path,
    *,
    vid: str = "FFF1",
    pid: str = "8000",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> DevPki:
    """A new development PAI (`pai.pem`, `pai.key`) in `out` under the PAA of `paa_dir` (which
    `init_dev` wrote), with a copy of `paa.pem`: the material of a PAI rollover rehearsal."""
    try:
        paa = x509.load_pem_x509_certificate((paa_dir / "paa.pem").read_bytes())
        paa_key = serialization.load_pem_private_key((paa_dir / "paa.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"{paa_dir}: no development PAA there ({exc})") from None
    if not isinstance(paa_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{paa_dir / 'paa.key'}: not an EC key")
    paths = DevPki(paa_dir / "paa.pem", paa_dir / "paa.key", out / "pai.pem", out / "pai.key")
    for path in (paths.pai_cert, paths.pai_key, out / "paa.pem"):
        if path.exists():
            raise PkiError(f"{path}: already exists; refusing to overwrite")
    start = not_before or datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"linehost Dev PAI {vid} {pid} {start:%Y%m%d%H%M%S}"
            ),
            x509.NameAttribute(OID_MATTER_VID, vid.upper()),
            x509.NameAttribute(OID_MATTER_PID, pid.upper()),
        ]
    )
    paa_skid = paa.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = _ca_builder(
        name, paa.subject, key.public_key(), start, path_length=0, not_after=not_after
    )
    pai = builder.add_extension(
        x509.AuthorityKeyIdentifier(paa_skid.digest, None, None), False
    ).sign(paa_key, hashes.SHA256())
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(paths.pai_key, _key_pem(key), 0o600)
        _write(paths.pai_cert, pai.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(out / "paa.pem", paa.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise PkiError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    return paths


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    not_before: datetime,
    *,
    path_length: int,
    not_after: datetime | None = None,
) -> x509.CertificateBuilder:
    return x509.CertificateBuilder(
        issuer_name=issuer,
        subject_name=subject,
        public_key=key,
        serial_number=x509.random_serial_number(),
        not_valid_before=not_before,
        not_valid_after=not_after or NO_EXPIRY,
        extensions=[
            x509.Extension(
                x509.BasicConstraints.oid, True, x509.BasicConstraints(True, path_length)
            ),
            x509.Extension(
                x509.KeyUsage.oid,
                True,
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
            ),
            x509.Extension(
                x509.SubjectKeyIdentifier.oid, False, x509.SubjectKeyIdentifier.from_public_key(key)
            ),
        ],
    )


def _test_cd(vid: str, pid: str, not_before: datetime) -> tuple[bytes, x509.Certificate]:
    """A test CD signed by a fresh development CD key (the key itself is not kept)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linehost Dev CD Signing Key")])
    cert = (
        x509.CertificateBuilder(
            issuer_name=name,
            subject_name=name,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=not_before,
            not_valid_after=NO_EXPIRY,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return sign_test_cd(key, cert, vid, pid), cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: a file that appeared since the up-front check is still never overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask must not widen or narrow what we asked for
