"""What the line does with onboarding data: draw it, deliver it, print its label, export it."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path
from typing import Any

import structlog

from linehost.config import LabelsSection, LineConfig, OnboardingSection
from linehost.onboarding.labels import (
    LabelData,
    LabelError,
    LabelSize,
    render_zpl,
    send_to_printer,
    write_label_files,
)
from linehost.onboarding.sealing import PasscodeSeal
from linehost.onboarding.setup_payload import CommissioningFlow, Discovery, SetupPayload
from linehost.onboarding.spake2p import compute_verifier, generate_passcode, generate_salt
from linehost.records import OnboardingRecord, OnboardingRequest

_log = structlog.get_logger("linehost.onboarding")

FLOWS = {
    "standard": CommissioningFlow.STANDARD,
    "user_intent": CommissioningFlow.USER_INTENT,
    "custom": CommissioningFlow.CUSTOM,
}
DISCOVERY = {"softap": Discovery.SOFT_AP, "ble": Discovery.BLE, "on_network": Discovery.ON_NETWORK}


def open_seal(section: OnboardingSection) -> PasscodeSeal:
    """The passcode key named by `[onboarding]`."""
    return PasscodeSeal.from_secret(section.passcode_key)


def seal_context(uid: str, vid: str, pid: str) -> str:
    """What a sealed passcode is bound to: the device and its product."""
    return f"{uid}/{vid.upper()}/{pid.upper()}"


class Onboarding:
    """Draws, delivers and prints one line's onboarding data (the runner's side)."""

    def __init__(
        self, section: OnboardingSection, seal: PasscodeSeal, labels: LabelsSection | None = None
    ) -> None:
        self.section = section
        self.seal = seal
        self.labels = labels
        self._flow = int(FLOWS[section.commissioning_flow])
        discovery = Discovery(0)
        for name in section.discovery:
            discovery |= DISCOVERY[name]
        self._discovery = int(discovery)
        self._printing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: LineConfig) -> Onboarding | None:
        """None unless `[onboarding]` is present and enabled; checks the key at once."""
        section = config.onboarding
        if section is None or not section.enabled:
            return None
        return cls(section, open_seal(section), config.labels)

    async def draw(self, uid: str, vid: str, pid: str) -> OnboardingRequest:
        """Fresh secrets for one device: passcode, salt and verifier (PBKDF2 off the loop)."""
        section = self.section
        passcode = generate_passcode()
        salt = generate_salt(section.salt_length)
        verifier = await asyncio.to_thread(
            compute_verifier, passcode, salt, section.spake2p_iterations
        )
        rd_uid = secrets.token_hex(section.rotating_id_length) if section.rotating_id else None
        return OnboardingRequest(
            vid=vid.upper(),
            pid=pid.upper(),
            discriminator_policy=section.discriminator,
            serial_template=section.serial_template,
            passcode_sealed=self.seal.seal(passcode, seal_context(uid, vid, pid)),
            passcode_tag=self.seal.tag(passcode, vid, pid),
            key_id=self.seal.key_id,
            spake2p_it=section.spake2p_iterations,
            spake2p_salt=base64.b64encode(salt).decode(),
            spake2p_verifier=base64.b64encode(verifier).decode(),
            rd_uid=rd_uid.upper() if rd_uid else None,
            hw_ver=section.hw_ver,
            hw_ver_str=section.hw_ver_str,
            commissioning_flow=self._flow,
            discovery=self._discovery,
        )

    def factory_data(self, record: OnboardingRecord) -> tuple[tuple[str, str], ...]:
        """The `FD:` lines for a device, in the order of the protocol's field table."""
        fields: list[tuple[str, str]] = [
            ("serial_num", record.serial_num),
            ("discriminator", str(record.discriminator)),
            ("spake2p_it", str(record.spake2p_it)),
            ("spake2p_salt", record.spake2p_salt),
            ("spake2p_verifier", record.spake2p_verifier),
        ]
        if self.section.send_passcode:
            fields.append(("passcode", str(self.passcode(record))))
        if record.rd_uid:
            fields.append(("rd_uid", record.rd_uid))
        fields.append(("mfg_date", record.mfg_date))
        fields.append(("hw_ver", str(record.hw_ver)))
        if record.hw_ver_str:
            fields.append(("hw_ver_str", record.hw_ver_str))
        return tuple(fields)

    def passcode(self, record: OnboardingRecord) -> int:
        """The device's passcode, unsealed."""
        return self.seal.open(
            record.passcode_sealed,
            seal_context(record.uid, record.vid, record.pid),
            record.key_id,
        )

    def payload(self, record: OnboardingRecord) -> SetupPayload:
        """The setup payload behind the device's QR and manual codes."""
        return setup_payload(record, self.passcode(record))

    def label(self, record: OnboardingRecord) -> LabelData:
        """What the device's label shows."""
        return LabelData.of(record.uid, record.serial_num, self.payload(record))

    async def print_label(self, record: OnboardingRecord) -> list[str]:
        """Send the label to the configured printer and/or folder; returns where it went."""
        return await output_label(self.label(record), self.labels)

    def print_label_soon(self, record: OnboardingRecord, log: Any = None) -> None:
        """Print in the background: a slow or absent printer never holds up a jig."""
        if self.labels is None:
            return
        task = asyncio.create_task(self._print(record, log or _log), name="label-print")
        self._printing.add(task)
        task.add_done_callback(self._printing.discard)

    async def aclose(self, grace: float = 10.0) -> None:
        """Wait (bounded) for labels still printing."""
        if self._printing:
            await asyncio.wait(set(self._printing), timeout=grace)

    async def _print(self, record: OnboardingRecord, log: Any) -> None:
        try:
            where = await self.print_label(record)
        except LabelError as exc:
            log.warning("label_failed", serial_num=record.serial_num, detail=str(exc))
            return
        log.info("label_printed", serial_num=record.serial_num, to=", ".join(where))


