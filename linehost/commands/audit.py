"""`linehost audit ...`: records and histories for auditors (implemented in linehost.audit_cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linehost.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add `audit export|attempts|controls|uid|dac|verify|bundles|keygen|prove|check-proof`."""
    audit = subparsers.add_parser("audit", help="records of assignments and attempts, for auditors")
    # Not required here: keygen and check-proof need no config; main() asks for it elsewhere.
    audit.add_argument("--config", type=Path, default=None, help="station config (TOML)")
    audit.set_defaults(needs_config=True)
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="QUERY")
    export = audit_sub.add_parser("export", help="one record per assignment")
    _record_args(export)
    export.add_argument("--status", default=None, help="only assignments in this status")
    export.add_argument(
        "--include-onboarding",
        action="store_true",
        help="add each device's onboarding data, passcode and QR/manual codes included "
        "(for label reprint and MES hand-over; needs the passcode key)",
    )
    export.set_defaults(handler=_export)
    attempts = audit_sub.add_parser("attempts", help="one record per attempt")
    _record_args(attempts)
    attempts.add_argument("--outcome", default=None, help="only attempts with this outcome")
    attempts.set_defaults(handler=_attempts)
    controls = audit_sub.add_parser(
        "controls",
        help="supervisor calls (OPC UA jig Hold/Resume, WorkOrder Open/Close), refused ones too",
    )
    controls.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    controls.add_argument("--since", default=None, help="ISO 8601 time (UTC if no zone)")
    controls.add_argument("--until", default=None, help="ISO 8601 time (UTC if no zone)")
    controls.add_argument("--line", default=None, help="only calls to this line's host")
    controls.add_argument("--user", default=None, help="only calls by this user")
    controls.set_defaults(handler=_controls)
    uid = audit_sub.add_parser("uid", help="history of one device")
    uid.add_argument("uid")
    uid.set_defaults(handler=_uid)
    dac = audit_sub.add_parser("dac", help="history of one certificate")
    dac.add_argument("serial_or_sha256")
    dac.set_defaults(handler=_dac)
    verify = audit_sub.add_parser(
        "verify", help="check the database against itself and the PKI; exit 0 only if all holds"
    )
    verify.set_defaults(handler=_verify)
    from linehost.evidence.cli import add_parsers, add_verify_arguments

    add_verify_arguments(verify)
    add_parsers(audit_sub)
    bundles = audit_sub.add_parser("bundles", help="pre-issued DAC pools: remaining per bundle")
    bundles.set_defaults(handler=_bundles)


def _record_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--since", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--until", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--station", default=None)
    parser.add_argument("--jig", default=None)
    parser.add_argument("--work-order", default=None, help="only records of this work order")


def _export(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_assignments

    return export_assignments(args)


def _attempts(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_attempts

    return export_attempts(args)


def _controls(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_controls

    return export_controls(args)


def _uid(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_uid

    return show_uid(args)


def _dac(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_dac

    return show_dac(args)


def _verify(args: argparse.Namespace) -> int:
    from linehost.audit_cli import verify

    return verify(args)


def _bundles(args: argparse.Namespace) -> int:
    from linehost.pki.cli import show_bundles

    return show_bundles(args)
