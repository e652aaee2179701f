"""The issuer interface: what the line needs from any source of DACs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CsrInfo:
    """A CSR that passed every check: the device's public key, ready for a DAC."""

    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    public_key_sha256: str  # lower-case hex of sha256(public_key_der)
    csr_der: bytes


@dataclass(frozen=True, slots=True)
class IssuedDac:
    """A DAC ready to be recorded and delivered (not yet recorded: nothing may send it yet)."""

    pem: str  # one PEM CERTIFICATE block, LF line ends, trailing LF
    der: bytes
    serial_hex: str  # upper-case hex of the serial integer, no prefix, no leading zeros
    sha256: str  # lower-case hex of sha256(der)
    public_key_sha256: str  # lower-case hex of sha256(SubjectPublicKeyInfo DER)
    pai_sha256: str  # lower-case hex of sha256(PAI DER)
    vid: str  # 4 upper-case hex digits
    pid: str  # 4 upper-case hex digits
    bundle_entry_id: int | None = None  # set by the bundle issuer


class Issuer(Protocol):
    """Produces a DAC for a device whose CSR passed the checks."""

    @property
    def pai_pem(self) -> str:
        """The PAI certificate delivered after every DAC."""
        ...

    @property
    def pai_sha256(self) -> str: ...

    @property
    def vid(self) -> str: ...

    @property
    def pid(self) -> str: ...

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        """Return a DAC for `uid` bound to `csr`'s key; raise IssuerError when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release the signer (HSM session, thread pool)."""
        ...
