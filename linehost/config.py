"""The station configuration: typed models, TOML loading, errors naming file, key and problem."""

from __future__ import annotations

import os
import re
import tomllib
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


class PkiSection(_Section):
    """`[pki]`: where DACs come from and how they look."""

    issuer: Literal["local"] = "local"
    pai_cert: Path
    pai_key: str  # a PEM path, or (later) a pkcs11: URI
    paa_cert: Path | None = None
    pai_key_passphrase_env: str | None = None
    pai_key_passphrase_file: Path | None = None
    vid: str
    pid: str
    cn_template: str = "{uid}"
    allow_reprovision: bool = False

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
            value.format(uid="00", line="l", station="s", jig="j")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"may use only {{uid}}, {{line}}, {{station}}, {{jig}} ({exc})"
            ) from None
        return value

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


class ProtocolSection(_Section):
    """`[protocol]`: jig protocol timing in seconds."""

    sync_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    csr_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    result_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    empty_after_syncs: Annotated[int, Field(ge=1, le=100)] = 3


class JigSection(_Section):
    """`[[jigs]]`: one programming jig and its serial port."""

    name: str
    station: str
    port: str
    baudrate: Annotated[int, Field(gt=0)] = 115200

    _names = field_validator("name", "station")(_check_name)


class LineConfig(_Section):
    """A whole station configuration file."""

    line: LineSection
    database: DatabaseSection = DatabaseSection()
    pki: PkiSection
    protocol: ProtocolSection = ProtocolSection()
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
        return self

    def resolved(self, base: Path) -> LineConfig:
        """A copy with every relative path made relative to `base` (the file's folder)."""
        return _resolved_config(self, base)


def load_config(path: str | Path) -> LineConfig:
    """Read and validate a station config; relative paths are resolved against its folder."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: bad TOML: {exc}") from None
    return parse_config(raw, file)


def parse_config(raw: dict[str, object], file: Path) -> LineConfig:
    """Validate an already-parsed TOML document that came from `file`."""
    try:
        config = LineConfig.model_validate({**raw, "source": file})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(_loc(part) for part in err["loc"]) or "(top level)"
        where = where.replace(".[", "[")
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{file}: {where}: {message}{more}") from None
    return config.resolved(file.parent)


def _loc(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None or value.is_absolute():
        return value
    return base / value


def _resolve_key(base: Path, value: str) -> str:
    if value.startswith("pkcs11:"):
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


def _resolved_config(self: LineConfig, base: Path) -> LineConfig:
    pki = self.pki.model_copy(
        update={
            "pai_cert": _resolve(base, self.pki.pai_cert),
            "pai_key": _resolve_key(base, self.pki.pai_key),
            "paa_cert": _resolve(base, self.pki.paa_cert),
            "pai_key_passphrase_file": _resolve(base, self.pki.pai_key_passphrase_file),
        }
    )
    database = self.database.model_copy(update={"url": _resolve_db(base, self.database.url)})
    jigs = [jig.model_copy(update={"port": _resolve_port(base, jig.port)}) for jig in self.jigs]
    return self.model_copy(update={"pki": pki, "database": database, "jigs": jigs})
