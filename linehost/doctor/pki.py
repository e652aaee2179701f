"""The doctor's PKI rows: the PAI, its key, the chain to the PAA, the clock, the CD."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from linehost.doctor.report import Check, Status
from linehost.errors import LinehostError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    from linehost.config import LineConfig, PkiSection


def check_pai(pki: PkiSection) -> tuple[Check, x509.Certificate | None]:
    """The PAI certificate loads, conforms to the Matter profile and carries the VID/PID."""
    from linehost.pki.local import load_certificate
    from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
    from linehost.pki.profile import check_pai as profile_check_pai
    from linehost.pki.profile import describe

    try:
        pai = load_certificate(pki.pai_cert, "PAI")
    except LinehostError as exc:
        return Check(
            "PAI", Status.FAIL, str(exc), "point pki.pai_cert at the PAI (PEM or DER)"
        ), None
    violations = profile_check_pai(pai, None)
    if violations:
        fix = "use a PAI issued to the Matter attestation profile (docs/pki.md)"
        return Check("PAI", Status.FAIL, f"{pki.pai_cert}: {describe(violations)}", fix), pai
    vid, pid = _subject_hex(pai, OID_MATTER_VID), _subject_hex(pai, OID_MATTER_PID)
    if vid != pki.vid or (pid is not None and pid != pki.pid):
        detail = f"PAI is for VID {vid} PID {pid or 'any'}, the config says {pki.vid}/{pki.pid}"
        return Check(
            "PAI", Status.FAIL, detail, "set pki.vid / pki.pid or use this product's PAI"
        ), pai
    return Check("PAI", Status.OK, f"{pki.pai_cert}: conforms, VID {vid}"), pai


async def check_pai_key(pki: PkiSection, pai: x509.Certificate | None) -> Check:
    """The PAI key (file or HSM token, with its passphrase / PIN) opens and matches the PAI."""
    from linehost.pki.signer import open_signer

    if pki.issuer != "local" or pki.pai_key is None:
        return Check("PAI key", Status.SKIPPED, f"issuer = {pki.issuer!r} signs nothing here")
    if pai is None:
        return Check("PAI key", Status.SKIPPED, "no PAI certificate to match")
    try:
        signer = open_signer(
            pki.pai_key,
            passphrase=pki.passphrase(),
            pkcs11_module=pki.pkcs11_module,
            pkcs11_pin=pki.pin(),
        )
    except LinehostError as exc:
        fix = "check pki.pai_key, its passphrase / the token PIN, and the PKCS#11 module"
        return Check("PAI key", Status.FAIL, str(exc), fix)
    try:
        if _spki(signer.public_key()) != _spki(pai.public_key()):
            fix = "pki.pai_key must be the private key of pki.pai_cert"
            return Check("PAI key", Status.FAIL, f"{pki.pai_key} is not the PAI's key", fix)
    finally:
        await signer.aclose()
    where = "HSM token" if pki.pai_key.startswith("pkcs11:") else "file"
    return Check("PAI key", Status.OK, f"{where} key matches the PAI")


def check_paa_chain(pki: PkiSection, pai: x509.Certificate | None) -> Check:
    """The PAA conforms and issued the PAI."""
    from linehost.pki.local import load_certificate
    from linehost.pki.profile import check_paa, describe
    from linehost.pki.profile import check_pai as profile_check_pai

    if pki.paa_cert is None:
        fix = "set pki.paa_cert so a wrong PAI is caught before devices fail attestation"
        return Check("PAA chain", Status.WARN, "no pki.paa_cert: the chain is not checked", fix)
    if pai is None:
        return Check("PAA chain", Status.SKIPPED, "no PAI certificate to chain")
    try:
        paa = load_certificate(pki.paa_cert, "PAA")
    except LinehostError as exc:
        return Check("PAA chain", Status.FAIL, str(exc), "point pki.paa_cert at the PAA")
    own = set(profile_check_pai(pai, None))
    violations = check_paa(paa) + [v for v in profile_check_pai(pai, paa) if v not in own]
    if violations:
        fix = "use the PAA that issued this PAI (and a PAA that conforms)"
        return Check("PAA chain", Status.FAIL, describe(violations), fix)
    return Check("PAA chain", Status.OK, f"PAI issued by {pki.paa_cert}")


def check_clock(
    pai: x509.Certificate | None, now: datetime | None = None, *, margin: timedelta | None = None
) -> Check:
    """The clock is within the PAI's validity: DACs must not start before their issuer."""
    if pai is None:
        return Check("clock", Status.SKIPPED, "no PAI certificate to compare with")
    now = now or datetime.now(UTC)
    stamp = f"{now:%Y-%m-%d %H:%M:%S} UTC"
    fix = "set the clock (timedatectl set-ntp true) or check the PAI's validity"
    if now < pai.not_valid_before_utc:
        detail = f"{stamp} is before the PAI's notBefore {pai.not_valid_before_utc:%Y-%m-%d %H:%M}"
        return Check("clock", Status.FAIL, detail, fix)
    if now > pai.not_valid_after_utc:
        detail = f"{stamp} is after the PAI's notAfter {pai.not_valid_after_utc:%Y-%m-%d %H:%M}"
        return Check("clock", Status.FAIL, detail, fix)
    if margin is not None and pai.not_valid_after_utc - now <= margin:
        days = (pai.not_valid_after_utc - now).total_seconds() / 86400
        detail = (
            f"{stamp}: the PAI expires on {pai.not_valid_after_utc:%Y-%m-%d %H:%M} "
            f"({days:.1f} days left, within pki.pai_expiry_warning)"
        )
        roll = "roll over to a new PAI (docs/pki.md, PAI rollover)"
        return Check("clock", Status.WARN, detail, roll)
    return Check("clock", Status.OK, f"{stamp}, within the PAI's validity")


