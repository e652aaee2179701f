"""The sections of a station config file, as typed models."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linehost.config.types import (
    ConfigPath,
    DatabaseUrl,
    KeyLocation,
    Listen,
    Name,
    PortLocation,
    SecretRef,
    StepArgv,
    VidPid,
    braced,
    check_placeholders,
    one_secret_source,
)
from linehost.pki.local import CN_PLACEHOLDERS
from linehost.store.allocation import SERIAL_PLACEHOLDERS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineSection(_Section):
    """`[line]`: the production line this host drives."""

    name: Name
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0


class DatabaseSection(_Section):
    """`[database]`: SQLite (embedded) or PostgreSQL."""

    url: DatabaseUrl = Field(default="sqlite+aiosqlite:///linehost.db", validate_default=True)
    auto_migrate: bool = True


class EstSection(_Section):
    """`[pki.est]`: the site signing gateway a line asks for DACs (`issuer = "est"`)."""

    url: str  # https://gateway:8443 (the /.well-known/est/... paths are added)
    client_cert: ConfigPath  # this line's TLS client certificate (`linehost gateway client add`)
    client_key: ConfigPath
    server_ca: ConfigPath  # the CA that signed the gateway's TLS certificate
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0  # one whole request
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16  # requests in flight at once

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must start with https:// (the gateway speaks EST over TLS only)")
        return value.rstrip("/")


class PkiSection(_Section):
    """`[pki]`: where DACs come from and how they look."""

    issuer: Literal["local", "bundle", "est"] = "local"
    est: EstSection | None = None  # for issuer = "est"
    pai_cert: ConfigPath
    pai_key: KeyLocation | None = None  # a PEM path or a pkcs11: URI; not for issuer = "bundle"
    paa_cert: ConfigPath | None = None
    pai_key_passphrase_env: str | None = None
    pai_key_passphrase_file: ConfigPath | None = None
    pkcs11_module: str | None = None  # path of the PKCS#11 module (.so) for a pkcs11: pai_key
    pkcs11_pin_env: str | None = None  # the token PIN: from this environment variable...
    pkcs11_pin_file: ConfigPath | None = None  # ...or from this file; never from the TOML
    cd_file: ConfigPath | None = None  # Certification Declaration (DER CMS SignedData), as CD:
    not_after: datetime | None = None  # DAC notAfter; default 99991231235959Z (no expiry)
    backdate: Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=366))] = timedelta(0)
    vid: VidPid
    pid: VidPid
    cn_template: str = "{uid}"
    allow_reprovision: bool = False
    # DACs for bare public keys (jigs with protocol = "ecc608-letters"): no proof of possession.
    allow_without_pop: bool = False
    # Revocation (issue 13): who signs the CRL, how long it holds, where `run` keeps it.
    crl_signer_cert: ConfigPath | None = None  # a delegated CRL signer the PAI issued
    crl_signer_key: KeyLocation | None = None  # its key: a PEM path or a pkcs11: URI
    crl_signer_key_passphrase_env: str | None = None
    crl_signer_key_passphrase_file: ConfigPath | None = None
    crl_next_update: Annotated[timedelta, Field(gt=timedelta(0), le=timedelta(days=3660))] = (
        timedelta(days=30)
    )
    crl_dir: ConfigPath | None = None  # `linehost run` keeps each PAI's current CRL here
    crl_refresh_margin: Annotated[timedelta, Field(ge=timedelta(0))] = timedelta(days=7)

    @model_validator(mode="after")
    def _key_source(self) -> PkiSection:
        if self.issuer == "local" and not self.pai_key:
            raise ValueError("pai_key is required when issuer = 'local'")
        if self.issuer == "est" and self.est is None:
            raise ValueError("issuer = 'est' needs a [pki.est] table (url, client_cert, ...)")
        one_secret_source(self.passphrase_secret)
        one_secret_source(self.pin_secret)
        one_secret_source(self.crl_signer_passphrase_secret)
        if (self.crl_signer_cert is None) != (self.crl_signer_key is None):
            raise ValueError("crl_signer_cert and crl_signer_key go together")
        if self.crl_refresh_margin >= self.crl_next_update:
            raise ValueError("crl_refresh_margin must be shorter than crl_next_update")
        if self.issuer == "local" and self.pai_key and self.pai_key.startswith("pkcs11:"):
            if not self.pkcs11_module:
                raise ValueError("a pkcs11: pai_key needs pkcs11_module (the module path)")
            if not (self.pkcs11_pin_env or self.pkcs11_pin_file):
                raise ValueError("a pkcs11: pai_key needs pkcs11_pin_env or pkcs11_pin_file")
        return self

    @field_validator("cn_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(CN_PLACEHOLDERS, "00"))
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"may use only {braced(CN_PLACEHOLDERS)} ({exc})") from None
        return value

    @property
    def passphrase_secret(self) -> SecretRef:
        """Where the PAI key passphrase comes from."""
        return SecretRef(
            "pki.pai_key_passphrase", self.pai_key_passphrase_env, self.pai_key_passphrase_file
        )

    @property
    def crl_signer_passphrase_secret(self) -> SecretRef:
        """Where the delegated CRL signer's key passphrase comes from."""
        return SecretRef(
            "pki.crl_signer_key_passphrase",
            self.crl_signer_key_passphrase_env,
            self.crl_signer_key_passphrase_file,
        )

    @property
    def pin_secret(self) -> SecretRef:
        """Where the PKCS#11 user PIN comes from."""
        return SecretRef("pki.pkcs11_pin", self.pkcs11_pin_env, self.pkcs11_pin_file)

    def passphrase(self) -> bytes | None:
        """The PAI key passphrase from the environment or a file, never from the TOML."""
        raw = self.passphrase_secret.read()
        return None if raw is None else raw.strip()

    def pin(self) -> str | None:
        """The PKCS#11 user PIN from the environment or a file, never from the TOML."""
        return self.pin_secret.read_text()


