"""DACs per second through the site signing gateway: N concurrent EST clients (the line's own
EstIssuer, mutual TLS) against `linehost gateway` in-process, with the PAI key in a file and,
when present, in SoftHSM2; the LocalIssuer rate alongside. Prints one JSON line; the
*_cpu_ms_per_dac figures are this process's CPU (every thread: the clients, the gateway and
its SQLite worker threads; not the PostgreSQL server's) per DAC, steadier than DACs/s on a
shared machine.

Every measurement enrolls fresh keys under UIDs with a random prefix of its own, so a run can
use a persistent gateway database (PostgreSQL) again and again: nothing is ever redelivered or
refused as a duplicate. The line's devices/s through the gateway versus the local issuer is
`benchmarks/line.py --compare-issuers`.

    python benchmarks/gateway.py --clients 64 --count 2000 [--db postgresql+asyncpg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))

from issue_rate import SOFTHSM2_MODULE, _dev_pki, _prepare_softhsm

from linehost.gateway.config import load_gateway_config
from linehost.gateway.server import start_gateway
from linehost.gateway.tls import init_tls, make_client_cert, write_client_files
from linehost.logs import configure_logging
from linehost.pki.csr import parse_csr
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.est import EstIssuer, client_tls_context
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.records import CsrInfo

LINES = 4  # client certificates the N clients share, as several line hosts would


def main() -> None:
    """Parse arguments, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent EST clients (jigs)")
    parser.add_argument("--count", type=int, default=2000, help="DACs per measurement")
    parser.add_argument("--db", default=None, help="gateway database URL (default: SQLite)")
    parser.add_argument("--module", default=SOFTHSM2_MODULE)
    parser.add_argument("--no-hsm", action="store_true")
    args = parser.parse_args()
    configure_logging("warning", "logfmt")
    with tempfile.TemporaryDirectory(prefix="linehost-gw-bench-") as tmp:
        work = Path(tmp)
        hsm = not args.no_hsm and _prepare_softhsm(work, args.module)
        pki = _dev_pki(work) if hsm else init_dev(work / "pki")
        tls = init_tls(work / "tls", ["127.0.0.1"])
        for i in range(LINES):
            cert, key = make_client_cert(f"line-{i}", tls.client_ca, tls.client_ca_key, 30)
            write_client_files(work / "clients", f"line-{i}", cert, key)
        result: dict[str, object] = {
            "benchmark": "gateway",
            "clients": args.clients,
            "count": args.count,
            "cpus": os.cpu_count(),
            "database": "postgresql" if args.db else "sqlite",
        }
        result["local_file_per_s"] = asyncio.run(_local(pki, _csrs(args.count)))
        result["gateway_file_per_s"], result["gateway_file_cpu_ms_per_dac"] = asyncio.run(
            _through_gateway(work, "file", pki, tls, _csrs(args.count), args, key=str(pki.pai_key))
        )
        if hsm:
            os.environ["LINEHOST_BENCH_PIN"] = "1234"
            result["gateway_softhsm_per_s"], result["gateway_softhsm_cpu_ms_per_dac"] = asyncio.run(
                _through_gateway(
                    work,
                    "hsm",
                    pki,
                    tls,
                    _csrs(args.count),
                    args,
                    key="pkcs11:token=bench;object=pai",
                    extra=f'pkcs11_module = "{args.module}"\npkcs11_pin_env = "LINEHOST_BENCH_PIN"',
                )
            )
        else:
            result["gateway_softhsm_per_s"] = None
    print(json.dumps(result))


async def _local(pki: DevPki, csrs: list[CsrInfo]) -> float:
    issuer = LocalIssuer.load(pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000")
    start = time.perf_counter()
    for i, csr in enumerate(csrs):
        await issuer.issue(f"{i:016X}", csr)
    return round(len(csrs) / (time.perf_counter() - start), 1)


async def _through_gateway(
    work: Path,
    name: str,
    pki: DevPki,
    tls: object,
    csrs: list[CsrInfo],
    args: argparse.Namespace,
    *,
    key: str,
    extra: str = "",
) -> tuple[float, float]:
    """(DACs per second, CPU ms per DAC of this process: the clients and the gateway)."""
    folder = work / name
    folder.mkdir()
    db = args.db or f"sqlite+aiosqlite:///{folder / 'gateway.db'}"
    clients = "".join(
        f'[[clients]]\nname = "line-{i}"\nproducts = ["FFF1:8000"]\nrate = 1e9\nburst = 1000000\n'
        for i in range(LINES)
    )
    (folder / "gateway.toml").write_text(
        f"""
[gateway]
name = "bench-{name}"
listen = "127.0.0.1:0"
tls_cert = "{work / "tls" / "gateway.pem"}"
tls_key = "{work / "tls" / "gateway.key"}"
client_ca = "{work / "tls" / "client-ca.pem"}"
[database]
url = "{db}"
[pki]
pai_cert = "{pki.pai_cert}"
pai_key = "{key}"
vid = "FFF1"
pid = "8000"
{extra}
{clients}
"""
    )
    gateway = await start_gateway(load_gateway_config(folder / "gateway.toml"))
    pai = x509.load_pem_x509_certificate(pki.pai_cert.read_bytes())
    issuers = [
        EstIssuer(
            f"https://127.0.0.1:{gateway.port}",
            client_tls_context(
                work / "tls" / "server-ca.pem",
                work / "clients" / f"line-{i}.pem",
                work / "clients" / f"line-{i}.key",
            ),
            pai,
            "FFF1",
            "8000",
            concurrency=args.clients,
        )
        for i in range(LINES)
    ]
    run = secrets.token_hex(4).upper()  # UIDs no earlier run used: the database may persist
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(csrs)):
        queue.put_nowait(i)

    async def jig(n: int) -> None:
        issuer = issuers[n % LINES]
        while not queue.empty():
            i = queue.get_nowait()
            await issuer.issue(f"{run}{i:08X}", csrs[i])

    try:
        for issuer in issuers:
            await issuer.confirm_pai()
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(jig(n) for n in range(args.clients)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for issuer in issuers:
            await issuer.aclose()
        await gateway.close()
    return round(len(csrs) / elapsed, 1), round(cpu * 1000 / len(csrs), 2)


def _csrs(count: int) -> list[CsrInfo]:
    """`count` CSRs for fresh P-256 keys."""
    return [_csr() for _ in range(count)]


def _csr() -> CsrInfo:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    return parse_csr(pem)


if __name__ == "__main__":
    main()
