"""DACs issued per second: LocalIssuer with a key file, with SoftHSM2 when present, and a reference.

The reference is a single-threaded loop calling cryptography directly with the same profile but
none of linehost's checks. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.pki.csr import parse_csr
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import NO_EXPIRY, LocalIssuer
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.signer import FileKeySigner, Signer
from linehost.records import CsrInfo

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CSR_POOL = 64


def main() -> None:
    """Parse arguments, run every measurement, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="DACs per measurement")
    parser.add_argument(
        "--hsm-count", type=int, default=500, help="DACs for the SoftHSM2 measurement"
    )
    parser.add_argument("--module", default=SOFTHSM2_MODULE, help="SoftHSM2 PKCS#11 module")
    parser.add_argument("--no-hsm", action="store_true", help="skip the SoftHSM2 measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="linehost-bench-") as tmp:
        work = Path(tmp)
        # SoftHSM reads its config once per process, so it is prepared before anything else.
        hsm_ready = not args.no_hsm and _prepare_softhsm(work, args.module)
        pki = init_dev(work / "pki") if not hsm_ready else _dev_pki(work)
        pems = [_csr_pem() for _ in range(CSR_POOL)]
        csrs = [parse_csr(p) for p in pems]

        result: dict[str, object] = {
            "benchmark": "issue_rate",
            "count": args.count,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        start = time.perf_counter()
        for i in range(args.count):
            parse_csr(pems[i % CSR_POOL])
        result["csr_parse_us"] = round((time.perf_counter() - start) / args.count * 1e6, 1)

        file_signer = FileKeySigner.load(pki.pai_key)
        result["local_file_per_s"] = _rate(_issuer(pki, file_signer), csrs, args.count)
        result["local_file_cpu_us_per_device"] = _cpu_per_device(
            _issuer(pki, file_signer), pems, args.count
        )
        result["local_file_assembly_path_per_s"] = _rate(
            _issuer(pki, _Indirect(file_signer)), csrs, args.count
        )
        result["reference_cryptography_per_s"] = _reference(pki, csrs, args.count)
        if hsm_ready:
            from linehost.pki.pkcs11 import Pkcs11Signer

            hsm = Pkcs11Signer.open("pkcs11:token=bench;object=pai", args.module, "1234")
            result["local_softhsm_per_s"] = _rate(_issuer(pki, hsm), csrs, args.hsm_count)
        else:
            result["local_softhsm_per_s"] = None
    print(json.dumps(result))


class _Indirect:
    """The file key seen as any other Signer: forces the TBS + assembly path."""

    def __init__(self, inner: FileKeySigner) -> None:
        self._inner = inner

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    async def sign(self, data: bytes) -> bytes:
        return await self._inner.sign(data)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _issuer(pki: DevPki, signer: Signer) -> LocalIssuer:
    return LocalIssuer.load(pki.pai_cert, signer, "FFF1", "8000", paa_cert=pki.paa_cert)


def _rate(issuer: LocalIssuer, csrs: list[CsrInfo], count: int) -> float:
    async def run() -> float:
        start = time.perf_counter()
        for i in range(count):
            await issuer.issue(f"{i:016X}", csrs[i % CSR_POOL])
        elapsed = time.perf_counter() - start
        await issuer.aclose()
        return elapsed

    return round(count / asyncio.run(run()), 1)


def _cpu_per_device(issuer: LocalIssuer, pems: list[bytes], count: int) -> float:
    async def run() -> None:
        for i in range(count):
            await issuer.issue(f"{i:016X}", parse_csr(pems[i % CSR_POOL]))

    start = time.process_time()
    asyncio.run(run())
    return round((time.process_time() - start) / count * 1e6, 1)


def _reference(pki: DevPki, csrs: list[CsrInfo], count: int) -> float:
    pai = x509.load_pem_x509_certificate(pki.pai_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.pai_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    akid = x509.AuthorityKeyIdentifier(pai_skid.key_identifier, None, None)
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    start = time.perf_counter()
    for i in range(count):
        public = serialization.load_der_public_key(csrs[i % CSR_POOL].public_key_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{i:016X}"),
                x509.NameAttribute(OID_MATTER_VID, "FFF1"),
                x509.NameAttribute(OID_MATTER_PID, "8000"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .issuer_name(pai.subject)
            .subject_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.now(UTC))
            .not_valid_after(NO_EXPIRY)
            .add_extension(x509.BasicConstraints(False, None), True)
            .add_extension(ku, True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
            .add_extension(akid, False)
            .sign(key, hashes.SHA256())
        )
        cert.public_bytes(serialization.Encoding.PEM)
    return round(count / (time.perf_counter() - start), 1)


def _csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _dev_pki(work: Path) -> DevPki:
    return DevPki(*(work / "pki" / n for n in ("paa.pem", "paa.key", "pai.pem", "pai.key")))


def _prepare_softhsm(work: Path, module: str) -> bool:
    util = shutil.which("softhsm2-util")
    if util is None or not Path(module).exists():
        return False
    try:
        import pkcs11  # noqa: F401 - only to know the hsm extra is there
    except ImportError:
        return False
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pki = init_dev(work / "pki")
    pk8 = work / "pai.pk8"
    steps: list[list[str | Path]] = [
        [util, "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"],
        ["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", pki.pai_key, "-out", pk8],
        [
            util,
            "--import",
            pk8,
            "--token",
            "bench",
            "--label",
            "pai",
            "--id",
            "01",
            "--pin",
            "1234",
        ],
    ]
    for step in steps:
        if subprocess.run(step, capture_output=True, check=False).returncode != 0:
            return False
    pk8.unlink()
    return True


if __name__ == "__main__":
    main()
