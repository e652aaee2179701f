"""Value types of the station config: paths relative to the file, secret references, ids.

A path-like field says by its type how it is resolved: `load_config` validates with the
file's folder in the validation context (`BASE`), and each type resolves itself against it.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from linehost.config.placeholders import STEP_PLACEHOLDERS
from linehost.errors import ConfigError
from linehost.vidpid import parse_vid_pid

#: Validation context key: the folder of the config file (relative paths are relative to it).
BASE: Final = "base"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):(?P<port>\d{1,5})")
_SQLITE = "sqlite+aiosqlite:///"


class Section(BaseModel):
    """A config table: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret the config names by an environment variable or a file, never holds itself."""

    key: str  # the config key stem: the secret comes from `{key}_env` or `{key}_file`
    env: str | None = None
    file: Path | None = None

    @property
    def given(self) -> bool:
        """True when a source is configured."""
        return self.env is not None or self.file is not None

    @property
    def source(self) -> str:
        """Where the secret comes from, for messages."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self) -> bytes | None:
        """The secret's bytes as stored (None when no source is configured); ConfigError naming
        the key when the variable is unset or the file unreadable."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"{self.key}_env: environment variable {self.env} is not set")
            return value.encode()
        if self.file:
            try:
                return self.file.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{self.key}_file: cannot read {self.file}: {exc.strerror}"
                ) from None
        return None

    def read_text(self) -> str | None:
        """The secret as UTF-8 text without surrounding white space (None when not configured)."""
        raw = self.read()
        if raw is None:
            return None
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{self.key}_file: cannot read {self.file}: not UTF-8 text") from None


def one_secret_source(ref: SecretRef) -> None:
    """ValueError when both `{key}_env` and `{key}_file` are given."""
    if ref.env is not None and ref.file is not None:
        stem = ref.key.rsplit(".", 1)[-1]
        raise ValueError(f"give {stem}_env or {stem}_file, not both")


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets; empty host = every interface) -> (host, port)."""
    match = _LISTEN.fullmatch(value)
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080, got {value!r}")
    return match["host"].strip("[]") or "0.0.0.0", int(match["port"])


def placeholders(template: str) -> set[str]:
    """The `{name}` placeholders of a str.format template; ValueError when it does not parse."""
    return {f[1] for f in string.Formatter().parse(template) if f[1] is not None}


def check_placeholders(template: str, allowed: Collection[str]) -> set[str]:
    """The template's placeholders; ValueError naming any not in `allowed`."""
    names = placeholders(template)
    unknown = names - set(allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; may use {braced(allowed)}")
    return names


def braced(names: Collection[str]) -> str:
    """`{a}, {b}, ...` for messages."""
    return ", ".join("{" + name + "}" for name in sorted(names))


def _base(info: ValidationInfo) -> Path | None:
    context = info.context
    return context.get(BASE) if isinstance(context, dict) else None


def _relative_path(value: Path, info: ValidationInfo) -> Path:
    base = _base(info)
    return value if base is None or value.is_absolute() else base / value


def _key_location(value: str, info: ValidationInfo) -> str:
    if value.startswith("pkcs11:"):
        return value
    return str(_relative_path(Path(value), info))


def _database_url(value: str, info: ValidationInfo) -> str:
    if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    base = _base(info)
    if base is not None and value.startswith(_SQLITE):
        rest = value[len(_SQLITE) :]
        if rest and not rest.startswith("/") and rest != ":memory:":
            return _SQLITE + str(base / rest)
    return value


def _port_location(value: str, info: ValidationInfo) -> str:
    # pyserial URLs (socket://, rfc2217://, loop://) and absolute device paths pass through.
    if "://" in value or value.startswith("/"):
        return value
    return str(_relative_path(Path(value), info))


def _step_command(value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    if not value or not value[0]:
        raise ValueError("must be a non-empty list: the program, then its arguments")
    for arg in value:
        try:
            unknown = placeholders(arg) - STEP_PLACEHOLDERS
        except ValueError as exc:
            raise ValueError(f"argument {arg!r}: {exc} (write {{{{ or }}}} for a brace)") from None
        if unknown:
            raise ValueError(f"argument {arg!r}: unknown placeholder(s) {sorted(unknown)}; "
                             f"may use {braced(STEP_PLACEHOLDERS)}")  # fmt: skip
    # "./flash.sh" is next to the config; a bare "STM32_Programmer_CLI" is looked up on PATH.
    program = value[0]
    if "/" not in program or program.startswith("/"):
        return value
    return (str(_relative_path(Path(program), info)), *value[1:])


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '_', '.', '-' (used in MQTT topics)"
        )
    return value


def _listen(value: str) -> str:
    parse_listen(value)
    return value


#: A file path; relative to the config file's folder.
ConfigPath = Annotated[Path, AfterValidator(_relative_path)]
#: A PEM key path (relative to the config file) or a pkcs11: URI.
KeyLocation = Annotated[str, AfterValidator(_key_location)]
#: An SQLAlchemy async URL; a relative SQLite file is relative to the config file.
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
#: A serial device path (relative to the config file) or a pyserial URL.
PortLocation = Annotated[str, AfterValidator(_port_location)]
#: An argument list with step placeholders; a program with a '/' is relative to the config.
StepArgv = Annotated[tuple[str, ...], AfterValidator(_step_command)]
#: A name used in MQTT topics and records.
Name = Annotated[str, AfterValidator(_name)]
#: A Matter vendor or product id: 4 hex digits, kept upper-case.
VidPid = Annotated[str, AfterValidator(parse_vid_pid)]
#: `HOST:PORT` to listen on.
Listen = Annotated[str, AfterValidator(_listen)]
