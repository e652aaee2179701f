"""CrlKeeper: `linehost run` keeps the PAI's current CRL in `[pki] crl_dir`.

It signs at start, again whenever a revocation is recorded (by any host or `pki revoke`), and
before nextUpdate minus `crl_refresh_margin`; each CRL takes the next number from the database.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from linehost.errors import LinehostError
from linehost.pki import lifecycle
from linehost.pki.crl import CrlSigner, crl_bytes
from linehost.pki.pai import IssuingPai
from linehost.pki.signer import Signer
from linehost.records import CrlState
from linehost.store.revocations import RevocationLedger
from linehost.tasks import cancel_and_wait

if TYPE_CHECKING:
    from linehost.config import PkiSection

_log = structlog.get_logger("linehost.pki")

#: Seconds between looks at the revocation ledger (patchable in tests).
POLL_INTERVAL: Final = 2.0


class CrlKeeper:
    """Signs and writes one PAI's CRL when it changes or nears its nextUpdate."""

    def __init__(
        self,
        ledger: RevocationLedger,
        pai: IssuingPai,
        crl_signer: CrlSigner,
        pki: PkiSection,
        directory: Path,
        *,
        on_remaining: Callable[[float], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owns_signer: bool = False,
    ) -> None:
        """Keep `pai`'s CRL in `directory`; `on_remaining` gets the seconds to nextUpdate."""
        self._ledger = ledger
        self._pai = pai
        self._signer = crl_signer
        self._pki = pki
        self.path = directory / f"{crl_file_stem(pai)}.crl"
        self._on_remaining = on_remaining
        self._clock = clock
        self._mark: tuple[int, int] | None = None
        self._next_update: datetime | None = None
        self.state: CrlState | None = None  # the last CRL signed (None before the first)
        self._task: asyncio.Task[None] | None = None
        self._owns_signer = owns_signer

    async def start(self) -> None:
        """Sign the first CRL now (errors raise before any jig starts), then keep it current."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="crl-keeper")

    async def refresh(self) -> None:
        """Sign when the ledger changed or nextUpdate minus the margin has come."""
        mark = await self._ledger.revocation_mark()
        now = self._clock()
        due = self._next_update is None or now >= self._next_update - self._pki.crl_refresh_margin
        if mark != self._mark or due:
            signed = await lifecycle.sign_crl(
                self._ledger, self._pai, self._signer, self._pki, now=now
            )
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_bytes(crl_bytes(signed.crl, pem=False))
            tmp.replace(self.path)
            self._mark, self._next_update = mark, signed.next_update
            self.state = CrlState(
                pai_skid=crl_file_stem(self._pai)[len("pai-") :],
                number=signed.number,
                this_update=signed.this_update,
                next_update=signed.next_update,
                revoked=signed.entries,
            )
            _log.info(
                "crl_signed",
                path=str(self.path),
                crl_number=signed.number,
                revoked=signed.entries,
                next_update=signed.next_update.isoformat(),
            )
        self._report(now)

    async def aclose(self) -> None:
        """Stop watching (the CRL file stays); close the signer when it is the keeper's own."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._owns_signer:
            await self._signer.signer.aclose()

    def _report(self, now: datetime) -> None:
        if self._next_update is None:
            return
        remaining = (self._next_update - now).total_seconds()
        if self._on_remaining is not None:
            self._on_remaining(remaining)
        if remaining < self._pki.crl_refresh_margin.total_seconds():
            _log.warning("crl_next_update_near", path=str(self.path), seconds=math.floor(remaining))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.refresh()
            except LinehostError as exc:  # HSM or database away: try again at the next look
                _log.warning("crl_sign_failed", detail=str(exc))
                self._report(self._clock())


crl_file_stem = lifecycle.crl_file_stem


class CrlKeepers:
    """The keepers of every PAI of the line (the active one and the previous ones)."""

    def __init__(self, keepers: list[CrlKeeper]) -> None:
        self.keepers = keepers

    @property
    def state(self) -> CrlState | None:
        """The CRL nearest its nextUpdate (the one an alarm is about); None before any."""
        states = [k.state for k in self.keepers if k.state is not None]
        return min(states, key=lambda s: s.next_update, default=None)

    async def aclose(self) -> None:
        """Stop every keeper."""
        for keeper in self.keepers:
            await keeper.aclose()


async def start_crl_keeper(
    pki: PkiSection,
    ledger: RevocationLedger,
    pai_signer: Signer | None,
    *,
    on_remaining: Callable[[float], None] | None = None,
) -> CrlKeepers | None:
    """The keepers of `[pki] crl_dir` (None without it), each PAI's first CRL signed; the active
    PAI's key is `pai_signer` (the issuer's, so one HSM session serves both) unless a delegated
    signer is configured; PkiError when the active PAI has no key to sign with. A previous PAI
    without a key here is skipped with a warning (its CRL is signed elsewhere)."""
    if pki.crl_dir is None:
        return None
    keepers: list[CrlKeeper] = []
    try:
        for keys, pai in await asyncio.to_thread(lifecycle.configured_pais, pki):
            if keys.crl_signer_cert is None and (not keys.active or pai_signer is None):
                if not keys.active and keys.pai_key is None:
                    _log.warning("crl_not_kept", pai=str(keys.pai_cert), detail="no key here")
                    continue
                if keys.active and keys.pai_key is None:
                    raise lifecycle.LifecycleError(
                        f"pki.crl_dir: PAI certificate {keys.pai_cert} has no key here to sign "
                        "its CRL (set pki.crl_signer_cert and pki.crl_signer_key)"
                    )
            if keys.active and keys.crl_signer_cert is None and pai_signer is not None:
                crl_signer, owned = CrlSigner(pai.certificate, pai_signer), False
            else:
                crl_signer = await asyncio.to_thread(
                    lifecycle.open_crl_signer, pki, pai.certificate, keys
                )
                owned = True
            keeper = CrlKeeper(
                ledger,
                pai,
                crl_signer,
                pki,
                pki.crl_dir,
                on_remaining=on_remaining if keys.active else None,
                owns_signer=owned,
            )
            keepers.append(keeper)
            await keeper.start()
    except BaseException:
        await CrlKeepers(keepers).aclose()
        raise
    return CrlKeepers(keepers)