class ProtocolSection(_Section):
    """`[protocol]`: jig protocol timing in seconds, and the attestation extension (v1.1)."""

    sync_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    csr_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    result_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    empty_after_syncs: Annotated[int, Field(ge=1, le=100)] = 3
    letter_gap: Annotated[float, Field(gt=0, le=10)] = 0.2  # ecc608-letters: pause per letter
    # off: never challenge; when_offered: challenge devices that offer it after finish:000;
    # require: also refuse a device that does not offer it (protocol_error, before its CSR)
    attest: Literal["off", "when_offered", "require"] = "off"


_MQTT_URL = re.compile(
    r"(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\[\]]+)(?::(?P<port>\d{1,5}))?/?"
)


class MqttSection(_Section):
    """`[mqtt]`: the broker the line publishes status and results to (optional)."""

    url: str
    topic_prefix: str = "linehost"
    username: str | None = None
    password_file: ConfigPath | None = None
    password_env: str | None = None
    ca_file: ConfigPath | None = None
    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    client_id: str | None = None  # default: stable per line host, see linehost.mqtt.link
    protocol: Literal["auto", "5", "3.1.1"] = "auto"  # auto: v5, else 3.1.1 if refused
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    drain_timeout: Annotated[float, Field(ge=0, le=600)] = 5.0
    # Seconds between two publishes of one jig's state: changes in between are coalesced
    # (the latest wins). A dashboard needs no more than 10 updates/s per jig; 0 = every change.
    state_interval: Annotated[float, Field(ge=0, le=10)] = 0.1

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        match = _MQTT_URL.fullmatch(value)
        if not match:
            raise ValueError("must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if match["port"] is not None and not 0 < int(match["port"]) < 65536:
            raise ValueError("port must be 1..65535")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        parts = value.split("/")
        if not value or any(not part or part.strip() != part for part in parts):
            raise ValueError("must be non-empty topic levels separated by '/', no empty level")
        if any(c in value for c in "+#\0"):
            raise ValueError("must not contain the MQTT wildcards '+' or '#'")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> MqttSection:
        one_secret_source(self.password_secret)
        if (self.password_file or self.password_env) and self.username is None:
            raise ValueError("a password needs a username")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        tls_only = (self.ca_file, self.client_cert)
        if not self.url.startswith("mqtts://") and any(v is not None for v in tls_only):
            raise ValueError("ca_file and client_cert need an mqtts:// url")
        return self

    @property
    def tls(self) -> bool:
        """True for mqtts://."""
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        """The broker host name or address (IPv6 without brackets)."""
        match = _MQTT_URL.fullmatch(self.url)
        assert match is not None
        return match["host"].strip("[]")

    @property
    def port(self) -> int:
        """The broker port (1883 for mqtt://, 8883 for mqtts:// unless given)."""
        match = _MQTT_URL.fullmatch(self.url)
        assert match is not None
        return int(match["port"]) if match["port"] else (8883 if self.tls else 1883)

    @property
    def password_secret(self) -> SecretRef:
        """Where the broker password comes from."""
        return SecretRef("mqtt.password", self.password_env, self.password_file)

    def password(self) -> str | None:
        """The broker password from the environment or a file, never from the TOML."""
        return self.password_secret.read_text()


class SparkplugSection(_Section):
    """`[sparkplug]`: the line host as a Sparkplug B 3.0 edge node, each jig a device."""

    url: str | None = None  # default: the [mqtt] broker (and its credentials and TLS files)
    group_id: Name = "linehost"
    edge_node_id: Name | None = None  # default: the line name
    primary_host_id: Name | None = None  # births wait for spBv1.0/STATE/<id> online

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not _MQTT_URL.fullmatch(value):
            raise ValueError("must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return value

    def broker(self, mqtt: MqttSection | None) -> MqttSection:
        """The broker settings the edge node connects with (its own client id)."""
        if mqtt is None:
            assert self.url is not None  # LineConfig checks
            return MqttSection(url=self.url, client_id=None)
        update: dict[str, object] = {"client_id": None}
        if self.url is not None:
            update["url"] = self.url
        return mqtt.model_copy(update=update)


_OPCUA_URL = re.compile(
    r"opc\.tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\d{1,5})(/.*)?"
)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class OpcuaUserSection(_Section):
    """`[[opcua.users]]`: one user name and where its password comes from."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    password_env: str | None = None
    password_file: ConfigPath | None = None
    # operator: may call the methods (hold/resume jigs, open/close work orders); viewer: read only
    role: Literal["operator", "viewer"] = "operator"

    @model_validator(mode="after")
    def _secret(self) -> OpcuaUserSection:
        one_secret_source(self.password_secret)
        if not self.password_secret.given:
            raise ValueError("needs password_env or password_file")
        return self

    @property
    def password_secret(self) -> SecretRef:
        """Where the user's password comes from."""
        return SecretRef("opcua.users.password", self.password_env, self.password_file)


class OpcuaSection(_Section):
    """`[opcua]`: the OPC UA server (Line -> Stations -> Jigs, the work order)."""

    endpoint: str = "opc.tcp://127.0.0.1:4840/linehost/"
    # auto: None on a loopback endpoint, Basic256Sha256 Sign&Encrypt otherwise.
    security: Literal["auto", "none", "basic256sha256"] = "auto"
    certificate_dir: ConfigPath = Field(default=Path("opcua-pki"), validate_default=True)
    users: list[OpcuaUserSection] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        match = _OPCUA_URL.fullmatch(value)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError("must look like opc.tcp://HOST:PORT[/PATH]")
        return value

    @property
    def host(self) -> str:
        """The endpoint's host (IPv6 without brackets)."""
        match = _OPCUA_URL.fullmatch(self.endpoint)
        assert match is not None
        return match["host"].strip("[]")

    @property
    def policy(self) -> Literal["none", "basic256sha256"]:
        """The security policy in force."""
        if self.security != "auto":
            return self.security
        return "none" if self.host in _LOOPBACK else "basic256sha256"


class DashboardAlarmsSection(_Section):
    """`[dashboard.alarms]`: when the dashboard raises an alarm (seconds for durations)."""

    jig_failures: int = Field(3, ge=1)  # attempts in a row that failed on one jig
    jig_offline_after: float = Field(300.0, ge=0)
    host_offline_after: float = Field(60.0, ge=0)
    outbox_limit: int = Field(100, ge=1)  # results waiting: an alarm at once
    outbox_window: float = Field(300.0, gt=0)  # a depth that only grew over this long: an alarm
    # A host's CRL this close to its nextUpdate without a fresher one: keep it below the hosts'
    # [pki] crl_refresh_margin (they re-sign then), or every refresh cycle raises it briefly.
    crl_margin: float = Field(3 * 86400.0, ge=0)
    publish: bool = True  # publish on {p}/{line}/alarms (one publishing dashboard per prefix)


class DashboardSection(_Section):
    """`[dashboard]`: where `linehost dashboard` serves the plant page, who may see it, alarms."""

    listen: Listen = "127.0.0.1:8080"
    username: str | None = None  # HTTP basic auth, with password_file or password_env
    password_file: ConfigPath | None = None
    password_env: str | None = None
    token_file: ConfigPath | None = None  # or a bearer token (Authorization: Bearer ...)
    token_env: str | None = None
    alarms: DashboardAlarmsSection = DashboardAlarmsSection()

    @model_validator(mode="after")
    def _auth(self) -> DashboardSection:
        one_secret_source(self.password_secret)
        one_secret_source(self.token_secret)
        if self.password_secret.given != (self.username is not None):
            raise ValueError("basic auth needs both username and password_file/password_env")
        return self

    @property
    def password_secret(self) -> SecretRef:
        """Where the basic-auth password comes from."""
        return SecretRef("dashboard.password", self.password_env, self.password_file)

    @property
    def token_secret(self) -> SecretRef:
        """Where the bearer token comes from."""
        return SecretRef("dashboard.token", self.token_env, self.token_file)

    def password(self) -> str | None:
        """The basic-auth password from the environment or a file, never from the TOML."""
        return self.password_secret.read_text()

    def token(self) -> str | None:
        """The bearer token from the environment or a file, never from the TOML."""
        return self.token_secret.read_text()


StepTimeout = Annotated[float, Field(gt=0, le=3600)]


class StepsSection(_Section):
    """`[steps]` / `[stations.NAME]`: commands run around each device (argument lists)."""

    pre_command: StepArgv | None = None  # before syncing a new device
    post_command: StepArgv | None = None  # after finish:000
    pre_timeout: StepTimeout = 120.0
    post_timeout: StepTimeout = 120.0
    pre_retry: Annotated[float, Field(gt=0, le=3600)] = 5.0  # first back-off after a failure


class JigSection(_Section):
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


class WorkOrderSection(_Section):
    """`[work_order]`: the batch this line produces; counted in the database across hosts."""

    id: Name
    quantity: Annotated[int, Field(gt=0, le=1_000_000_000)]
    vid: VidPid | None = None  # overrides [pki] vid/pid for this work order
    pid: VidPid | None = None


class MetricsSection(_Section):
    """`[metrics]`: the Prometheus endpoint of `linehost run`."""

    listen: Listen = "127.0.0.1:9464"
    work_order_poll: Annotated[float, Field(gt=0, le=3600)] = 5.0  # seconds between reads


_PRINTABLE = re.compile(r"[ -~]*")


class OnboardingSection(_Section):
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


class LabelsSection(_Section):
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


class AuditSection(_Section):
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


class LineConfig(_Section):
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
