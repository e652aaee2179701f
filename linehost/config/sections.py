"""The sections of a station config file, as typed models: the line, its database, protocol,
jigs, steps, work order and records; `pki.py` holds `[pki]`, `outputs.py` the broker, plant and
dashboard sections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from linehost.config.outputs import DashboardSection, MqttSection, OpcuaSection, SparkplugSection
from linehost.config.pki import PkiSection
from linehost.config.placeholders import SERIAL_PLACEHOLDERS
from linehost.config.types import (
    ConfigPath,
    DatabaseUrl,
    KeyLocation,
    Listen,
    Name,
    PortLocation,
    SecretRef,
    Section,
    StepArgv,
    VidPid,
    check_placeholders,
    one_secret_source,
)


class LineSection(Section):
    """`[line]`: the production line this host drives."""

    name: Name
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0


class DatabaseSection(Section):
    """`[database]`: SQLite (embedded) or PostgreSQL."""

    url: DatabaseUrl = Field(default="sqlite+aiosqlite:///linehost.db", validate_default=True)
    auto_migrate: bool = True


class ProtocolSection(Section):
    """`[protocol]`: jig protocol timing in seconds, and the attestation extension (v1.1)."""

    sync_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    csr_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    result_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    empty_after_syncs: Annotated[int, Field(ge=1, le=100)] = 3
    letter_gap: Annotated[float, Field(gt=0, le=10)] = 0.2  # ecc608-letters: pause per letter
    # off: never challenge; when_offered: challenge devices that offer it after finish:000;
    # require: also refuse a device that does not offer it (protocol_error, before its CSR)
    attest: Literal["off", "when_offered", "require"] = "off"


StepTimeout = Annotated[float, Field(gt=0, le=3600)]


class StepsSection(Section):
    """`[steps]` / `[stations.NAME]`: commands run around each device (argument lists)."""

    pre_command: StepArgv | None = None  # before syncing a new device
    post_command: StepArgv | None = None  # after finish:000
    pre_timeout: StepTimeout = 120.0
    post_timeout: StepTimeout = 120.0
    pre_retry: Annotated[float, Field(gt=0, le=3600)] = 5.0  # first back-off after a failure


class JigSection(Section):
    """`[[jigs]]`: one programming jig and its serial port."""

    name: Name
    station: Name
    port: PortLocation
    baudrate: Annotated[int, Field(gt=0)] = 115200
    protocol: Literal["v1", "ecc608-letters"] = "v1"  # the jig protocol its firmware speaks
    probe: str = ""  # programmer id for {probe}, e.g. an ST-LINK serial number
    pre_command: StepArgv | None = None  # overrides [stations.NAME] and [steps]
    post_command: StepArgv | None = None
    pre_timeout: StepTimeout | None = None
    post_timeout: StepTimeout | None = None


class WorkOrderSection(Section):
    """`[work_order]`: the batch this line produces; counted in the database across hosts."""

    id: Name
    quantity: Annotated[int, Field(gt=0, le=1_000_000_000)]
    vid: VidPid | None = None  # overrides [pki] vid/pid for this work order
    pid: VidPid | None = None
    cd_file: ConfigPath | None = None  # its own Certification Declaration (DER), not [pki]'s
    firmware_version: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class MetricsSection(Section):
    """`[metrics]`: the Prometheus endpoint of `linehost run`."""

    listen: Listen = "127.0.0.1:9464"
    work_order_poll: Annotated[float, Field(gt=0, le=3600)] = 5.0  # seconds between reads


_PRINTABLE = re.compile(r"[ -~]*")


class OnboardingSection(Section):
    """`[onboarding]`: Matter commissioning data allocated per device (off without the section)."""

    enabled: bool = True
    discriminator: Literal["sequential", "random"] = "sequential"
    spake2p_iterations: Annotated[int, Field(ge=1000, le=100_000)] = 10_000
    salt_length: Annotated[int, Field(ge=16, le=32)] = 32
    serial_template: str = "{line}-{seq:06d}"
    send_passcode: bool = False  # deliver `FD:passcode=` too (only when the firmware needs it)
    rotating_id: bool = False  # allocate a rotating device id unique id (`FD:rd_uid=`)
    rotating_id_length: Annotated[int, Field(ge=16, le=32)] = 16
    hw_ver: Annotated[int, Field(ge=0, le=65535)] = 0
    hw_ver_str: Annotated[str, Field(max_length=64)] = ""
    commissioning_flow: Literal["standard", "user_intent", "custom"] = "standard"
    discovery: Annotated[
        tuple[Literal["ble", "softap", "on_network"], ...], Field(min_length=1)
    ] = ("ble",)
    passcode_key_file: ConfigPath | None = None
    passcode_key_env: str | None = None

    @field_validator("serial_template")
    @classmethod
    def _serial_template(cls, value: str) -> str:
        names = check_placeholders(value, SERIAL_PLACEHOLDERS)
        if not names & {"seq", "uid"}:
            raise ValueError("must contain {seq} or {uid}, or serial numbers would repeat")
        return value

    @field_validator("hw_ver_str")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not _PRINTABLE.fullmatch(value):
            raise ValueError("must be printable ASCII")
        return value

    @model_validator(mode="after")
    def _one_key(self) -> OnboardingSection:
        if self.enabled and (self.passcode_key_file is None) == (self.passcode_key_env is None):
            raise ValueError(
                "give exactly one of passcode_key_file or passcode_key_env "
                "(the key that encrypts passcodes at rest)"
            )
        return self

    @property
    def passcode_key(self) -> SecretRef:
        """Where the key that seals passcodes at rest comes from."""
        return SecretRef("onboarding.passcode_key", self.passcode_key_env, self.passcode_key_file)


class LabelsSection(Section):
    """`[labels]`: where device labels go: a Zebra printer (raw TCP) and/or a folder."""

    printer: str | None = None  # HOST or HOST:PORT (default port 9100), ZPL over raw TCP
    folder: ConfigPath | None = None  # PNG and ZPL files per device
    formats: Annotated[tuple[Literal["png", "zpl"], ...], Field(min_length=1)] = ("png", "zpl")
    timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    dpi: Literal[203, 300, 600] = 203
    width_mm: Annotated[float, Field(ge=20, le=200)] = 50.0
    height_mm: Annotated[float, Field(ge=15, le=200)] = 30.0

    @field_validator("printer")
    @classmethod
    def _printer(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":") if ":" in value else (value, "", "9100")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be HOST or HOST:PORT, e.g. 10.0.0.7:9100")
        return value

    @property
    def printer_address(self) -> tuple[str, int] | None:
        """(host, port) of the label printer, or None."""
        if self.printer is None:
            return None
        if ":" in self.printer:
            host, port = self.printer.rsplit(":", 1)
            return host.strip("[]"), int(port)
        return self.printer, 9100


class AuditSection(Section):
    """`[audit]`: signed checkpoints of the audit log, kept outside the database (issue 14)."""

    key: KeyLocation  # PEM path (Ed25519 or P-256, optionally encrypted) or a pkcs11: URI (P-256)
    key_passphrase_env: str | None = None
    key_passphrase_file: ConfigPath | None = None
    pkcs11_module: str | None = None
    pkcs11_pin_env: str | None = None
    pkcs11_pin_file: ConfigPath | None = None
    checkpoint_dir: ConfigPath  # one file per checkpoint, never overwritten
    checkpoint_every: Annotated[int, Field(ge=1, le=10_000_000)] = 1000  # audit rows
    checkpoint_interval: Annotated[float, Field(gt=0, le=86_400)] = 60.0  # seconds

    @model_validator(mode="after")
    def _key_source(self) -> AuditSection:
        one_secret_source(self.passphrase_secret)
        one_secret_source(self.pin_secret)
        if self.key.startswith("pkcs11:"):
            if not self.pkcs11_module:
                raise ValueError("a pkcs11: key needs pkcs11_module (the module path)")
            if not self.pin_secret.given:
                raise ValueError("a pkcs11: key needs pkcs11_pin_env or pkcs11_pin_file")
        return self

    @property
    def passphrase_secret(self) -> SecretRef:
        """Where the audit key passphrase comes from."""
        return SecretRef("audit.key_passphrase", self.key_passphrase_env, self.key_passphrase_file)

    @property
    def pin_secret(self) -> SecretRef:
        """Where the audit token's PKCS#11 user PIN comes from."""
        return SecretRef("audit.pkcs11_pin", self.pkcs11_pin_env, self.pkcs11_pin_file)

    def passphrase(self) -> bytes | None:
        """The audit key passphrase from the environment or a file, never from the TOML."""
        raw = self.passphrase_secret.read()
        return None if raw is None else raw.strip()

    def pin(self) -> str | None:
        """The PKCS#11 user PIN of the audit key's token, from the environment or a file."""
        return self.pin_secret.read_text()


