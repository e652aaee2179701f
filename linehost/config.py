"""The station configuration: typed models, TOML loading, errors naming file, key and problem."""

from __future__ import annotations

import os
import re
import string
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from linehost.errors import ConfigError

_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '_', '.', '-' (used in MQTT topics)"
        )
    return value


class LineSection(_Section):
    """`[line]`: the production line this host drives."""

    name: str
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0

    _name = field_validator("name")(_check_name)


class DatabaseSection(_Section):
    """`[database]`: SQLite (embedded) or PostgreSQL."""

    url: str = "sqlite+aiosqlite:///linehost.db"
    auto_migrate: bool = True

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class EstSection(_Section):
    """`[pki.est]`: the site signing gateway a line asks for DACs (`issuer = "est"`)."""

    url: str  # https://gateway:8443 (the /.well-known/est/... paths are added)
    client_cert: Path  # this line's TLS client certificate (`linehost gateway client add`)
    client_key: Path
    server_ca: Path  # the CA that signed the gateway's TLS certificate
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0  # one whole request
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16  # requests in flight at once

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must start with https:// (the gateway speaks EST over TLS only)")
        return value.rstrip("/")

    def resolved(self, base: Path) -> EstSection:
        """A copy with relative paths made relative to `base`."""
        return self.model_copy(
            update={
                key: _resolve(base, getattr(self, key))
                for key in ("client_cert", "client_key", "server_ca")
            }
        )


class PkiSection(_Section):
    """`[pki]`: where DACs come from and how they look."""

    issuer: Literal["local", "bundle", "est"] = "local"
    est: EstSection | None = None  # for issuer = "est"
    pai_cert: Path
    pai_key: str | None = None  # a PEM path or a pkcs11: URI; not used by the bundle issuer
    paa_cert: Path | None = None
    pai_key_passphrase_env: str | None = None
    pai_key_passphrase_file: Path | None = None
    pkcs11_module: str | None = None  # path of the PKCS#11 module (.so) for a pkcs11: pai_key
    pkcs11_pin_env: str | None = None  # the token PIN: from this environment variable...
    pkcs11_pin_file: Path | None = None  # ...or from this file; never from the TOML
    cd_file: Path | None = None  # Certification Declaration (DER CMS SignedData), sent as CD:
    not_after: datetime | None = None  # DAC notAfter; default 99991231235959Z (no expiry)
    backdate: Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=366))] = timedelta(0)
    vid: str
    pid: str
    cn_template: str = "{uid}"
    allow_reprovision: bool = False

    @model_validator(mode="after")
    def _key_source(self) -> PkiSection:
        if self.issuer == "local" and not self.pai_key:
            raise ValueError("pai_key is required when issuer = 'local'")
        if self.issuer == "est" and self.est is None:
            raise ValueError("issuer = 'est' needs a [pki.est] table (url, client_cert, ...)")
        if self.pai_key_passphrase_env and self.pai_key_passphrase_file:
            raise ValueError("give pai_key_passphrase_env or pai_key_passphrase_file, not both")
        if self.pkcs11_pin_env and self.pkcs11_pin_file:
            raise ValueError("give pkcs11_pin_env or pkcs11_pin_file, not both")
        if self.issuer == "local" and self.pai_key and self.pai_key.startswith("pkcs11:"):
            if not self.pkcs11_module:
                raise ValueError("a pkcs11: pai_key needs pkcs11_module (the module path)")
            if not (self.pkcs11_pin_env or self.pkcs11_pin_file):
                raise ValueError("a pkcs11: pai_key needs pkcs11_pin_env or pkcs11_pin_file")
        return self

    @field_validator("vid", "pid")
    @classmethod
    def _hex4(cls, value: str) -> str:
        if not _HEX4.fullmatch(value):
            raise ValueError("must be exactly 4 hex digits, e.g. 'FFF1'")
        return value.upper()

    @field_validator("cn_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(uid="00", vid="FFF1", pid="8000")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"may use only {{uid}}, {{vid}}, {{pid}} ({exc})") from None
        return value

    def resolved(self, base: Path) -> PkiSection:
        """A copy with every relative path made relative to `base` (the file's folder)."""
        return self.model_copy(
            update={
                "pai_cert": _resolve(base, self.pai_cert),
                "pai_key": _resolve_key(base, self.pai_key),
                "paa_cert": _resolve(base, self.paa_cert),
                "pai_key_passphrase_file": _resolve(base, self.pai_key_passphrase_file),
                "pkcs11_pin_file": _resolve(base, self.pkcs11_pin_file),
                "cd_file": _resolve(base, self.cd_file),
                "est": self.est.resolved(base) if self.est is not None else None,
            }
        )

    def passphrase(self) -> bytes | None:
        """The PAI key passphrase from the environment or a file, never from the TOML."""
        if self.pai_key_passphrase_env:
            value = os.environ.get(self.pai_key_passphrase_env)
            if value is None:
                raise ConfigError(
                    f"pki.pai_key_passphrase_env: environment variable "
                    f"{self.pai_key_passphrase_env} is not set"
                )
            return value.encode()
        if self.pai_key_passphrase_file:
            try:
                return self.pai_key_passphrase_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"pki.pai_key_passphrase_file: cannot read {self.pai_key_passphrase_file}: "
                    f"{exc.strerror}"
                ) from None
        return None

    def pin(self) -> str | None:
        """The PKCS#11 user PIN from the environment or a file, never from the TOML."""
        if self.pkcs11_pin_env:
            value = os.environ.get(self.pkcs11_pin_env)
            if value is None:
                raise ConfigError(
                    f"pki.pkcs11_pin_env: environment variable {self.pkcs11_pin_env} is not set"
                )
            return value
        if self.pkcs11_pin_file:
            try:
                return self.pkcs11_pin_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"pki.pkcs11_pin_file: cannot read {self.pkcs11_pin_file}: {reason}"
                ) from None
        return None


