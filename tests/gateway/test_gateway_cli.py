"""`linehost gateway --config F` as a process, driven by independent EST clients: curl and
openssl, exactly as an operator would type them; and the gateway signing in SoftHSM2."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linehost.pki.est_wire import decode_certs_only
from tests.pki.softhsm import PIN, TOKEN, SoftHsm

from .conftest import GatewayFiles, enroll, gateway_toml, make_csr_der

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tools() -> None:
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} CLI missing on CI")
            pytest.skip(f"{tool} CLI missing: the independent EST client test cannot run")


@pytest.fixture
def gateway_process(
    gw_files: GatewayFiles, tmp_path: Path
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`linehost gateway --config` in its own process on a free port, stopped by SIGTERM."""
    port = _free_port()
    config = tmp_path / "gateway.toml"
    db = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    config.write_text(gateway_toml(gw_files, db, listen=f"127.0.0.1:{port}"))
    proc = _start(config, port, os.environ.copy())
    try:
        yield port, proc
    finally:
        _stop(proc)


def _start(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "linehost.cli", "gateway", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"gateway exited with {proc.returncode}: {out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise AssertionError("gateway did not start listening")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, check=False)


def test_curl_and_openssl_enroll_a_dac_that_openssl_verifies(
    gw_files: GatewayFiles,
    gateway_process: tuple[int, subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    _tools()
    port, proc = gateway_process
    key, csr, b64 = tmp_path / "dev.key", tmp_path / "dev.csr", tmp_path / "dev.b64"
    made = _run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", key, "-subj", "/CN=device", "-outform", "DER", "-out", csr,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    b64.write_bytes(_run("openssl", "base64", "-in", csr).stdout)
    cert, client_key = gw_files.cert("line-1")
    answer = tmp_path / "answer.b64"
    posted = _run(
        "curl", "--silent", "--show-error", "--fail",
        "--cacert", gw_files.tls.server_ca, "--cert", cert, "--key", client_key,
        "-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
        "-H", "X-Linehost-UID: 00000000CAFE0001", "-H", "X-Linehost-Work-Order: WO-CURL",
        "--data-binary", f"@{b64}", "-o", answer,
        f"https://127.0.0.1:{port}/.well-known/est/simpleenroll",
    )  # fmt: skip
    assert posted.returncode == 0, posted.stderr
    p7 = tmp_path / "answer.p7"
    decoded = _run("openssl", "base64", "-d", "-in", answer, "-out", p7)
    assert decoded.returncode == 0, decoded.stderr
    dac = tmp_path / "dac.pem"
    printed = _run("openssl", "pkcs7", "-inform", "DER", "-in", p7, "-print_certs", "-out", dac)
    assert printed.returncode == 0, printed.stderr
    verified = _run(
        "openssl", "verify", "-CAfile", gw_files.pki.paa_cert, "-untrusted",
        gw_files.pki.pai_cert, dac,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip() == f"{dac}: OK".encode()
    # The DAC is for the key openssl made.
    pub_dac = _run("openssl", "x509", "-in", dac, "-noout", "-pubkey").stdout
    pub_key = _run("openssl", "pkey", "-in", key, "-pubout").stdout
    assert pub_dac == pub_key

    # cacerts with curl and no client certificate.
    cacerts = _run(
        "curl", "--silent", "--fail", "--cacert", gw_files.tls.server_ca,
        f"https://127.0.0.1:{port}/.well-known/est/cacerts",
    )  # fmt: skip
    assert cacerts.returncode == 0
    assert len(decode_certs_only(cacerts.stdout)) == 2

    # No client certificate: 401 with the reason; another CA's: the TLS handshake fails.
    refused = _run(
        "curl", "--silent", "--cacert", gw_files.tls.server_ca, "-o", "/dev/null",
        "-w", "%{http_code}", "-H", "X-Linehost-UID: 00000000CAFE0002",
        "--data-binary", f"@{b64}", f"https://127.0.0.1:{port}/.well-known/est/simpleenroll",
    )  # fmt: skip
    assert refused.stdout == b"401"
    stranger, stranger_key = gw_files.cert("stranger")
    handshake = _run(
        "curl", "--silent", "--cacert", gw_files.tls.server_ca, "--cert", stranger,
        "--key", stranger_key, "-H", "X-Linehost-UID: 00000000CAFE0003",
        "--data-binary", f"@{b64}", f"https://127.0.0.1:{port}/.well-known/est/simpleenroll",
    )  # fmt: skip
    assert handshake.returncode != 0
    assert proc.poll() is None


@pytest.mark.hsm
async def test_gateway_signs_with_the_pai_key_in_softhsm(
    gw_files: GatewayFiles,
    softhsm: SoftHsm,
    tmp_path: Path,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from linehost.gateway.config import load_gateway_config
    from linehost.gateway.server import start_gateway
    from linehost.pki.profile import check_dac

    # The token holds the PAI of softhsm.pki: serve that PAI.
    files = GatewayFiles(
        gw_files.root, softhsm.pki, gw_files.tls, gw_files.clients, gw_files.stranger
    )
    os.environ["LINEHOST_TEST_HSM_PIN"] = PIN
    extra = f'pkcs11_module = "{softhsm.module}"\npkcs11_pin_env = "LINEHOST_TEST_HSM_PIN"\n'
    text = gateway_toml(
        files,
        f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
        pai_key=f"pkcs11:token={TOKEN};object=pai",
        extra_pki=extra,
    )
    (tmp_path / "gateway.toml").write_text(text)
    gateway = await start_gateway(load_gateway_config(tmp_path / "gateway.toml"))
    try:
        pai = x509.load_pem_x509_certificate(softhsm.pki.pai_cert.read_bytes())
        for i in range(3):
            csr, key = make_csr_der()
            reply = await enroll(files, gateway.port, "line-1", f"{0xBEEF00 + i:016X}", csr)
            assert reply.status == 200, reply.body
            [dac] = decode_certs_only(reply.body)
            assert dac.public_key() == key.public_key()
            assert check_dac(dac, pai) == []
            path = tmp_path / f"dac{i}.pem"
            path.write_bytes(dac.public_bytes(serialization.Encoding.PEM))
            verified = _run(
                "openssl", "verify", "-CAfile", softhsm.pki.paa_cert, "-untrusted",
                softhsm.pki.pai_cert, path,
            )  # fmt: skip
            assert verified.returncode == 0, verified.stdout + verified.stderr
        assert len(await gateway.store.issuances()) == 3
    finally:
        await gateway.close()
        os.environ.pop("LINEHOST_TEST_HSM_PIN", None)
