"""The site signing gateway: an EST (RFC 7030) server over mutual TLS that signs Matter DACs
for line hosts, within their quotas and rate limits, recording every DAC before it answers."""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from linehost.config import parse_listen
from linehost.errors import (
    CsrRejected,
    DatabaseUnavailable,
    IssuerError,
    LinehostError,
    PkiError,
)
from linehost.gateway.config import ClientSection, GatewayConfig
from linehost.gateway.decision import Decision, IssuanceRecord, QuotaRow
from linehost.gateway.ratelimit import RateLimiter
from linehost.gateway.store import GatewayStore
from linehost.pki.csr import parse_csr
from linehost.pki.est_wire import (
    CACERTS_PATH,
    CERTS_ONLY_TYPE,
    MAX_BODY_BYTES,
    QUOTA_HEADER,
    REASON_HEADER,
    SIMPLEENROLL_PATH,
    SIMPLEREENROLL_PATH,
    UID_HEADER,
    WORK_ORDER_HEADER,
    Refusal,
    csr_pem,
    decode_base64,
    encode_certs_only,
)
from linehost.pki.local import LocalIssuer, load_certificate, open_local_issuer
from linehost.records import CsrInfo

_log = structlog.get_logger("linehost.gateway")

#: Retry-After (seconds) when the signer or the database is away.
UNAVAILABLE_RETRY_AFTER: Final = 5
#: Longest a request may take to arrive in full.
REQUEST_BODY_TIMEOUT: Final = 30.0

_UID = re.compile(r"[0-9A-Fa-f]{8,64}")
_WORK_ORDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_STATUS: dict[Refusal, int] = {
    Refusal.NO_CLIENT_CERT: 401,
    Refusal.CLIENT_UNKNOWN: 403,
    Refusal.CLIENT_REVOKED: 403,
    Refusal.PRODUCT_NOT_ALLOWED: 403,
    Refusal.WORK_ORDER_NOT_ALLOWED: 403,
    Refusal.BAD_REQUEST: 400,
    Refusal.CSR_REJECTED: 400,
    Refusal.UID_HAS_DAC: 409,
    Refusal.DUPLICATE_KEY: 409,
    Refusal.QUOTA_EXHAUSTED: 403,
    Refusal.RATE_LIMITED: 429,
    Refusal.ISSUER_UNAVAILABLE: 503,
    Refusal.REENROLL_NOT_OFFERED: 501,
}


