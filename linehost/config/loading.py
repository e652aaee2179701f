"""Reading a station config file: TOML in, a validated LineConfig out, every problem named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from linehost.config.sections import LineConfig
from linehost.config.types import BASE
from linehost.errors import ConfigError


class ConfigProblems(ConfigError):
    """Several problems in one config file: str() has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


M = TypeVar("M", bound=BaseModel)


def load_config(path: str | Path) -> LineConfig:
    """Read and validate a station config; relative paths are resolved against its folder."""
    file = Path(path)
    return parse_config(read_toml(file), file)


def read_toml(file: Path) -> dict[str, Any]:
    """The parsed TOML document in `file`; ConfigError naming the file and the problem."""
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
    """Validate an already-parsed TOML document that came from `file`; ConfigError with one
    line per problem, each naming the file, the table and the key."""
    return validate(LineConfig, raw, file)


def validate(model: type[M], raw: dict[str, Any], file: Path) -> M:
    """`model` from a TOML document read from `file` (relative paths resolved against its
    folder); ConfigError with one line per problem, each naming the file, table and key."""
    try:
        return model.model_validate({**raw, "source": file}, context={BASE: file.parent})
    except ValidationError as exc:
        problems = [f"{file}: {where}: {message}" for where, message in _problems(exc)]
        if len(problems) == 1:
            raise ConfigError(problems[0]) from None
        raise ConfigProblems(problems) from None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(where, message) per problem: the first error of each key (a union reports one per arm)."""
    seen: dict[str, str] = {}
    for err in exc.errors():
        where = _where(err["loc"])
        if where in seen:
            continue
        seen[where] = _message(err)
    return list(seen.items())


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and not part.isidentifier() and parts:
            break  # pydantic's name of a union arm or validator, not a key
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])
