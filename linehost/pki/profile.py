"""The Matter device attestation certificate profile: DAC, PAI and PAA checks.

The rules follow connectedhomeip's VerifyAttestationCertificateFormat and DefaultDACVerifier.
Each check returns every violation it finds; an empty list means the certificate conforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import SignatureAlgorithmOID

from linehost.errors import PkiError
from linehost.pki.matter import (
    CertFacts,
    hex4,
    raw_basic_constraints,
    read_facts,
    read_issuer_facts,
    signature_verifies,
)

#: Largest DER encoding of a DAC or PAI the Matter SDK accepts (kMaxDERCertLength).
MAX_CERT_DER_BYTES = 600
#: Length of subject and authority key identifiers (kSubjectKeyIdentifierLength).
KEY_ID_BYTES = 20
MAX_SERIAL_OCTETS = 20

Kind = Literal["DAC", "PAI", "PAA"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken profile rule: a short rule id and a one-line message naming the rule."""

    rule: str
    message: str

    def __str__(self) -> str:
        return self.message


def check_dac(
    dac: x509.Certificate, pai: x509.Certificate, *, verify_signature: bool = True
) -> list[Violation]:
    """Every profile rule `dac` breaks, on its own and as a certificate issued by `pai`.

    `verify_signature=False` skips only the ECDSA verification under the PAI key: for a DAC
    this process has just signed in software with a key proven at start-up to be the PAI's.
    """
    dac_facts = read_facts(dac)
    out = _check_format(dac, "DAC", dac_facts)
    pai_facts = read_issuer_facts(pai)
    vid, pid = dac_facts.vid, dac_facts.pid
    if vid is None and dac_facts.vid_ok:
        out.append(Violation("vid", "DAC subject has no Matter VID"))
    if pid is None and dac_facts.pid_ok:
        out.append(Violation("pid", "DAC subject has no Matter PID"))
    if vid is not None and pai_facts.vid is not None and vid != pai_facts.vid:
        out.append(Violation("vid_match", f"DAC VID {vid} differs from PAI VID {pai_facts.vid}"))
    if pid is not None and pai_facts.pid is not None and pid != pai_facts.pid:
        out.append(Violation("pid_match", f"DAC PID {pid} differs from PAI PID {pai_facts.pid}"))
    out.extend(
        _check_issued_by(
            dac, "DAC", dac_facts, pai, "PAI", pai_facts, verify_signature=verify_signature
        )
    )
    return out


def check_dac_der(data: bytes, pai: x509.Certificate) -> list[Violation]:
    """Like check_dac for a DER blob from storage, reporting a parse failure as a violation."""
    try:
        dac = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        return [Violation("parse", f"DAC is not a DER X.509 certificate ({exc})")]
    return check_dac(dac, pai)


def check_pai(
    pai: x509.Certificate, paa: x509.Certificate | None, now: datetime | None = None
) -> list[Violation]:
    """Every profile rule `pai` breaks; with `paa`, also as issued by it; with `now`, expiry."""
    facts = read_facts(pai)
    out = _check_format(pai, "PAI", facts)
    if facts.vid is None and facts.vid_ok:
        out.append(Violation("vid", "PAI subject has no Matter VID"))
    if paa is not None:
        paa_facts = read_issuer_facts(paa)
        if paa_facts.vid is not None and facts.vid is not None and facts.vid != paa_facts.vid:
            out.append(
                Violation("vid_match", f"PAI VID {facts.vid} differs from PAA VID {paa_facts.vid}")
            )
        out.extend(_check_issued_by(pai, "PAI", facts, paa, "PAA", paa_facts))
    if now is not None:
        out.extend(_check_current(pai, "PAI", now))
    return out


def check_paa(paa: x509.Certificate, now: datetime | None = None) -> list[Violation]:
    """Every profile rule the self-signed root `paa` breaks; with `now`, expiry."""
    facts = read_facts(paa)
    out = _check_format(paa, "PAA", facts)
    if facts.pid is not None:
        out.append(Violation("pid", "PAA subject must not have a Matter PID"))
    if paa.issuer != paa.subject:
        out.append(Violation("issuer_name", "PAA is not self-signed (issuer differs from subject)"))
    elif not signature_verifies(paa, facts.public_key):
        out.append(Violation("signature", "PAA self-signature does not verify"))
    if now is not None:
        out.extend(_check_current(paa, "PAA", now))
    return out


def check_chain_or_raise(
    pai: x509.Certificate,
    paa: x509.Certificate | None = None,
    now: datetime | None = None,
    *,
    pai_name: str = "PAI",
    paa_name: str = "PAA",
) -> None:
    """Raise PkiError naming the file and the first broken rule when the PAI (or PAA) fails."""
    if paa is not None:
        _raise_if(check_paa(paa, now), paa_name)
    _raise_if(check_pai(pai, paa, now), pai_name)


