"""`linehost pki ...`: development PKI and pre-issued DAC bundles."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import EXIT_OK, UserError, config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


@dataclass(frozen=True, slots=True)
class InitDevOptions:
    """`linehost pki init-dev` as parsed and checked."""

    out: Path
    vid: str
    pid: str
    cd: bool


def register(subparsers: Subparsers) -> None:
    """Add `pki init-dev|import-bundle`."""
    pki = subparsers.add_parser("pki", help="PKI tools")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init_dev = pki_sub.add_parser(
        "init-dev", help="a development PAA + PAI for demos and tests (never for production)"
    )
    init_dev.add_argument("--out", type=Path, required=True)
    init_dev.add_argument("--vid", default="FFF1")
    init_dev.add_argument("--pid", default="8000")
    init_dev.add_argument(
        "--no-cd",
        dest="cd",
        action="store_false",
        help="do not write the test Certification Declaration (cd.der)",
    )
    init_dev.set_defaults(handler=lambda args: init_dev_command(_init_dev_options(args)))
    import_bundle = pki_sub.add_parser(
        "import-bundle",
        help="load pre-issued DACs keyed by UID (a directory of <UID>*.pem, or uid,dac CSV)",
    )
    config_arg(import_bundle)
    import_bundle.add_argument("source", type=Path, metavar="SOURCE")
    import_bundle.add_argument(
        "--bundle", default=None, help="bundle name in the pool (default: the source's name)"
    )
    import_bundle.set_defaults(handler=_import_bundle)


def init_dev_command(options: InitDevOptions) -> int:
    """Write a development PAA + PAI (and CD) and list the files."""
    from linehost.pki.devpki import init_dev

    made = init_dev(options.out, vid=options.vid, pid=options.pid, cd=options.cd)
    print(f"development PKI written to {options.out} (never use it in production):")
    for path in (made.paa_cert, made.paa_key, made.pai_cert, made.pai_key, made.cd):
        if path is not None:
            print(f"  {path}")
    return EXIT_OK


def _init_dev_options(args: argparse.Namespace) -> InitDevOptions:
    return InitDevOptions(
        args.out, _vid_pid(args.vid, "--vid"), _vid_pid(args.pid, "--pid"), args.cd
    )


def _vid_pid(text: str, name: str) -> str:
    from linehost.pki.vidpid import parse_vid_pid

    try:
        return parse_vid_pid(text)
    except ValueError:
        raise UserError(f"{name} must be exactly 4 hex digits, got {text!r}") from None


def _import_bundle(args: argparse.Namespace) -> int:
    from linehost.pki.cli import import_bundle

    return import_bundle(args)
