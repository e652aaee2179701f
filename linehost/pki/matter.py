"""Matter certificate vocabulary: the DN attributes that carry VID and PID, and what the
profile checks read from a certificate (its key, key ids, VID/PID), including the raw DER where
cryptography refuses to parse an extension."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.pki import der
from linehost.vidpid import is_certificate_vid_pid

#: Matter DN attributes (Matter core spec 6.1.1): vendor id and product id.
OID_MATTER_VID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.1")
OID_MATTER_PID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.2")


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the relational checks need from one certificate, computed once (`read_facts`)."""

    public_key: ec.EllipticCurvePublicKey | None
    #: Why the key is unusable, as "<kind> key is not EC P-256 (...)" wants it (None: usable).
    key_problem: str | None
    subject: x509.Name
    skid: bytes | None
    akid: bytes | None
    vid: str | None
    pid: str | None
    vid_attrs: list[x509.NameAttribute[str | bytes]]
    pid_attrs: list[x509.NameAttribute[str | bytes]]

    @property
    def vid_ok(self) -> bool:
        """False when a VID attribute is there but malformed or repeated (reported already)."""
        return self.vid is not None or not self.vid_attrs

    @property
    def pid_ok(self) -> bool:
        """False when a PID attribute is there but malformed or repeated (reported already)."""
        return self.pid is not None or not self.pid_attrs


def read_facts(cert: x509.Certificate) -> CertFacts:
    """What the profile checks need of `cert`; what it cannot read is None (reported elsewhere)."""
    ec_key: ec.EllipticCurvePublicKey | None = None
    problem: str | None = None
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        problem = "unsupported key"
    else:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            problem = type(key).__name__.removesuffix("PublicKey")
        else:
            ec_key = key
            if not isinstance(key.curve, ec.SECP256R1):
                problem = key.curve.name
    skid = akid = None
    try:
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension):
        exts = x509.Extensions([])
    for ext in exts:
        if isinstance(ext.value, x509.SubjectKeyIdentifier):
            skid = ext.value.key_identifier
        elif isinstance(ext.value, x509.AuthorityKeyIdentifier):
            akid = ext.value.key_identifier
    subject = cert.subject  # parsed anew on every access
    vids = subject.get_attributes_for_oid(OID_MATTER_VID)
    pids = subject.get_attributes_for_oid(OID_MATTER_PID)
    return CertFacts(ec_key, problem, subject, skid, akid, hex4(vids), hex4(pids), vids, pids)


# Issuer facts are asked for on every issue; a handful of cached certificates covers every caller.
read_issuer_facts = lru_cache(maxsize=8)(read_facts)


def hex4(attrs: list[x509.NameAttribute[str | bytes]]) -> str | None:
    """The VID or PID of a DN, when it is there once and well formed (four upper-case hex)."""
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        return None
    return attrs[0].value if is_certificate_vid_pid(attrs[0].value) else None


def signature_verifies(cert: x509.Certificate, key: ec.EllipticCurvePublicKey | None) -> bool:
    """True when `key` (the issuer's, None when unusable) verifies `cert`'s ECDSA signature."""
    if key is None:
        return False
    try:
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


_OID_BASIC_CONSTRAINTS_DER = bytes.fromhex("0603551d13")


def raw_basic_constraints(cert: x509.Certificate) -> tuple[bool, bool] | None:
    """(cA, pathLen present) read straight from the DER, or None when absent or unreadable."""
    try:
        tbs_fields = der.children(cert.tbs_certificate_bytes)
        explicit = next((f for f in tbs_fields if f[0] == 0xA3), None)
        if explicit is None:
            return None
        for ext in der.children(der.children(explicit)[0]):
            parts = der.children(ext)
            if parts[0] != _OID_BASIC_CONSTRAINTS_DER:
                continue
            _, start, end = der.read_element(parts[-1])
            fields = der.children(parts[-1][start:end])
            ca = bool(fields) and fields[0][0] == 0x01 and fields[0][-1] != 0
            return ca, any(f[0] == der.TAG_INTEGER for f in fields)
    except (ValueError, IndexError):
        return None
    return None