def describe(violations: Sequence[Violation]) -> str:
    """One line for a list of violations: the first message and how many more there are."""
    if not violations:
        return "conforms to the Matter attestation profile"
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return f"{violations[0].message}{more}"


def _check_format(cert: x509.Certificate, kind: Kind, facts: CertFacts) -> list[Violation]:
    out: list[Violation] = []
    if cert.version != x509.Version.v3:
        out.append(Violation("version", f"{kind} is not X.509 v3 ({cert.version.name})"))
    sig_oid = cert.signature_algorithm_oid
    if sig_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        name = sig_oid._name if sig_oid._name != "Unknown OID" else sig_oid.dotted_string
        out.append(
            Violation(
                "signature_algorithm",
                f"{kind} signature algorithm is not ecdsa-with-SHA256 ({name})",
            )
        )
    if facts.key_problem is not None:
        out.append(Violation("public_key", f"{kind} key is not EC P-256 ({facts.key_problem})"))
    if kind != "PAA":
        size = len(cert.public_bytes(serialization.Encoding.DER))
        if size > MAX_CERT_DER_BYTES:
            out.append(
                Violation("size", f"{kind} DER size {size} bytes exceeds {MAX_CERT_DER_BYTES}")
            )
    out.extend(_check_serial(cert, kind))
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if nb > na:
        out.append(Violation("validity", f"{kind} notBefore {nb:%Y-%m-%d} is after notAfter"))
    try:
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        out.append(_extensions_failure(cert, kind, exc))
    else:
        out.extend(_check_basic_constraints(exts, kind))
        out.extend(_check_key_usage(exts, kind))
        out.extend(_check_key_ids(exts, kind))
    out.extend(_check_vid_pid(facts, kind))
    return out


def _check_serial(cert: x509.Certificate, kind: Kind) -> list[Violation]:
    serial = cert.serial_number
    if serial <= 0:
        return [Violation("serial", f"{kind} serial number is not positive ({serial})")]
    octets = serial.bit_length() // 8 + 1
    if octets > MAX_SERIAL_OCTETS:
        return [
            Violation("serial", f"{kind} serial number is {octets} octets (> {MAX_SERIAL_OCTETS})")
        ]
    return []


def _check_basic_constraints(exts: x509.Extensions, kind: Kind) -> list[Violation]:
    try:
        ext = exts.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return [Violation("basic_constraints", f"{kind} basicConstraints is missing")]
    out: list[Violation] = []
    if not ext.critical:
        out.append(Violation("basic_constraints", f"{kind} basicConstraints is not critical"))
    ca, path_len = ext.value.ca, ext.value.path_length
    if kind == "DAC":
        if ca:
            out.append(Violation("basic_constraints", "DAC basicConstraints cA must be false"))
        elif path_len is not None:
            out.append(Violation("basic_constraints", "DAC basicConstraints must have no pathLen"))
    elif not ca:
        out.append(Violation("basic_constraints", f"{kind} basicConstraints cA must be true"))
    elif kind == "PAI" and path_len != 0:
        out.append(
            Violation(
                "basic_constraints", f"PAI basicConstraints pathLen must be 0 (is {_opt(path_len)})"
            )
        )
    elif kind == "PAA" and path_len not in (None, 1):
        out.append(
            Violation(
                "basic_constraints",
                f"PAA basicConstraints pathLen must be absent or 1 (is {path_len})",
            )
        )
    return out


_KU_NAMES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_KU_DAC = frozenset({"digital_signature"})
_KU_CA_REQUIRED = frozenset({"key_cert_sign", "crl_sign"})
_KU_CA_ALLOWED = _KU_CA_REQUIRED | _KU_DAC


def _key_usages(ku: x509.KeyUsage) -> frozenset[str]:
    names = {name for name in _KU_NAMES if getattr(ku, name)}
    # encipher_only / decipher_only raise unless keyAgreement is set.
    if ku.key_agreement:
        names |= {n for n in ("encipher_only", "decipher_only") if getattr(ku, n)}
    return frozenset(names)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return "cRLSign" if snake == "crl_sign" else head + "".join(p.capitalize() for p in rest)


def _check_key_usage(exts: x509.Extensions, kind: Kind) -> list[Violation]:
    try:
        ext = exts.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return [Violation("key_usage", f"{kind} keyUsage is missing")]
    out: list[Violation] = []
    if not ext.critical:
        out.append(Violation("key_usage", f"{kind} keyUsage is not critical"))
    usages = _key_usages(ext.value)
    if kind == "DAC":
        if usages != _KU_DAC:
            out.append(
                Violation(
                    "key_usage",
                    f"DAC keyUsage must be digitalSignature only (is {_shown(usages)})",
                )
            )
    elif not usages >= _KU_CA_REQUIRED or not usages <= _KU_CA_ALLOWED:
        out.append(
            Violation(
                "key_usage",
                f"{kind} keyUsage must be keyCertSign + cRLSign [+ digitalSignature] "
                f"(is {_shown(usages)})",
            )
        )
    return out


