"""The `linehost` command groups: one module per group, each with `register(subparsers)`.

To add a group (e.g. `linehost/commands/ports.py`):

1. define `register(subparsers: Subparsers) -> None` that adds the group's parser(s) and sets
   `handler=` on each leaf to a function `(argparse.Namespace) -> int`;
2. in that function, build a small frozen dataclass of the parsed options (or pass explicit
   parameters) and call the package with it: no `argparse.Namespace` below this edge;
3. raise `UserError` (or any `LinehostError`) for bad input: `linehost.cli` prints it as one
   line per problem and exits 2 for input errors (`UserError`, `ConfigError`, `PkiError`),
   1 for the rest; return `EXIT_OK` / `EXIT_FAILED` otherwise;
4. add the module to `GROUPS` below, in the order of `linehost --help`.

Import heavy modules inside the handlers, so `linehost --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Final

from linehost.errors import LinehostError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the command ran and found a problem (audit verify) or a runtime error
EXIT_USAGE: Final = 2  # bad input: arguments, config, files

#: The command group modules, in the order `linehost --help` lists them.
GROUPS: Final = ("run", "demo", "db", "audit", "pki", "dashboard", "label", "sim", "status",
                 "workorder", "ports", "doctor", "gateway")  # fmt: skip


class UserError(LinehostError):
    """Bad input from the person at the keyboard."""


def config_arg(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` option every line command takes."""
    parser.add_argument("--config", required=True, type=Path, help="station config (TOML)")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value