class ProtocolSection(_Section):
    """`[protocol]`: jig protocol timing in seconds."""

    sync_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    csr_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    result_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    empty_after_syncs: Annotated[int, Field(ge=1, le=100)] = 3


_MQTT_URL = re.compile(
    r"(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\[\]]+)(?::(?P<port>\d{1,5}))?/?"
)
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):(?P<port>\d{1,5})")


class MqttSection(_Section):
    """`[mqtt]`: the broker the line publishes status and results to (optional)."""

    url: str
    topic_prefix: str = "linehost"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
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
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
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

    def password(self) -> str | None:
        """The broker password from the environment or a file, never from the TOML."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env} is not set"
                )
            return value
        if self.password_file:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file}: {detail}"
                ) from None
        return None


class DashboardSection(_Section):
    """`[dashboard]`: where `linehost dashboard` serves the line page (optional)."""

    listen: str = "127.0.0.1:8080"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets; empty host = every interface) -> (host, port)."""
    match = _LISTEN.fullmatch(value)
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080, got {value!r}")
    return match["host"].strip("[]") or "0.0.0.0", int(match["port"])


STEP_FIELDS = frozenset({"port", "uid", "jig", "station", "serial_num", "probe", "line"})
StepTimeout = Annotated[float, Field(gt=0, le=3600)]


