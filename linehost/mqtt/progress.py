"""What the host tells a plant dashboard besides jig states: work-order progress, outbox depth,
the CRL it keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from linehost.store.audit import Audit
from linehost.store.floor import summarise

if TYPE_CHECKING:
    from linehost.pki.crl_keeper import CrlState


class LineFacts(Protocol):
    """Figures the relay publishes retained, read from the database every few seconds."""

    async def outbox_depth(self) -> int: ...

    async def work_order(self) -> dict[str, Any] | None: ...

    def crl(self) -> CrlState | None: ...


class CrlSource(Protocol):
    """Whoever keeps the host's CRL (CrlKeeper)."""

    @property
    def state(self) -> CrlState | None: ...


class HostFacts:
    """LineFacts of one line host, read through the (read-only) Audit."""

    def __init__(
        self,
        audit: Audit,
        line: str,
        work_order: tuple[str, int] | None,
        crl: CrlSource | None = None,
    ) -> None:
        self._audit = audit
        self._line = line
        self._work_order = work_order
        self._crl = crl

    async def outbox_depth(self) -> int:
        """Results of this line not yet accepted by the broker."""
        return await self._audit.outbox_depth(self._line)

    async def work_order(self) -> dict[str, Any] | None:
        """done / in flight / remaining / failed of the configured work order (all hosts)."""
        if self._work_order is None:
            return None
        wo, quantity = self._work_order
        return summarise(await self._audit.work_order_progress(wo), wo, quantity)

    def crl(self) -> CrlState | None:
        """The CRL last signed by this host's keeper (None without `[pki] crl_dir`)."""
        return self._crl.state if self._crl is not None else None
