"""`linehost label --config FILE UID`: reprint a device label from its recorded data."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from linehost.config import load_config
from linehost.errors import ConfigError, LinehostError
from linehost.onboarding.labels import LabelData
from linehost.onboarding.service import open_seal, output_label, seal_context, setup_payload
from linehost.records import OnboardingRecord
from linehost.store.audit import Audit


class UnknownDevice(LinehostError):
    """No onboarding data is recorded for the device."""


@dataclass(frozen=True, slots=True)
class LabelRequest:
    """`linehost label` as parsed: the config, the device, and an extra folder for the files."""

    config: Path
    uid: str
    out: Path | None = None  # also write the PNG/ZPL files here


def reprint_label(args: LabelRequest) -> int:
    """Print (and/or write) the label of one device again; exit 1 when it has no data."""
    config = load_config(args.config)
    if config.onboarding is None:
        raise ConfigError(f"{args.config}: `linehost label` needs the [onboarding] section")
    uid = args.uid.strip().upper()
    out: Path | None = args.out
    if out is None and (
        config.labels is None or not (config.labels.printer or config.labels.folder)
    ):
        raise ConfigError(f"{args.config}: no [labels] printer or folder; give --out DIR")
    seal = open_seal(config.onboarding)

    async def go() -> tuple[LabelData, list[str]]:
        audit = await Audit.open(config.database.url)
        try:
            rows = await audit.onboarding_of(uid)
        finally:
            await audit.close()
        pid = config.pki.pid
        mine = [r for r in rows if r["vid"] == config.pki.vid and r["pid"] == pid] or rows
        if not mine:
            raise UnknownDevice(f"no onboarding data recorded for UID {uid}")
        record = OnboardingRecord(**{k: mine[0][k] for k in OnboardingRecord.__dataclass_fields__})
        passcode = seal.open(
            record.passcode_sealed, seal_context(record.uid, record.vid, record.pid), record.key_id
        )
        label = LabelData.of(record.uid, record.serial_num, setup_payload(record, passcode))
        return label, await output_label(label, config.labels, folder=out)

    label, where = asyncio.run(go())
    print(f"label of UID {uid} (serial {label.serial_num}) sent to: {', '.join(where)}")
    return 0
