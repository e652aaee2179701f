"""Gateway fixtures: a development PAI, the gateway's TLS material, client certificates, a
config writer and an in-process gateway on a free port."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.gateway.config import GatewayConfig, load_gateway_config
from linehost.gateway.server import RunningGateway, start_gateway
from linehost.gateway.tls import TlsFiles, init_tls, make_client_cert, write_client_files
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.est_wire import SIMPLEENROLL_PATH, UID_HEADER, WORK_ORDER_HEADER, encode_pkcs10

CLIENTS = [f"line-{i}" for i in range(1, 9)]


@dataclass(frozen=True)
class GatewayFiles:
    """Everything a gateway and its clients need on disk."""

    root: Path
    pki: DevPki
    tls: TlsFiles
    clients: Path  # <name>.pem / <name>.key for each of CLIENTS
    stranger: Path  # stranger.pem / .key: a client certificate from another CA

    def cert(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) paths of client `name`."""
        folder = self.stranger if name == "stranger" else self.clients
        return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="session")
def gw_files(tmp_path_factory: pytest.TempPathFactory) -> GatewayFiles:
    """One PKI, TLS material and client certificates for the whole session."""
    root = tmp_path_factory.mktemp("gateway")
    pki = init_dev(root / "pki")
    tls = init_tls(root / "tls", ["localhost", "127.0.0.1"])
    for name in CLIENTS:
        cert, key = make_client_cert(name, tls.client_ca, tls.client_ca_key, 30)
        write_client_files(root / "clients", name, cert, key)
    other = init_tls(root / "other-tls", ["localhost"])
    cert, key = make_client_cert("line-1", other.client_ca, other.client_ca_key, 30)
    write_client_files(root / "stranger", "stranger", cert, key)
    return GatewayFiles(root, pki, tls, root / "clients", root / "stranger")


def gateway_toml(
    files: GatewayFiles,
    db_url: str,
    *,
    listen: str = "127.0.0.1:0",
    pai_key: str | None = None,
    extra_pki: str = "",
    clients: str | None = None,
    gateway_extra: str = "",
) -> str:
    """A gateway config over `files` and `db_url`; every CLIENT may issue FFF1:8000."""
    if clients is None:
        clients = "".join(
            f'[[clients]]\nname = "{name}"\nproducts = ["FFF1:8000"]\n\n' for name in CLIENTS
        )
    return f"""
[gateway]
name = "gw-test"
listen = "{listen}"
tls_cert = "{files.tls.server_cert}"
tls_key = "{files.tls.server_key}"
client_ca = "{files.tls.client_ca}"
client_ca_key = "{files.tls.client_ca_key}"
{gateway_extra}

[database]
url = "{db_url}"

[pki]
pai_cert = "{files.pki.pai_cert}"
pai_key = "{pai_key or files.pki.pai_key}"
paa_cert = "{files.pki.paa_cert}"
vid = "FFF1"
pid = "8000"
{extra_pki}

{clients}
"""


def write_config(folder: Path, text: str) -> GatewayConfig:
    """Write `text` as gateway.toml in `folder` and load it."""
    path = folder / "gateway.toml"
    path.write_text(text)
    return load_gateway_config(path)


Starter = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[Starter]:
    """Start gateways from config text (each in its own folder); all closed after the test."""
    running: list[RunningGateway] = []

    async def start(text: str, *, folder: Path | None = None) -> RunningGateway:
        where = folder or tmp_path / f"gw{len(running)}"
        where.mkdir(parents=True, exist_ok=True)
        gateway = await start_gateway(write_config(where, text))
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        await gateway.close()


@pytest.fixture
async def gateway(gw_files: GatewayFiles, db_url: str, gateway_factory: Starter) -> RunningGateway:
    """A gateway on a free port over a fresh database (SQLite and PostgreSQL)."""
    return await gateway_factory(gateway_toml(gw_files, db_url))


def client_tls(files: GatewayFiles, name: str | None) -> ssl.SSLContext:
    """A TLS context trusting the gateway, showing client `name`'s certificate (or none)."""
    context = ssl.create_default_context(cafile=files.tls.server_ca)
    if name is not None:
        cert, key = files.cert(name)
        context.load_cert_chain(cert, key)
    return context


def make_csr_der(key: Any = None, *, bad_signature: bool = False) -> tuple[bytes, Any]:
    """A DER PKCS#10 for `key` (a fresh P-256 key by default); optionally a broken signature."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if bad_signature:
        der[-3] ^= 0x01  # inside the signature's INTEGER
    return bytes(der), key


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes


async def enroll(
    files: GatewayFiles,
    port: int,
    client: str | None,
    uid: str,
    csr_der: bytes,
    *,
    work_order: str | None = None,
    path: str = SIMPLEENROLL_PATH,
) -> Reply:
    """POST one simpleenroll as client `client` and return the answer."""
    headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
    headers[UID_HEADER] = uid
    if work_order is not None:
        headers[WORK_ORDER_HEADER] = work_order
    connector = aiohttp.TCPConnector(ssl=client_tls(files, client))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"https://127.0.0.1:{port}{path}", data=encode_pkcs10(csr_der), headers=headers
        ) as resp,
    ):
        return Reply(resp.status, dict(resp.headers), await resp.read())