class LineConfig(Section):
    """A whole station configuration file."""

    line: LineSection
    database: DatabaseSection = Field(default_factory=dict, validate_default=True)
    pki: PkiSection
    protocol: ProtocolSection = ProtocolSection()
    mqtt: MqttSection | None = None
    sparkplug: SparkplugSection | None = None
    opcua: OpcuaSection | None = None
    dashboard: DashboardSection = DashboardSection()
    onboarding: OnboardingSection | None = None
    labels: LabelsSection | None = None
    steps: StepsSection = StepsSection()
    stations: dict[str, StepsSection] = Field(default_factory=dict)
    work_order: WorkOrderSection | None = None
    metrics: MetricsSection | None = None
    audit: AuditSection | None = None
    jigs: list[JigSection] = Field(default_factory=list)
    source: Path | None = None

    @model_validator(mode="after")
    def _unique_jigs(self) -> LineConfig:
        seen: set[tuple[str, str]] = set()
        ports: set[str] = set()
        for jig in self.jigs:
            key = (jig.station, jig.name)
            if key in seen:
                raise ValueError(f"jig {jig.name!r} appears twice in station {jig.station!r}")
            if jig.port in ports:
                raise ValueError(f"port {jig.port!r} is used by two jigs")
            seen.add(key)
            ports.add(jig.port)
        if self.sparkplug is not None and self.sparkplug.url is None and self.mqtt is None:
            raise ValueError("[sparkplug] needs a url, or an [mqtt] broker to share")
        wo = self.work_order
        if wo is not None and wo.cd_file is not None and not self.pki.cd_signer_certs:
            raise ValueError(
                "work_order.cd_file needs pki.cd_signer_certs (the CD signing certificates "
                "its signature is checked against)"
            )
        unknown = set(self.stations) - {jig.station for jig in self.jigs}
        if unknown:
            raise ValueError(f"[stations.{sorted(unknown)[0]}] names a station without jigs")
        return self

    def steps_for(self, jig: JigSection) -> StepsSection:
        """The jig's pre/post steps: its own keys, else its station's, else `[steps]`."""
        base = self.stations.get(jig.station, self.steps)
        if jig.station in self.stations:
            # A station table inherits what it leaves out from [steps].
            given = base.model_fields_set
            base = self.steps.model_copy(update={k: getattr(base, k) for k in given})
        own = {
            key: getattr(jig, key)
            for key in ("pre_command", "post_command", "pre_timeout", "post_timeout")
            if getattr(jig, key) is not None
        }
        return base.model_copy(update=own) if own else base
