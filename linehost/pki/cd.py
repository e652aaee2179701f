"""The Certification Declaration: a DER CMS SignedData, checked at start-up, sent as `CD:`.

The check walks the DER (RFC 5652 ContentInfo -> SignedData) far enough to know the file is a
signed CMS message with content and a signer. A work order's own CD is also checked against the
configured CD signing certificates (`check_cd_signature`) and for its VID/PID (`check_cd_for`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import PkiError
from linehost.pki import der

#: Jig protocol v1 bounds a line to 1024 bytes: `CD:` + base64 must fit in one line.
MAX_LINE_BYTES: Final = 1024
MAX_CD_BYTES: Final = (MAX_LINE_BYTES - len("CD:")) // 4 * 3

OID_SIGNED_DATA_DER: Final = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2
OID_DATA_DER: Final = bytes.fromhex("06092a864886f70d010701")  # 1.2.840.113549.1.7.1
_SHA256_ALGID: Final = bytes.fromhex("300b0609608648016503040201")
_ECDSA_SHA256_ALGID: Final = bytes.fromhex("300a06082a8648ce3d040302")
_TAG_SET: Final = 0x31
_TAG_CONTEXT_0: Final = 0xA0  # [0] EXPLICIT, constructed
_TAG_SID_SKID: Final = 0x80  # SignerIdentifier subjectKeyIdentifier [0] IMPLICIT


@dataclass(frozen=True, slots=True)
class CertificationDeclaration:
    """A CD that parsed as CMS SignedData."""

    der: bytes
    content: bytes  # the encapsulated certification elements (Matter TLV)
    signers: int
    #: (subjectKeyIdentifier or None, signature) of each SignerInfo without signed attributes,
    #: the form the Matter SDK makes and verifies (CMS_Sign / CMS_Verify).
    signatures: tuple[tuple[bytes | None, bytes], ...] = ()

    @property
    def b64(self) -> str:
        """The value of the `CD:` line."""
        return base64.b64encode(self.der).decode("ascii")

    @property
    def sha256(self) -> str:
        """Lower-case hex SHA-256 of the DER, as recorded with each assignment."""
        return hashlib.sha256(self.der).hexdigest()

    def products(self) -> tuple[int, frozenset[int]]:
        """(vendor_id, product_id_array) of the certification elements; raise PkiError."""
        return certified_products(self.content)


def load_cd(path: Path) -> CertificationDeclaration:
    """Read and check the CD at `path`; raise PkiError naming the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"CD file {path}: unreadable ({exc.strerror or exc})") from None
    try:
        return parse_cd(data)
    except PkiError as exc:
        raise PkiError(f"CD file {path}: {exc}") from None