def check_line_cd(config: LineConfig) -> Check:
    """The work order's own CD when it names one (signature and VID/PID, as at work-order
    open), else `check_cd` of `[pki] cd_file`."""
    wo = config.work_order
    if wo is None or wo.cd_file is None:
        return check_cd(config.pki)
    from linehost.line.operations import with_work_order
    from linehost.line.workorder import checked_work_order

    try:
        found = checked_work_order(with_work_order(config))
    except LinehostError as exc:
        fix = "use the CSA's CD for the work order's product (signed by a pki.cd_signer_certs key)"
        return Check("CD", Status.FAIL, str(exc), fix)
    assert found is not None
    assert found.cd is not None
    return Check(
        "CD",
        Status.OK,
        f"work order {wo.id}: {wo.cd_file} verifies, sha256 {found.cd.sha256[:16]}…",
    )


def check_cd(pki: PkiSection) -> Check:
    """The Certification Declaration parses and certifies the configured VID and PID."""
    from linehost.pki.cd import load_cd

    if pki.cd_file is None:
        return Check("CD", Status.SKIPPED, "no pki.cd_file: devices get no CD: line")
    fix = "use the CD the CSA issued for this product (pki.cd_file)"
    try:
        vendor, products = load_cd(pki.cd_file).products()
    except LinehostError as exc:
        return Check("CD", Status.FAIL, str(exc), fix)
    vid, pid = int(pki.vid, 16), int(pki.pid, 16)
    if vendor != vid or pid not in products:
        listed = ", ".join(f"{p:04X}" for p in sorted(products))
        detail = f"CD certifies VID {vendor:04X} PID {listed}, the config says {pki.vid}/{pki.pid}"
        return Check("CD", Status.FAIL, detail, fix)
    return Check("CD", Status.OK, f"certifies VID {pki.vid} PID {pki.pid}")


def _subject_hex(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value).upper() if attrs else None


def _spki(key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