class _Refuse(Exception):
    def __init__(
        self,
        refusal: Refusal,
        detail: str,
        retry_after: float | None = None,
        quota: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.detail = detail
        self.retry_after = retry_after
        self.quota = quota


@dataclass(frozen=True, slots=True)
class _Caller:
    client: ClientSection
    cert_der: bytes
    serial: str  # the certificate's serial number, hex


class Gateway:
    """The EST endpoints over one signer, one database and the configured clients."""

    def __init__(
        self,
        config: GatewayConfig,
        issuer: LocalIssuer,
        store: GatewayStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve `config`'s clients with `issuer`, recording in `store`."""
        self._config = config
        self._issuer = issuer
        self._store = store
        self._clock = clock
        self._limiter = RateLimiter()
        self._uid_locks: dict[str, asyncio.Lock] = {}
        chain = [issuer.pai_certificate]
        if config.pki.paa_cert is not None:
            chain.append(load_certificate(config.pki.paa_cert, "PAA"))
        self._cacerts = encode_certs_only(chain)

    def app(self) -> web.Application:
        """The aiohttp application with the EST routes."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get(CACERTS_PATH, self._cacerts_handler)
        app.router.add_post(SIMPLEENROLL_PATH, self._simpleenroll)
        app.router.add_post(SIMPLEREENROLL_PATH, self._simplereenroll)
        return app

    # --- handlers --------------------------------------------------------------------------

    async def _cacerts_handler(self, request: web.Request) -> web.Response:
        return _certs_only_response(self._cacerts)

    async def _simplereenroll(self, request: web.Request) -> web.Response:
        return _refusal(
            _Refuse(
                Refusal.REENROLL_NOT_OFFERED,
                "simplereenroll is not offered: a DAC is never renewed; enroll a device once "
                "with simpleenroll",
            )
        )

    async def _simpleenroll(self, request: web.Request) -> web.Response:
        log = _log.bind(peer=request.remote)
        try:
            caller = self._authenticate(request)
            log = log.bind(client=caller.client.name)
            uid, work_order = self._authorise(request, caller.client)
            log = log.bind(uid=uid, work_order=work_order)
            # The body is read before the database so that one read admits the request; its
            # faults are told after revocation and the rate limit, as they always were.
            csr: CsrInfo | None = None
            fault: _Refuse | CsrRejected | None = None
            try:
                csr = parse_csr(csr_pem(await _read_body(request)))
            except (_Refuse, CsrRejected) as exc:
                fault = exc
            async with self._uid_lock(uid):
                seen = await self._store.admission(
                    cert_der=caller.cert_der, client=caller.client.name, uid=uid,
                    work_order=work_order,
                    public_key_sha256=csr.public_key_sha256 if csr is not None else None,
                    allow_reprovision=self._config.gateway.allow_reprovision,
                )  # fmt: skip
                if seen.revoked:
                    raise _Refuse(
                        Refusal.CLIENT_REVOKED,
                        f"client {caller.client.name!r}: certificate {caller.serial} is revoked",
                    )
                self._limit(caller.client, seen.client_quota)
                if fault is not None:
                    raise fault
                assert csr is not None
                assert seen.decision is not None
                return await self._enroll(
                    caller.client.name, uid, work_order, csr, seen.decision, log
                )
        except _Refuse as refused:
            log.info("enroll_refused", reason=refused.refusal.value, detail=refused.detail)
            return _refusal(refused)
        except CsrRejected as exc:
            log.info("enroll_refused", reason=Refusal.CSR_REJECTED.value, detail=str(exc))
            return _refusal(_Refuse(Refusal.CSR_REJECTED, str(exc)))
        except (IssuerError, DatabaseUnavailable) as exc:
            log.warning("enroll_unavailable", detail=str(exc))
            return _refusal(_Refuse(Refusal.ISSUER_UNAVAILABLE, str(exc), UNAVAILABLE_RETRY_AFTER))

    async def _enroll(
        self,
        client: str,
        uid: str,
        work_order: str | None,
        csr: CsrInfo,
        decision: Decision,
        log: structlog.typing.FilteringBoundLogger,
    ) -> web.Response:
        allow = self._config.gateway.allow_reprovision
        if decision.kind == "issue":
            dac = await self._issuer.issue(uid, csr)
            decision = await self._store.record(
                dac, client=client, uid=uid, work_order=work_order, allow_reprovision=allow
            )
            if decision.kind == "issue":
                log.info(
                    "dac_issued",
                    dac_serial=dac.serial_hex,
                    superseded=decision.supersede.dac_serial if decision.supersede else None,
                )
                return _certs_only_response(
                    encode_certs_only([x509.load_der_x509_certificate(dac.der)])
                )
        if decision.kind == "redeliver":
            assert decision.existing is not None
            await self._store.note_redelivery(decision.existing, client=client)
            log.info("dac_redelivered", dac_serial=decision.existing.dac_serial)
            return _certs_only_response(_existing(decision.existing))
        raise _refuse_for(decision)

    # --- checks ----------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> _Caller:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise _Refuse(Refusal.NO_CLIENT_CERT, "a TLS client certificate is required to enroll")
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        client = self._config.client(name)
        if client is None:
            raise _Refuse(Refusal.CLIENT_UNKNOWN, f"client {name!r} is not configured")
        return _Caller(client, der, f"{cert.serial_number:X}")

    def _authorise(self, request: web.Request, client: ClientSection) -> tuple[str, str | None]:
        uid = request.headers.get(UID_HEADER, "").strip()
        if not _UID.fullmatch(uid):
            raise _Refuse(
                Refusal.BAD_REQUEST, f"header {UID_HEADER} must be the device UID, 8..64 hex digits"
            )
        work_order = request.headers.get(WORK_ORDER_HEADER, "").strip() or None
        if work_order is not None and not _WORK_ORDER.fullmatch(work_order):
            raise _Refuse(Refusal.BAD_REQUEST, f"header {WORK_ORDER_HEADER}: not a work order name")
        pki = self._config.pki
        if not client.may_issue(pki.vid, pki.pid):
            raise _Refuse(
                Refusal.PRODUCT_NOT_ALLOWED,
                f"client {client.name!r} may not have DACs for VID {pki.vid} PID {pki.pid}",
            )
        if not client.may_use_work_order(work_order):
            raise _Refuse(
                Refusal.WORK_ORDER_NOT_ALLOWED,
                f"client {client.name!r} may not issue for work order {work_order!r}"
                if work_order is not None
                else f"client {client.name!r} must name a work order ({WORK_ORDER_HEADER})",
            )
        return uid, work_order

    def _limit(self, client: ClientSection, row: QuotaRow | None) -> None:
        gw = self._config.gateway
        rate = (row.rate if row else None) or client.rate or gw.rate
        burst = (row.burst if row else None) or client.burst or gw.burst
        wait = self._limiter.take(client.name, rate, burst, self._clock())
        if wait > 0:
            raise _Refuse(
                Refusal.RATE_LIMITED,
                f"client {client.name!r}: rate limit of {rate:g} DACs/s (burst {burst}) reached",
                wait,
            )

    @asynccontextmanager
    async def _uid_lock(self, uid: str) -> AsyncIterator[None]:
        # One request per UID at a time in this process: a retry racing its original waits
        # and gets the recorded DAC instead of signing one to throw away.
        lock = self._uid_locks.setdefault(uid, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._uid_locks.get(uid) is lock:
                del self._uid_locks[uid]


@dataclass(slots=True)
class RunningGateway:
    """A gateway serving on a port; `close` stops it and releases the signer and database."""

    gateway: Gateway
    runner: web.AppRunner
    issuer: LocalIssuer
    store: GatewayStore
    port: int

    async def close(self) -> None:
        """Stop taking requests, finish those in flight, release everything."""
        try:
            await self.runner.cleanup()
        finally:
            try:
                await self.issuer.aclose()
            finally:
                await self.store.close()


async def start_gateway(
    config: GatewayConfig, *, clock: Callable[[], float] = time.monotonic
) -> RunningGateway:
    """Open the database and the signer, check them, and serve on `[gateway] listen`."""
    gw = config.gateway
    tls = server_tls_context(config)
    store = await GatewayStore.open(
        config.database.url, name=gw.name, auto_migrate=config.database.auto_migrate
    )
    try:
        issuer = await open_local_issuer(config.pki)
    except BaseException:
        await store.close()
        raise
    try:
        gateway = Gateway(config, issuer, store, clock=clock)
        runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = parse_listen(gw.listen)
        site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise LinehostError(f"gateway: cannot listen on {gw.listen}: {exc.strerror}") from None
    except BaseException:
        await issuer.aclose()
        await store.close()
        raise
    server = site._server  # aiohttp keeps the bound socket there
    bound = port
    if isinstance(server, asyncio.Server) and server.sockets:
        bound = int(server.sockets[0].getsockname()[1])
    _log.info(
        "gateway_started",
        name=gw.name,
        listen=f"{host}:{bound}",
        vid=config.pki.vid,
        pid=config.pki.pid,
        pai_sha256=issuer.pai_sha256[:16],
        clients=len(config.clients),
    )
    return RunningGateway(gateway, runner, issuer, store, bound)


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    """`linehost gateway`: serve until `stop` is set."""
    running = await start_gateway(config)
    try:
        await stop.wait()
    finally:
        await running.close()
        _log.info("gateway_stopped", name=config.gateway.name)


def server_tls_context(config: GatewayConfig) -> ssl.SSLContext:
    """TLS 1.2+ with the gateway's certificate; client certificates checked against
    `client_ca` (optional at the handshake so that cacerts stays open and a missing one gets
    a clear 401; a certificate from another CA fails the handshake)."""
    gw = config.gateway
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(gw.tls_cert, gw.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"gateway TLS certificate {gw.tls_cert} / key {gw.tls_key}: {exc}") from None
    try:
        context.load_verify_locations(cafile=gw.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"gateway client_ca {gw.client_ca}: {exc}") from None
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _refuse_for(decision: Decision) -> _Refuse:
    assert decision.refusal is not None
    return _Refuse(decision.refusal, decision.detail, quota=decision.quota)


def _existing(record: IssuanceRecord) -> bytes:
    return encode_certs_only([x509.load_pem_x509_certificate(record.dac_pem.encode("ascii"))])


async def _read_body(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(REQUEST_BODY_TIMEOUT):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Refuse(Refusal.BAD_REQUEST, f"body larger than {MAX_BODY_BYTES} bytes") from None
    try:
        return decode_base64(body)
    except ValueError:
        raise _Refuse(
            Refusal.BAD_REQUEST, "body must be a base64 DER PKCS#10 (RFC 7030 4.2.1)"
        ) from None


def _certs_only_response(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        headers={"Content-Type": CERTS_ONLY_TYPE, "Content-Transfer-Encoding": "base64"},
    )


def _refusal(refused: _Refuse) -> web.Response:
    headers = {REASON_HEADER: refused.refusal.value}
    if refused.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
    if refused.quota is not None:
        headers[QUOTA_HEADER] = refused.quota
    return web.Response(
        status=_STATUS[refused.refusal], text=refused.detail + "\n", headers=headers
    )