def parse_cd(data: bytes) -> CertificationDeclaration:
    """Check that `data` is a DER CMS SignedData small enough for one `CD:` line."""
    if len(data) > MAX_CD_BYTES:
        raise PkiError(
            f"{len(data)} bytes is too large for one CD: line (at most {MAX_CD_BYTES} bytes)"
        )
    if data[:11].startswith(b"-----BEGIN") or data[:1] != b"\x30":
        raise PkiError("not DER (a CD is a DER CMS SignedData, not PEM or text)")
    try:
        content_info = der.children(data)
        if len(content_info) != 2 or content_info[0] != OID_SIGNED_DATA_DER:
            raise PkiError("not CMS SignedData (contentType is not 1.2.840.113549.1.7.2)")
        explicit = content_info[1]
        if explicit[0] != _TAG_CONTEXT_0:
            raise PkiError("CMS content is not [0] EXPLICIT")
        (signed_data,) = der.children(explicit)
        fields = der.children(signed_data)
        if len(fields) < 4 or fields[0][0] != der.TAG_INTEGER or fields[1][0] != _TAG_SET:
            raise PkiError("SignedData lacks version / digestAlgorithms")
        encap = der.children(fields[2])
        if not encap or encap[0][:1] != bytes([der.TAG_OID]):
            raise PkiError("SignedData encapContentInfo has no content type")
        if len(encap) < 2 or encap[1][0] != _TAG_CONTEXT_0:
            raise PkiError("SignedData carries no content (detached CD)")
        (octets,) = der.children(encap[1])
        tag, start, end = der.read_element(octets)
        if tag != der.TAG_OCTET_STRING or end == start:
            raise PkiError("SignedData content is not a non-empty OCTET STRING")
        content = octets[start:end]
        signer_infos = fields[-1]
        if signer_infos[0] != _TAG_SET:
            raise PkiError("SignedData has no signerInfos")
        signers = der.children(signer_infos)
        if not signers:
            raise PkiError("SignedData has no signer")
        signatures: list[tuple[bytes | None, bytes]] = []
        for signer in signers:
            parts = der.children(signer)
            if len(parts) < 5 or parts[-1][0] != der.TAG_OCTET_STRING:
                raise PkiError("a SignerInfo has no signature")
            if len(parts) == 5:  # version, sid, digestAlgorithm, signatureAlgorithm, signature
                sid_tag, sid_start, sid_end = der.read_element(parts[1])
                skid = parts[1][sid_start:sid_end] if sid_tag == _TAG_SID_SKID else None
                _, sig_start, sig_end = der.read_element(parts[4])
                signatures.append((skid, parts[4][sig_start:sig_end]))
    except (ValueError, IndexError):
        raise PkiError("not a well-formed DER CMS message") from None
    return CertificationDeclaration(data, content, len(signers), tuple(signatures))