def _check_command(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value or not value[0]:
        raise ValueError("must be a non-empty list: the program, then its arguments")
    for arg in value:
        try:
            names = {f[1] for f in string.Formatter().parse(arg) if f[1] is not None}
        except ValueError as exc:
            raise ValueError(f"argument {arg!r}: {exc} (write {{{{ or }}}} for a brace)") from None
        unknown = names - STEP_FIELDS
        if unknown:
            allowed = ", ".join("{" + n + "}" for n in sorted(STEP_FIELDS))
            raise ValueError(f"argument {arg!r}: unknown placeholder(s) {sorted(unknown)}; "
                             f"may use {allowed}")  # fmt: skip
    return value


class StepsSection(_Section):
    """`[steps]` / `[stations.NAME]`: commands run around each device (argument lists)."""

    pre_command: tuple[str, ...] | None = None  # before syncing a new device
    post_command: tuple[str, ...] | None = None  # after finish:000
    pre_timeout: StepTimeout = 120.0
    post_timeout: StepTimeout = 120.0
    pre_retry: Annotated[float, Field(gt=0, le=3600)] = 5.0  # first back-off after a failure

    _commands = field_validator("pre_command", "post_command")(_check_command)


class JigSection(_Section):
    """`[[jigs]]`: one programming jig and its serial port."""

    name: str
    station: str
    port: str
    baudrate: Annotated[int, Field(gt=0)] = 115200
    probe: str = ""  # programmer id for {probe}, e.g. an ST-LINK serial number
    pre_command: tuple[str, ...] | None = None  # overrides [stations.NAME] and [steps]
    post_command: tuple[str, ...] | None = None
    pre_timeout: StepTimeout | None = None
    post_timeout: StepTimeout | None = None

    _names = field_validator("name", "station")(_check_name)
    _commands = field_validator("pre_command", "post_command")(_check_command)


class WorkOrderSection(_Section):
    """`[work_order]`: the batch this line produces; counted in the database across hosts."""

    id: str
    quantity: Annotated[int, Field(gt=0, le=1_000_000_000)]
    vid: str | None = None  # overrides [pki] vid/pid for this work order
    pid: str | None = None

    _id = field_validator("id")(_check_name)

    @field_validator("vid", "pid")
    @classmethod
    def _hex4(cls, value: str | None) -> str | None:
        if value is not None and not _HEX4.fullmatch(value):
            raise ValueError("must be exactly 4 hex digits, e.g. 'FFF1'")
        return None if value is None else value.upper()


class MetricsSection(_Section):
    """`[metrics]`: the Prometheus endpoint of `linehost run`."""

    listen: str = "127.0.0.1:9464"
    work_order_poll: Annotated[float, Field(gt=0, le=3600)] = 5.0  # seconds between reads

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


_SERIAL_FIELDS = {"line", "station", "jig", "uid", "seq", "vid", "pid", "yyyymmdd", "yyyy", "mm",
                  "dd"}  # fmt: skip
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
    passcode_key_file: Path | None = None
    passcode_key_env: str | None = None

    @field_validator("serial_template")
    @classmethod
    def _serial_template(cls, value: str) -> str:
        names = {f[1] for f in string.Formatter().parse(value) if f[1] is not None}
        unknown = names - _SERIAL_FIELDS
        if unknown:
            allowed = ", ".join("{" + name + "}" for name in sorted(_SERIAL_FIELDS))
            raise ValueError(f"unknown field(s) {sorted(unknown)}; may use {allowed}")
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


class LabelsSection(_Section):
    """`[labels]`: where device labels go: a Zebra printer (raw TCP) and/or a folder."""

    printer: str | None = None  # HOST or HOST:PORT (default port 9100), ZPL over raw TCP
    folder: Path | None = None  # PNG and ZPL files per device
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


class LineConfig(_Section):
    """A whole station configuration file."""

    line: LineSection
    database: DatabaseSection = DatabaseSection()
    pki: PkiSection
    protocol: ProtocolSection = ProtocolSection()
    mqtt: MqttSection | None = None
    dashboard: DashboardSection = DashboardSection()
    onboarding: OnboardingSection | None = None
    labels: LabelsSection | None = None
    steps: StepsSection = StepsSection()
    stations: dict[str, StepsSection] = Field(default_factory=dict)
    work_order: WorkOrderSection | None = None
    metrics: MetricsSection | None = None
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

    def resolved(self, base: Path) -> LineConfig:
        """A copy with every relative path made relative to `base` (the file's folder)."""
        return _resolved_config(self, base)


def load_config(path: str | Path) -> LineConfig:
    """Read and validate a station config; relative paths are resolved against its folder."""
    file = Path(path)
    return parse_config(read_toml(file), file)


def read_toml(file: Path) -> dict[str, object]:
    """The parsed TOML document in `file`; raise ConfigError naming the file and the problem."""
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: bad TOML: {exc}") from None


def parse_config(raw: dict[str, object], file: Path) -> LineConfig:
    """Validate an already-parsed TOML document that came from `file`."""
    try:
        config = LineConfig.model_validate({**raw, "source": file})
    except ValidationError as exc:
        raise config_error(exc, file) from None
    return config.resolved(file.parent)


def config_error(exc: ValidationError, file: Path) -> ConfigError:
    """One line for the first problem pydantic found in `file`: the key and what is wrong."""
    err = exc.errors()[0]
    where = ".".join(_loc(part) for part in err["loc"]) or "(top level)"
    where = where.replace(".[", "[")
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return ConfigError(f"{file}: {where}: {message}{more}")


def _loc(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None or value.is_absolute():
        return value
    return base / value


def _resolve_key(base: Path, value: str | None) -> str | None:
    if value is None or value.startswith("pkcs11:"):
        return value
    return str(_resolve(base, Path(value)))


def _resolve_db(base: Path, url: str) -> str:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        rest = url[len(prefix) :]
        if rest and not rest.startswith("/") and rest != ":memory:":
            return prefix + str(base / rest)
    return url


def _resolve_port(base: Path, port: str) -> str:
    # pyserial URLs (socket://, rfc2217://, loop://) and absolute device paths pass through.
    if "://" in port or port.startswith("/"):
        return port
    return str(base / port)


def _resolve_program(base: Path, command: tuple[str, ...] | None) -> tuple[str, ...] | None:
    # "./flash.sh" is next to the config; a bare "STM32_Programmer_CLI" is looked up on PATH.
    if command is None or "/" not in command[0] or command[0].startswith("/"):
        return command
    return (str(base / command[0]), *command[1:])


def _resolve_steps(base: Path, steps: StepsSection) -> StepsSection:
    fields = steps.model_fields_set & {"pre_command", "post_command"}
    if not fields:
        return steps
    return steps.model_copy(
        update={key: _resolve_program(base, getattr(steps, key)) for key in fields}
    )


def _resolved_config(self: LineConfig, base: Path) -> LineConfig:
    pki = self.pki.resolved(base)
    database = self.database.model_copy(update={"url": _resolve_db(base, self.database.url)})
    jigs = [
        jig.model_copy(
            update={
                "port": _resolve_port(base, jig.port),
                "pre_command": _resolve_program(base, jig.pre_command),
                "post_command": _resolve_program(base, jig.post_command),
            }
        )
        for jig in self.jigs
    ]
    update: dict[str, object] = {
        "pki": pki,
        "database": database,
        "jigs": jigs,
        "steps": _resolve_steps(base, self.steps),
        "stations": {name: _resolve_steps(base, st) for name, st in self.stations.items()},
    }
    if self.mqtt is not None:
        update["mqtt"] = self.mqtt.model_copy(
            update={
                key: _resolve(base, getattr(self.mqtt, key))
                for key in ("password_file", "ca_file", "client_cert", "client_key")
            }
        )
    if self.onboarding is not None:
        update["onboarding"] = self.onboarding.model_copy(
            update={"passcode_key_file": _resolve(base, self.onboarding.passcode_key_file)}
        )
    if self.labels is not None:
        update["labels"] = self.labels.model_copy(
            update={"folder": _resolve(base, self.labels.folder)}
        )
    return self.model_copy(update=update)
