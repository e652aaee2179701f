"""The line's EST issuer against a real gateway: checked DACs, retries, "later" versus "no"."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.config import EstSection, PkiSection
from linehost.errors import IssuerError, IssuerUnavailable, PkiError, QuotaExhausted
from linehost.pki.csr import parse_csr
from linehost.pki.devpki import init_dev
from linehost.pki.est import open_est_issuer
from linehost.pki.est_wire import (
    CACERTS_PATH,
    SIMPLEENROLL_PATH,
    UID_HEADER,
    csr_pem,
    decode_base64,
    encode_certs_only,
)
from linehost.pki.local import LocalIssuer
from linehost.pki.profile import check_dac
from linehost.pki.signer import FileKeySigner

from .conftest import GatewayFiles, Starter, gateway_toml, make_csr_der


def _pki(files: GatewayFiles, port: int, *, client: str = "line-1", **est: object) -> PkiSection:
    cert, key = files.cert(client)
    return PkiSection(
        issuer="est",
        pai_cert=files.pki.pai_cert,
        vid="FFF1",
        pid="8000",
        est=EstSection(
            url=f"https://127.0.0.1:{port}",
            client_cert=cert,
            client_key=key,
            server_ca=files.tls.server_ca,
            **est,  # type: ignore[arg-type]
        ),
    )


def _csr() -> tuple[object, ec.EllipticCurvePrivateKey]:
    der, key = make_csr_der()
    return parse_csr(csr_pem(der)), key


async def test_issue_returns_a_checked_dac_and_the_same_one_on_retry(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    gw = await gateway_factory(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    issuer = await open_est_issuer(_pki(gw_files, gw.port), work_order="WO-5")
    try:
        csr, key = _csr()
        dac = await issuer.issue("00000000000000A1", csr)  # type: ignore[arg-type]
        again = await issuer.issue("00000000000000A1", csr)  # type: ignore[arg-type]
        cert = x509.load_der_x509_certificate(dac.der)
        pai = x509.load_pem_x509_certificate(gw_files.pki.pai_cert.read_bytes())
        assert check_dac(cert, pai) == []
        assert cert.public_key() == key.public_key()
        assert again == dac
        assert (dac.vid, dac.pid, dac.pai_sha256) == ("FFF1", "8000", issuer.pai_sha256)
        [record] = await gw.store.issuances()
        assert (record.client, record.work_order, record.dac_sha256) == (
            "line-1",
            "WO-5",
            dac.sha256,
        )
    finally:
        await issuer.aclose()


async def test_unreachable_gateway_is_unavailable_and_work_resumes_when_it_returns(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
    gw = await gateway_factory(gateway_toml(gw_files, db))
    port = gw.port
    await gw.close()
    issuer = await open_est_issuer(_pki(gw_files, port, connect_timeout=1.0))  # starts anyway
    try:
        csr, _ = _csr()
        with pytest.raises(IssuerUnavailable, match="unreachable"):
            await issuer.issue("00000000000000B1", csr)  # type: ignore[arg-type]
        await gateway_factory(gateway_toml(gw_files, db, listen=f"127.0.0.1:{port}"))
        dac = await issuer.issue("00000000000000B1", csr)  # type: ignore[arg-type]
        assert dac.public_key_sha256 == csr.public_key_sha256  # type: ignore[attr-defined]
    finally:
        await issuer.aclose()


async def test_rate_limit_is_unavailable_with_retry_after(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    clients = '[[clients]]\nname = "line-1"\nproducts = ["FFF1:8000"]\nrate = 0.01\nburst = 1\n'
    gw = await gateway_factory(
        gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", clients=clients)
    )
    issuer = await open_est_issuer(_pki(gw_files, gw.port))
    try:
        await issuer.issue("00000000000000C1", _csr()[0])  # type: ignore[arg-type]
        with pytest.raises(IssuerUnavailable) as caught:
            await issuer.issue("00000000000000C2", _csr()[0])  # type: ignore[arg-type]
        assert caught.value.retry_after is not None
        assert caught.value.retry_after >= 1
        assert "rate_limited" in str(caught.value)
    finally:
        await issuer.aclose()


async def test_quota_exhausted_is_its_own_refusal(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    gw = await gateway_factory(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    await gw.store.set_quota("work_order", "WO-Q", {"max_dacs": 1})
    issuer = await open_est_issuer(_pki(gw_files, gw.port), work_order="WO-Q")
    try:
        await issuer.issue("00000000000000D1", _csr()[0])  # type: ignore[arg-type]
        with pytest.raises(QuotaExhausted) as caught:
            await issuer.issue("00000000000000D2", _csr()[0])  # type: ignore[arg-type]
        assert (caught.value.scope, caught.value.name) == ("work_order", "WO-Q")
        assert not isinstance(caught.value, IssuerUnavailable)
    finally:
        await issuer.aclose()


async def test_a_refusal_for_good_is_an_issuer_error_not_unavailable(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    clients = '[[clients]]\nname = "line-1"\nproducts = ["FFF1:8001"]\n'
    gw = await gateway_factory(
        gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", clients=clients)
    )
    issuer = await open_est_issuer(_pki(gw_files, gw.port))
    try:
        with pytest.raises(IssuerError, match="product_not_allowed") as caught:
            await issuer.issue("00000000000000E1", _csr()[0])  # type: ignore[arg-type]
        assert not isinstance(caught.value, IssuerUnavailable | QuotaExhausted)
    finally:
        await issuer.aclose()


async def test_a_gateway_serving_another_pai_stops_the_line_at_start(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    gw = await gateway_factory(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    other = init_dev(tmp_path / "other")
    pki = _pki(gw_files, gw.port).model_copy(update={"pai_cert": other.pai_cert})
    with pytest.raises(PkiError, match="another PAI"):
        await open_est_issuer(pki)


class RogueGateway:
    """An EST server that answers with a DAC the line must not accept: one for another key
    (`mode = "other_key"`) or one from another PAI (`mode = "other_pai"`)."""

    def __init__(self, files: GatewayFiles, mode: str, other: Path) -> None:
        self.files = files
        self.mode = mode
        self.other = other
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> RogueGateway:
        app = web.Application()
        app.router.add_get(CACERTS_PATH, self.cacerts)
        app.router.add_post(SIMPLEENROLL_PATH, self.enroll)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.files.tls.server_cert, self.files.tls.server_key)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def cacerts(self, request: web.Request) -> web.Response:
        pai = x509.load_pem_x509_certificate(self.files.pki.pai_cert.read_bytes())
        return web.Response(body=encode_certs_only([pai]))

    async def enroll(self, request: web.Request) -> web.Response:
        csr = parse_csr(csr_pem(decode_base64(await request.read())))
        pki_dir = self.other if self.mode == "other_pai" else self.files.pki.pai_cert.parent
        issuer = LocalIssuer.load(
            pki_dir / "pai.pem", FileKeySigner.load(pki_dir / "pai.key"), "FFF1", "8000"
        )
        if self.mode == "other_key":
            csr = _csr()[0]  # type: ignore[assignment]
        dac = await issuer.issue(request.headers[UID_HEADER], csr)
        return web.Response(body=encode_certs_only([x509.load_der_x509_certificate(dac.der)]))

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.mark.parametrize(
    ("mode", "message"),
    [("other_key", "no DAC for the CSR's key"), ("other_pai", "fails the Matter profile")],
)
async def test_the_line_refuses_a_dac_it_must_not_record(
    gw_files: GatewayFiles, tmp_path: Path, mode: str, message: str
) -> None:
    """The line checks what a gateway sends before it records anything."""
    other = init_dev(tmp_path / "other")
    rogue = await RogueGateway(gw_files, mode, other.pai_cert.parent).start()
    issuer = await open_est_issuer(_pki(gw_files, rogue.port))
    try:
        with pytest.raises(IssuerError, match=message) as caught:
            await issuer.issue("00000000000000F1", _csr()[0])  # type: ignore[arg-type]
        assert not isinstance(caught.value, IssuerUnavailable)
    finally:
        await issuer.aclose()
        await rogue.close()


async def test_many_concurrent_issues_through_a_cap_of_two_all_succeed(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    gw = await gateway_factory(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    issuer = await open_est_issuer(_pki(gw_files, gw.port, concurrency=2))
    try:
        dacs = await asyncio.gather(
            *(issuer.issue(f"{0x1000 + i:016X}", _csr()[0]) for i in range(8))  # type: ignore[arg-type]
        )
        assert len({d.serial_hex for d in dacs}) == 8
        assert len(await gw.store.issuances()) == 8
    finally:
        await issuer.aclose()


async def test_issuer_keeps_its_connections_alive_within_its_concurrency(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    """One TLS handshake per connection, not per DAC: the issuer reuses its connections (HTTP
    keep-alive) and never opens more than `concurrency` of them."""
    gw = await gateway_factory(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    accepted = 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1  # one TCP connection (and one TLS handshake) of the issuer
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", gw.port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    relay = await asyncio.start_server(forward, "127.0.0.1", 0)
    port = relay.sockets[0].getsockname()[1]
    issuer = await open_est_issuer(_pki(gw_files, port, concurrency=2))
    try:
        for i in range(4):  # one after the other: one connection (cacerts included)
            await issuer.issue(f"00000000000000B{i}", _csr()[0])  # type: ignore[arg-type]
        assert accepted == 1
        # 12 at once through at most 2 connections
        await asyncio.gather(
            *(issuer.issue(f"00000000000000C{i:X}", _csr()[0]) for i in range(12))  # type: ignore[arg-type]
        )
        assert accepted <= 2
        assert len(await gw.store.issuances()) == 16
    finally:
        await issuer.aclose()
        relay.close()
        await relay.wait_closed()