def _shown(usages: frozenset[str]) -> str:
    """The key usages for a message (only built when one is wrong)."""
    return ", ".join(_camel(u) for u in sorted(usages)) or "none"


def _opt(value: int | None) -> str:
    return "absent" if value is None else str(value)


def _check_key_ids(exts: x509.Extensions, kind: Kind) -> list[Violation]:
    out: list[Violation] = []
    try:
        skid = exts.get_extension_for_class(x509.SubjectKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        out.append(Violation("subject_key_id", f"{kind} subjectKeyIdentifier is missing"))
    else:
        if len(skid) != KEY_ID_BYTES:
            out.append(
                Violation(
                    "subject_key_id",
                    f"{kind} subjectKeyIdentifier is {len(skid)} bytes (not {KEY_ID_BYTES})",
                )
            )
    try:
        akid = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        akid = None
        if kind != "PAA":
            out.append(Violation("authority_key_id", f"{kind} authorityKeyIdentifier is missing"))
    else:
        if akid is None and kind != "PAA":
            out.append(
                Violation("authority_key_id", f"{kind} authorityKeyIdentifier has no keyIdentifier")
            )
        elif akid is not None and len(akid) != KEY_ID_BYTES:
            out.append(
                Violation(
                    "authority_key_id",
                    f"{kind} authorityKeyIdentifier is {len(akid)} bytes (not {KEY_ID_BYTES})",
                )
            )
    return out


def _check_vid_pid(facts: CertFacts, kind: Kind) -> list[Violation]:
    out: list[Violation] = []
    for rule, label, attrs in (("vid", "VID", facts.vid_attrs), ("pid", "PID", facts.pid_attrs)):
        if len(attrs) > 1:
            out.append(Violation(rule, f"{kind} subject has {len(attrs)} Matter {label}s (max 1)"))
        elif attrs and hex4(attrs) is None:
            value = attrs[0].value
            out.append(
                Violation(rule, f"{kind} Matter {label} {value!r} is not 4 upper-case hex digits")
            )
    return out


def _check_issued_by(
    cert: x509.Certificate,
    kind: Kind,
    facts: CertFacts,
    issuer: x509.Certificate,
    issuer_kind: Kind,
    issuer_facts: CertFacts,
    *,
    verify_signature: bool = True,
) -> list[Violation]:
    out: list[Violation] = []
    if cert.issuer != issuer_facts.subject:  # cached with the issuer's facts
        out.append(
            Violation("issuer_name", f"{kind} issuer name differs from the {issuer_kind} subject")
        )
    if (
        facts.akid is not None
        and len(facts.akid) == KEY_ID_BYTES
        and issuer_facts.skid is not None
        and facts.akid != issuer_facts.skid
    ):
        out.append(
            Violation(
                "akid_match",
                f"{kind} authorityKeyIdentifier differs from the {issuer_kind} "
                "subjectKeyIdentifier",
            )
        )
    nb = cert.not_valid_before_utc
    inb, ina = issuer.not_valid_before_utc, issuer.not_valid_after_utc
    if not inb <= nb <= ina:
        out.append(
            Violation(
                "validity",
                f"{kind} notBefore {nb:%Y-%m-%d %H:%M:%S} is outside the {issuer_kind} validity",
            )
        )
    if verify_signature and not signature_verifies(cert, issuer_facts.public_key):
        out.append(
            Violation("signature", f"{kind} signature does not verify with the {issuer_kind} key")
        )
    return out


def _check_current(cert: x509.Certificate, kind: Kind, now: datetime) -> list[Violation]:
    if now > cert.not_valid_after_utc:
        return [
            Violation("expired", f"{kind} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}")
        ]
    if now < cert.not_valid_before_utc:
        return [
            Violation(
                "expired",
                f"{kind} is not yet valid "
                f"(notBefore {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S})",
            )
        ]
    return []


def _extensions_failure(cert: x509.Certificate, kind: Kind, exc: Exception) -> Violation:
    # cryptography refuses to build BasicConstraints(cA=False, pathLen=n) when parsing; read the
    # raw extension so the violation names the rule instead of a generic parse error.
    if isinstance(exc, ValueError) and raw_basic_constraints(cert) == (False, True):
        return Violation("basic_constraints", f"{kind} basicConstraints must have no pathLen")
    if isinstance(exc, x509.DuplicateExtension):
        return Violation("extensions", f"{kind} has a repeated extension ({exc.oid.dotted_string})")
    return Violation("extensions", f"{kind} extensions cannot be parsed ({exc})")


def _raise_if(violations: list[Violation], name: str) -> None:
    if violations:
        raise PkiError(f"{name}: fails the Matter attestation profile: {describe(violations)}")
