"""The issuer interface: what the line needs from any source of DACs."""

from __future__ import annotations

from typing import Protocol

from linehost.records import CsrInfo, IssuedDac


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
