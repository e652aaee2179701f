"""What the gateway does with one enrollment, decided from the live DACs of the UID and the key
(a pure function), and the records it decides on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from linehost.pki.est_wire import Refusal

Scope = Literal["client", "work_order"]


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """One recorded DAC and whom it was issued to."""

    id: int
    client: str
    uid: str
    work_order: str | None
    status: str
    public_key_sha256: str
    dac_serial: str
    dac_sha256: str
    dac_pem: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """A counter: how many DACs a client or work order had, its cap and rate limit."""

    scope: Scope
    name: str
    max_dacs: int | None
    issued: int
    rate: float | None
    burst: int | None

    def exhausted(self) -> bool:
        """True when no DAC is left under the cap."""
        return self.max_dacs is not None and self.issued >= self.max_dacs


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one enrollment.

    kind = "issue": sign a new DAC (superseding `supersede`, when set).
    kind = "redeliver": send `existing` again (the same client asked for the same UID and key).
    kind = "refuse": send nothing; `refusal` and `detail` say why.
    """

    kind: Literal["issue", "redeliver", "refuse"]
    existing: IssuanceRecord | None = None
    supersede: IssuanceRecord | None = None
    refusal: Refusal | None = None
    detail: str = ""
    quota: str | None = None  # quota_exhausted: "client:NAME" or "work_order:NAME"


def decide(
    by_uid: IssuanceRecord | None,
    by_key: IssuanceRecord | None,
    *,
    client: str,
    uid: str,
    public_key_sha256: str,
    allow_reprovision: bool,
) -> Decision:
    """The issuance decision from the live DAC of this UID and of this key (pure)."""
    if by_uid is not None and by_uid.public_key_sha256 == public_key_sha256:
        if by_uid.client == client:
            return Decision("redeliver", existing=by_uid)
        return Decision(
            "refuse",
            refusal=Refusal.UID_HAS_DAC,
            detail=f"UID {uid} has DAC {by_uid.dac_serial} issued to another client",
        )
    if by_key is not None:
        return Decision(
            "refuse",
            refusal=Refusal.DUPLICATE_KEY,
            detail=f"this key already has DAC {by_key.dac_serial} for UID {by_key.uid}",
        )
    if by_uid is not None:
        if not allow_reprovision:
            return Decision(
                "refuse",
                refusal=Refusal.UID_HAS_DAC,
                detail=f"UID {uid} already has DAC {by_uid.dac_serial} for another key "
                "(re-provisioning is not allowed)",
            )
        return Decision("issue", supersede=by_uid)
    return Decision("issue")


def quota_refusal(row: QuotaRow) -> Decision:
    """The refusal for an exhausted counter."""
    what = "client" if row.scope == "client" else "work order"
    return Decision(
        "refuse",
        refusal=Refusal.QUOTA_EXHAUSTED,
        detail=f"{what} {row.name}: quota of {row.max_dacs} DACs exhausted ({row.issued} issued)",
        quota=f"{row.scope}:{row.name}",
    )


def scopes(client: str, work_order: str | None) -> list[tuple[Scope, str]]:
    """The counters one DAC for `client` under `work_order` counts against."""
    out: list[tuple[Scope, str]] = [("client", client)]
    if work_order is not None:
        out.append(("work_order", work_order))
    return out