def setup_payload(record: OnboardingRecord, passcode: int) -> SetupPayload:
    """The setup payload of a recorded device given its unsealed passcode."""
    return SetupPayload(
        vid=int(record.vid, 16),
        pid=int(record.pid, 16),
        discriminator=record.discriminator,
        passcode=passcode,
        flow=CommissioningFlow(record.commissioning_flow),
        discovery=Discovery(record.discovery),
    )


def label_size(labels: LabelsSection | None) -> LabelSize:
    """The label stock of `[labels]` (defaults without it)."""
    if labels is None:
        return LabelSize()
    return LabelSize(width_mm=labels.width_mm, height_mm=labels.height_mm, dpi=labels.dpi)


async def output_label(
    label: LabelData, labels: LabelsSection | None, *, folder: Path | None = None
) -> list[str]:
    """Print and/or write one label as `[labels]` says (plus `folder`); returns where it went."""
    size = label_size(labels)
    where: list[str] = []
    target = folder if folder is not None else (labels.folder if labels else None)
    if target is not None:
        formats = labels.formats if labels is not None else ("png", "zpl")
        paths = await asyncio.to_thread(write_label_files, label, target, formats, size)
        where.extend(str(p) for p in paths)
    address = labels.printer_address if labels is not None else None
    if address is not None:
        assert labels is not None
        await send_to_printer(render_zpl(label, size), *address, wait=labels.timeout)
        where.append(f"printer {address[0]}:{address[1]}")
    if not where:
        raise LabelError("no label destination: configure [labels] printer or folder")
    return where


def export_fields(row: dict[str, Any], seal: PasscodeSeal) -> dict[str, Any]:
    """The `--include-onboarding` export fields from an onboarding row (None when absent)."""
    if row.get("serial_num") is None:
        return dict.fromkeys(ONBOARDING_EXPORT_FIELDS)
    record = OnboardingRecord(**{k: row[k] for k in OnboardingRecord.__dataclass_fields__})
    passcode = seal.open(
        record.passcode_sealed, seal_context(record.uid, record.vid, record.pid), record.key_id
    )
    payload = setup_payload(record, passcode)
    return {
        "serial_num": record.serial_num,
        "discriminator": record.discriminator,
        "passcode": passcode,
        "spake2p_it": record.spake2p_it,
        "spake2p_salt": record.spake2p_salt,
        "spake2p_verifier": record.spake2p_verifier,
        "qr_code": payload.qr_code(),
        "manual_code": payload.manual_code(),
    }


#: The contract's extra export fields (`audit export --include-onboarding`).
ONBOARDING_EXPORT_FIELDS = [
    "serial_num",
    "discriminator",
    "passcode",
    "spake2p_it",
    "spake2p_salt",
    "spake2p_verifier",
    "qr_code",
    "manual_code",
]
