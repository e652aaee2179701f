"""Entry points only: build the parser from the command groups, dispatch, map errors to exits."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from linehost import __version__
from linehost.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, GROUPS, UserError
from linehost.errors import LinehostError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The whole `linehost` command tree."""
    parser = argparse.ArgumentParser(
        prog="linehost",
        description="Line host for provisioning Matter device credentials on programming jigs.",
    )
    parser.add_argument("--version", action="version", version=f"linehost {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json", "console"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"linehost.commands.{group}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_config", False) and args.config is None:
        parser.error(f"{args.command} {args.audit_command}: --config FILE is required")
    from linehost.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        code: int = args.handler(args)
    except LinehostError as exc:
        # One line per problem (a config file may hold several).
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"linehost: error: {line}", file=sys.stderr)
        return EXIT_USAGE if _is_input_error(exc) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `linehost audit export | head` is fine.
        return EXIT_OK
    return code


def _is_input_error(exc: LinehostError) -> bool:
    from linehost.errors import ConfigError, PkiError

    return isinstance(exc, UserError | ConfigError | PkiError)


if __name__ == "__main__":
    sys.exit(main())
