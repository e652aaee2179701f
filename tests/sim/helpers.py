"""A tiny PKI and a minimal blocking host speaking jig protocol v1 over pyserial, for sim tests."""

from __future__ import annotations

import base64
import datetime as dt
import time
from dataclasses import dataclass, field

import serial
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.protocol.device import is_base64_line

CSR_BEGIN = "-----BEGIN CERTIFICATE REQUEST-----"
CSR_END = "-----END CERTIFICATE REQUEST-----"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Ca:
    """A certificate authority that can sign CA certificates and DACs."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _builder(
        self, subject: str, public_key: ec.EllipticCurvePublicKey, serial: int | None = None
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number() if serial is None else serial)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
        )

    def sub_ca(self, name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return Ca(key, cert)

    def issue(self, public_key: ec.EllipticCurvePublicKey, *, serial: int | None = None) -> str:
        cert = (
            self._builder("DAC", public_key, serial)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def make_root(name: str = "Test PAA") -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Ca(key, cert)


def delivery_lines(dac_pem: str, pai_pem: str, *, cd: bytes | None = None) -> list[str]:
    lines = dac_pem.splitlines() + pai_pem.splitlines()
    if cd is not None:
        lines.append("CD:" + base64.b64encode(cd).decode("ascii"))
    lines += ["FD:serial_num=SIM-000001", "FD:discriminator=3840", "END"]
    return lines


@dataclass
class Conversation:
    """What the minimal host saw in one conversation."""

    uid: str = ""
    csr_pem: str = ""
    log_lines: list[str] = field(default_factory=list)  # lines that were not protocol
    raw: bytes = b""
    finish: str | None = None
    dac_pem: str = ""


class MiniHost:
    """A blocking host over one pyserial port: enough protocol to drive a simulated device."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.ser = serial.serial_for_url(path, timeout=0.05)
        self.timeout = timeout
        self._buf = b""
        self.raw = b""

    def close(self) -> None:
        self.ser.close()

    def send(self, *lines: str) -> None:
        self.ser.write("".join(f"{ln}\n" for ln in lines).encode("ascii"))
        self.ser.flush()

    def read_line(self, timeout: float | None = None) -> str | None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                return None
            chunk = self.ser.read(4096)
            self.raw += chunk
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("ascii", "replace").removesuffix("\r")

    def sync(self, conv: Conversation, *, interval: float = 0.2, attempts: int = 25) -> None:
        for _ in range(attempts):
            self.send("Init")
            end = time.monotonic() + interval
            while (left := end - time.monotonic()) > 0:
                line = self.read_line(left)
                if line is None:
                    break
                if line == "Start_provisioning":
                    return
                conv.log_lines.append(line)
        raise AssertionError("no Start_provisioning")

    def read_identity(self, conv: Conversation) -> None:
        block: list[str] | None = None
        while True:
            line = self.read_line()
            assert line is not None, "device went quiet before its CSR ended"
            if block is None:
                if line.startswith("UID:"):
                    conv.uid = line[4:]
                elif line == CSR_BEGIN:
                    block = [line]
                else:
                    conv.log_lines.append(line)
                continue
            if line == CSR_END:
                block.append(line)
                conv.csr_pem = "\n".join(block) + "\n"
                return
            if is_base64_line(line):
                block.append(line)
            else:
                conv.log_lines.append(line)

    def read_finish(self, conv: Conversation, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (left := deadline - time.monotonic()) > 0:
            line = self.read_line(left)
            if line is None:
                return
            if line.startswith("finish:"):
                conv.finish = line[len("finish:") :]
                return
            conv.log_lines.append(line)

    def provision(
        self, pai: Ca, *, cd: bytes | None = None, result_timeout: float | None = None
    ) -> Conversation:
        """Sync, read UID + CSR, sign a DAC for the CSR's key, deliver, read the finish line."""
        conv = Conversation()
        self.sync(conv)
        self.read_identity(conv)
        csr = x509.load_pem_x509_csr(conv.csr_pem.encode("ascii"))
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        conv.dac_pem = pai.issue(key)
        self.send(*delivery_lines(conv.dac_pem, pai.pem, cd=cd))
        self.read_finish(conv, result_timeout)
        conv.raw = self.raw
        return conv