def check_cd_signature(cd: CertificationDeclaration, signers: Sequence[x509.Certificate]) -> None:
    """Raise PkiError unless a SignerInfo of `cd` verifies (ECDSA P-256 with SHA-256 over the
    certification elements) with the key of one of `signers`, matched by key identifier."""
    if not cd.signatures:
        raise PkiError(
            "no SignerInfo in the Matter form (subjectKeyIdentifier, no signed attributes)"
        )
    by_skid = {_skid(cert): cert for cert in signers}
    for skid, signature in cd.signatures:
        cert = by_skid.get(skid) if skid is not None else None
        if cert is None:
            continue
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            continue
        try:
            key.verify(signature, cd.content, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PkiError(
                f"signature does not verify with CD signer {_skid_hex(skid)} (bad signature)"
            ) from None
        return
    named = ", ".join(_skid_hex(s) for s, _ in cd.signatures if s is not None) or "none"
    raise PkiError(f"signed by an unknown CD signer (key id {named}; see pki.cd_signer_certs)")


def check_cd_for(cd: CertificationDeclaration, vid: str, pid: str) -> None:
    """Raise PkiError unless `cd` certifies `vid` and `pid` (4 hex digits each)."""
    vendor, products = cd.products()
    if vendor != int(vid, 16) or int(pid, 16) not in products:
        listed = ", ".join(f"{p:04X}" for p in sorted(products))
        raise PkiError(f"certifies VID {vendor:04X} PID {listed}, not {vid}/{pid}")


def _skid(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _skid_hex(skid: bytes | None) -> str:
    return "?" if skid is None else skid.hex().upper()


def sign_test_cd(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, vid: str, pid: str
) -> bytes:
    """A test CD for `vid`/`pid` in the CMS form the Matter SDK makes (CMS_Sign), signed by a
    development CD key: never a real CSA declaration."""
    content = _test_certification_elements(int(vid, 16), int(pid, 16))
    signature = key.sign(content, ec.ECDSA(hashes.SHA256()))
    skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    signer_info = der.sequence(
        der.integer(3),
        der.tlv(_TAG_SID_SKID, skid),
        _SHA256_ALGID,
        _ECDSA_SHA256_ALGID,
        der.tlv(der.TAG_OCTET_STRING, signature),
    )
    signed_data = der.sequence(
        der.integer(3),
        der.tlv(_TAG_SET, _SHA256_ALGID),
        der.sequence(
            OID_DATA_DER,
            der.tlv(_TAG_CONTEXT_0, der.tlv(der.TAG_OCTET_STRING, content)),
        ),
        der.tlv(_TAG_SET, signer_info),
    )
    return der.sequence(OID_SIGNED_DATA_DER, der.tlv(_TAG_CONTEXT_0, signed_data))


def _test_certification_elements(vid: int, pid: int) -> bytes:
    """Matter TLV certification elements (spec 6.3.1), certification_type 0 (development)."""
    cert_id = b"ZIG20142ZB330003-24"
    return b"".join(
        (
            b"\x15",  # anonymous structure
            b"\x24\x00\x01",  # format_version = 1
            b"\x25\x01" + vid.to_bytes(2, "little"),  # vendor_id
            b"\x36\x02\x05" + pid.to_bytes(2, "little") + b"\x18",  # product_id_array
            b"\x25\x03\x16\x00",  # device_type_id = 0x0016
            b"\x2c\x04" + bytes([len(cert_id)]) + cert_id,  # certificate_id
            b"\x24\x05\x00",  # security_level
            b"\x25\x06\x00\x00",  # security_information
            b"\x25\x07\x94\x26",  # version_number
            b"\x24\x08\x00",  # certification_type = development
            b"\x18",  # end of structure
        )
    )


_TLV_TAG_BYTES: Final = (0, 1, 2, 4, 2, 4, 6, 8)  # by tag control (the control byte's top 3 bits)
_TLV_END: Final = 0x18
_TAG_VENDOR_ID: Final = 1  # certification elements (Matter spec 6.3.1), context tags
_TAG_PRODUCT_IDS: Final = 2


def certified_products(content: bytes) -> tuple[int, frozenset[int]]:
    """The vendor_id and product_id_array of Matter TLV certification elements; raise PkiError."""
    vendor: int | None = None
    products: set[int] = set()
    path: list[int | None] = []  # the context tag of every open container
    try:
        for tag, value in _tlv_elements(content, path):
            if len(path) == 1 and tag == _TAG_VENDOR_ID and isinstance(value, int):
                vendor = value
            elif path == [None, _TAG_PRODUCT_IDS] and isinstance(value, int):
                products.add(value)
    except (IndexError, ValueError) as exc:
        raise PkiError(f"certification elements are not well-formed Matter TLV ({exc})") from None
    if vendor is None or not products:
        raise PkiError("certification elements lack vendor_id or product_id_array")
    return vendor, frozenset(products)


def _tlv_elements(data: bytes, path: list[int | None]) -> Iterator[tuple[int | None, object]]:
    """(context tag, value) of each scalar in `data`; `path` tracks the open containers."""
    pos = 0
    while pos < len(data):
        control = data[pos]
        kind, tag_control = control & 0x1F, control >> 5
        pos += 1
        tag = data[pos] if tag_control == 1 else None
        pos += _TLV_TAG_BYTES[tag_control]
        if kind == _TLV_END:
            path.pop()
        elif kind in (0x15, 0x16, 0x17):
            path.append(tag)
        elif kind <= 0x07:
            size = 1 << (kind & 0x03)
            if pos + size > len(data):
                raise ValueError("an integer runs past the end")
            yield tag, int.from_bytes(data[pos : pos + size], "little", signed=kind <= 0x03)
            pos += size
        elif kind in (0x08, 0x09, 0x14):
            yield tag, None
        elif kind in (0x0A, 0x0B):
            pos += 4 if kind == 0x0A else 8
        elif 0x0C <= kind <= 0x13:
            width = 1 << (kind & 0x03)
            length = int.from_bytes(data[pos : pos + width], "little")
            pos += width + length
            if pos > len(data):
                raise ValueError("a string runs past the end")
        else:
            raise ValueError(f"unknown element type 0x{kind:02x}")
    if path:
        raise ValueError("a container is not closed")
