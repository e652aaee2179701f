"""EST (RFC 7030) on the wire, shared by the gateway and the line's EST issuer: paths, headers,
refusal codes and the base64 PKCS#10 / PKCS#7 certs-only bodies. No I/O.

The device's UID and the work order travel in HTTP headers (`X-Linehost-UID`,
`X-Linehost-Work-Order`), not in the CSR: the CSR is made and signed by the chip, so the line
host cannot add an attribute to it without breaking its proof of possession, and a subject
the firmware fills in is the device's word, not the line's (linehost ignores CSR subjects).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

WELL_KNOWN = "/.well-known/est"
CACERTS_PATH = f"{WELL_KNOWN}/cacerts"
SIMPLEENROLL_PATH = f"{WELL_KNOWN}/simpleenroll"
SIMPLEREENROLL_PATH = f"{WELL_KNOWN}/simplereenroll"

PKCS10_TYPE = "application/pkcs10"
CERTS_ONLY_TYPE = "application/pkcs7-mime; smime-type=certs-only"
CERTS_ONLY_MIME = "application/pkcs7-mime"

UID_HEADER = "X-Linehost-UID"
WORK_ORDER_HEADER = "X-Linehost-Work-Order"
#: A refusal's machine-readable reason (a Refusal value); the body says it for a person.
REASON_HEADER = "X-Linehost-Reason"
#: With quota_exhausted: whose quota, `client:NAME` or `work_order:NAME`.
QUOTA_HEADER = "X-Linehost-Quota"

#: Largest enrollment body accepted: a 4 KiB CSR in base64 with line breaks, and room to spare.
MAX_BODY_BYTES = 8192


class Refusal(StrEnum):
    """Why the gateway said no: sent in REASON_HEADER with the HTTP status beside it."""

    NO_CLIENT_CERT = "no_client_cert"  # 401
    CLIENT_UNKNOWN = "client_unknown"  # 403: the certificate's CN is not a configured client
    CLIENT_REVOKED = "client_revoked"  # 403
    PRODUCT_NOT_ALLOWED = "product_not_allowed"  # 403: not this client's VID/PID
    WORK_ORDER_NOT_ALLOWED = "work_order_not_allowed"  # 403
    BAD_REQUEST = "bad_request"  # 400: missing/invalid UID, body not base64, too large
    CSR_REJECTED = "csr_rejected"  # 400: the CSR fails a check
    UID_HAS_DAC = "uid_has_dac"  # 409: another key (or client) already has this UID's DAC
    DUPLICATE_KEY = "duplicate_key"  # 409: this key already has a DAC for another UID
    QUOTA_EXHAUSTED = "quota_exhausted"  # 403: the client's or work order's quota is used up
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    ISSUER_UNAVAILABLE = "issuer_unavailable"  # 503 with Retry-After: signer/database away
    REENROLL_NOT_OFFERED = "reenroll_not_offered"  # 501: DACs are never renewed


#: Refusals that say "ask again later" rather than "no".
TEMPORARY_REFUSALS = frozenset({Refusal.RATE_LIMITED, Refusal.ISSUER_UNAVAILABLE})


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A base64 (76-column lines) DER PKCS#7 certs-only body holding `certs`."""
    return base64.encodebytes(pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER))


def decode_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates of a base64 PKCS#7 certs-only body; raise ValueError when malformed."""
    return pkcs7.load_der_pkcs7_certificates(decode_base64(body))


def decode_base64(body: bytes) -> bytes:
    """Base64 with or without line breaks; raise ValueError when it is not base64."""
    compact = b"".join(body.split())
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise ValueError("body is not base64") from None


def encode_pkcs10(csr_der: bytes) -> bytes:
    """The base64 (76-column lines) body of a simpleenroll request."""
    return base64.encodebytes(csr_der)


def csr_pem(csr_der: bytes) -> str:
    """`csr_der` as a PEM CERTIFICATE REQUEST block (what linehost.pki.csr checks)."""
    body = base64.b64encode(csr_der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN CERTIFICATE REQUEST-----", *lines, "-----END CERTIFICATE REQUEST-----", ""]
    )
