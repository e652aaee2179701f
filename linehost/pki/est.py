"""EstIssuer: DACs from the site signing gateway over EST (RFC 7030) with a TLS client
certificate; every DAC is checked here before the line records it.

Contract with the line: `issue` raises IssuerUnavailable when the gateway cannot answer now
(unreachable, timed out, rate limit, signer or database away); the device is not consumed,
the jig shows `waiting_for_issuer` and asks again after a back-off of at least
`retry_after`. QuotaExhausted is a refusal for good (the client's or work order's quota is
used up); any other IssuerError is this device's refusal (its detail is the attempt's).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from linehost.errors import IssuerError, IssuerUnavailable, PkiError, QuotaExhausted
from linehost.pki.est_wire import (
    CACERTS_PATH,
    PKCS10_TYPE,
    QUOTA_HEADER,
    REASON_HEADER,
    SIMPLEENROLL_PATH,
    TEMPORARY_REFUSALS,
    UID_HEADER,
    WORK_ORDER_HEADER,
    Refusal,
    decode_certs_only,
    encode_pkcs10,
)
from linehost.pki.local import load_certificate
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.profile import check_dac, describe
from linehost.records import CsrInfo, IssuedDac

if TYPE_CHECKING:
    from linehost.config import PkiSection

_log = structlog.get_logger("linehost.pki.est")

#: HTTP statuses that mean "later" whatever the reason header says (proxies send them too).
TEMPORARY_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Longest refusal text kept for a detail.
MAX_DETAIL: Final = 300


class EstIssuer:
    """Asks the gateway for each DAC; at most `concurrency` requests in flight."""

    def __init__(
        self,
        url: str,
        tls: ssl.SSLContext,
        pai: x509.Certificate,
        vid: str,
        pid: str,
        *,
        work_order: str | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        concurrency: int = 16,
    ) -> None:
        """Use `tls` (client certificate + gateway CA) to reach `url`; `pai` is the expected PAI.
        Must be made inside the running event loop."""
        self._url = url.rstrip("/")
        self._pai = pai
        self._vid = vid
        self._pid = pid
        self._work_order = work_order
        self._pai_der = pai.public_bytes(serialization.Encoding.DER)
        self._pai_pem = pai.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._pai_sha256 = hashlib.sha256(self._pai_der).hexdigest()
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        # Connections are kept alive (aiohttp's default): a TLS handshake per connection, not
        # per DAC, and never more connections than requests in flight.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=concurrency),
            timeout=self._timeout,
        )
        self._pai_confirmed = False
        self._confirm_lock = asyncio.Lock()

    @property
    def pai_pem(self) -> str:
        """The PAI certificate delivered after every DAC."""
        return self._pai_pem

    @property
    def pai_sha256(self) -> str:
        """Lower-case hex sha256 of the PAI DER."""
        return self._pai_sha256

    @property
    def vid(self) -> str:
        """The vendor id every DAC carries."""
        return self._vid

    @property
    def pid(self) -> str:
        """The product id every DAC carries."""
        return self._pid

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        """Return the gateway's DAC for `uid` bound to `csr`'s key, checked; raise
        IssuerUnavailable (later), QuotaExhausted or IssuerError (no)."""
        async with self._slots:
            await self.confirm_pai()
            headers = {
                "Content-Type": PKCS10_TYPE,
                "Content-Transfer-Encoding": "base64",
                UID_HEADER: uid,
            }
            if self._work_order is not None:
                headers[WORK_ORDER_HEADER] = self._work_order
            status, reply_headers, body = await self._request(
                "POST", SIMPLEENROLL_PATH, data=encode_pkcs10(csr.csr_der), headers=headers
            )
        if status != 200:
            raise _refusal(status, reply_headers, body)
        return self._checked(uid, csr, body)

    async def confirm_pai(self) -> None:
        """Check once that the gateway's `cacerts` holds our PAI; raise IssuerUnavailable when
        it cannot be asked, IssuerError when it serves another PAI."""
        if self._pai_confirmed:
            return
        async with self._confirm_lock:
            if self._pai_confirmed:
                return
            status, headers, body = await self._request("GET", CACERTS_PATH)
            if status != 200:
                raise _refusal(status, headers, body)
            try:
                certs = decode_certs_only(body)
            except ValueError as exc:
                raise IssuerError(f"gateway {self._url}: cacerts unreadable ({exc})") from None
            ders = {c.public_bytes(serialization.Encoding.DER) for c in certs}
            if self._pai_der not in ders:
                raise IssuerError(
                    f"gateway {self._url} signs under another PAI than pki.pai_cert "
                    f"(sha256 {self._pai_sha256[:16]}...)"
                )
            self._pai_confirmed = True
            _log.info("est_pai_confirmed", url=self._url, pai_sha256=self._pai_sha256[:16])

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def _request(
        self, method: str, path: str, **kwargs: object
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with self._session.request(method, self._url + path, **kwargs) as resp:  # type: ignore[arg-type]
                return resp.status, CIMultiDict(resp.headers), await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            raise IssuerUnavailable(f"gateway {self._url} unreachable: {text}") from None

    def _checked(self, uid: str, csr: CsrInfo, body: bytes) -> IssuedDac:
        where = f"gateway {self._url}"
        try:
            certs = decode_certs_only(body)
        except ValueError as exc:
            raise IssuerError(f"{where}: answer is not a PKCS#7 certs-only ({exc})") from None
        mine = [c for c in certs if _spki(c) == csr.public_key_der]
        if len(mine) != 1:
            raise IssuerError(f"{where}: answer holds no DAC for the CSR's key")
        dac = mine[0]
        violations = check_dac(dac, self._pai)
        if violations:
            raise IssuerError(f"{where}: DAC fails the Matter profile: {describe(violations)}")
        vid = _attr(dac, OID_MATTER_VID)
        pid = _attr(dac, OID_MATTER_PID)
        if (vid, pid) != (self._vid, self._pid):
            raise IssuerError(
                f"{where}: DAC is for VID {vid} PID {pid}, not {self._vid} {self._pid}"
            )
        der = dac.public_bytes(serialization.Encoding.DER)
        _log.debug("est_dac_received", uid=uid, dac_serial=f"{dac.serial_number:X}")
        return IssuedDac(
            pem=dac.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            der=der,
            serial_hex=f"{dac.serial_number:X}",
            sha256=hashlib.sha256(der).hexdigest(),
            public_key_sha256=csr.public_key_sha256,
            pai_sha256=self._pai_sha256,
            vid=self._vid,
            pid=self._pid,
        )


async def open_est_issuer(pki: PkiSection, *, work_order: str | None = None) -> EstIssuer:
    """The EstIssuer `[pki]` / `[pki.est]` describe; raise PkiError for unusable files or a
    gateway that serves another PAI. An unreachable gateway is not an error here: the line
    starts and its jigs wait for the issuer."""
    est = pki.est
    assert est is not None  # the config insists for issuer = "est"
    pai = load_certificate(pki.pai_cert, "PAI")
    tls = client_tls_context(est.server_ca, est.client_cert, est.client_key)
    issuer = EstIssuer(
        est.url,
        tls,
        pai,
        pki.vid,
        pki.pid,
        work_order=work_order,
        connect_timeout=est.connect_timeout,
        timeout=est.timeout,
        concurrency=est.concurrency,
    )
    try:
        await issuer.confirm_pai()
    except IssuerUnavailable as exc:
        _log.warning("est_gateway_unreachable", url=est.url, detail=str(exc))
    except IssuerError as exc:
        await issuer.aclose()
        raise PkiError(str(exc)) from None
    return issuer


def client_tls_context(server_ca: Path, client_cert: Path, client_key: Path) -> ssl.SSLContext:
    """TLS 1.2+ that trusts only `server_ca` and shows the line's client certificate."""
    try:
        context = ssl.create_default_context(cafile=server_ca)
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"pki.est.server_ca {server_ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(
            f"pki.est.client_cert {client_cert} / client_key {client_key}: {exc}"
        ) from None
    return context


def _refusal(status: int, headers: Mapping[str, str], body: bytes) -> IssuerError:
    reason = headers.get(REASON_HEADER, "")
    detail = body.decode("utf-8", "replace").strip().splitlines()
    text = (detail[0] if detail else f"HTTP {status}")[:MAX_DETAIL]
    message = f"gateway refused ({status} {reason or 'no reason'}): {text}"
    if reason in TEMPORARY_REFUSALS or (not reason and status in TEMPORARY_STATUSES):
        return IssuerUnavailable(message, retry_after=_retry_after(headers))
    if reason == Refusal.QUOTA_EXHAUSTED:
        scope, _, name = headers.get(QUOTA_HEADER, "client:").partition(":")
        return QuotaExhausted(message, scope=scope, name=name)
    return IssuerError(message)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None
