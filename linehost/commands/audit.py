"""`linehost audit ...`: records and histories for auditors (implemented in linehost.audit_cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linehost.audit_cli import RecordQuery
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
    _checkpoint_args(verify)
    _evidence_parsers(audit_sub)
    bundles = audit_sub.add_parser("bundles", help="pre-issued DAC pools: remaining per bundle")
    bundles.set_defaults(handler=_bundles)


def _evidence_parsers(audit_sub: Subparsers) -> None:
    """Add keygen, prove and check-proof (implemented in linehost.evidence.cli)."""
    from linehost.evidence.checkpoint import ECDSA_P256, ED25519

    keygen = audit_sub.add_parser("keygen", help="make the audit checkpoint key pair")
    keygen.add_argument("--out", type=Path, required=True, help="folder for audit.key, audit.pub")
    keygen.add_argument("--algorithm", choices=[ED25519, ECDSA_P256], default=ED25519)
    keygen.set_defaults(handler=_keygen, needs_config=False)
    prove = audit_sub.add_parser("prove", help="inclusion proof of a device's records")
    which = prove.add_mutually_exclusive_group(required=True)
    which.add_argument("--uid", default=None)
    which.add_argument("--serial", default=None, help="DAC serial (hex)")
    prove.add_argument("--out", type=Path, required=True)
    prove.set_defaults(handler=_prove)
    check = audit_sub.add_parser("check-proof", help="check an inclusion proof offline")
    check.add_argument("proof", type=Path)
    check.add_argument("--audit-pubkey", type=Path, required=True)
    check.set_defaults(handler=_check_proof, needs_config=False)


def _checkpoint_args(verify: argparse.ArgumentParser) -> None:
    """`verify --checkpoints DIR --audit-pubkey FILE`."""
    verify.add_argument("--checkpoints", type=Path, default=None, metavar="DIR",
                        help="also check against the signed checkpoint files in DIR")  # fmt: skip
    verify.add_argument("--audit-pubkey", type=Path, default=None, metavar="FILE")


def _record_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--since", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--until", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--station", default=None)
    parser.add_argument("--jig", default=None)
    parser.add_argument("--work-order", default=None, help="only records of this work order")


def _query(args: argparse.Namespace) -> RecordQuery:
    from linehost.audit_cli import RecordQuery

    return RecordQuery(
        config=args.config,
        format=args.format,
        since=args.since,
        until=args.until,
        station=args.station,
        jig=args.jig,
        work_order=args.work_order,
        status=getattr(args, "status", None),  # export only
        outcome=getattr(args, "outcome", None),  # attempts only
        include_onboarding=getattr(args, "include_onboarding", False),
    )


def _export(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_assignments

    return export_assignments(_query(args))


def _attempts(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_attempts

    return export_attempts(_query(args))


def _controls(args: argparse.Namespace) -> int:
    from linehost.audit_cli import ControlQuery, export_controls

    query = ControlQuery(args.config, args.format, args.since, args.until, args.line, args.user)
    return export_controls(query)


def _uid(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_uid

    return show_uid(args.config, args.uid)


def _dac(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_dac

    return show_dac(args.config, args.serial_or_sha256)


def _verify(args: argparse.Namespace) -> int:
    from linehost.audit_cli import VerifyOptions, verify

    return verify(VerifyOptions(args.config, args.checkpoints, args.audit_pubkey))


def _bundles(args: argparse.Namespace) -> int:
    from linehost.pki.cli import show_bundles

    return show_bundles(args.config)


def _keygen(args: argparse.Namespace) -> int:
    from linehost.evidence.cli import KeygenOptions, keygen_command

    return keygen_command(KeygenOptions(args.out, args.algorithm))


def _prove(args: argparse.Namespace) -> int:
    from linehost.evidence.cli import ProofRequest, prove_command

    return prove_command(ProofRequest(args.config, args.out, args.uid, args.serial))


def _check_proof(args: argparse.Namespace) -> int:
    from linehost.evidence.cli import ProofCheck, check_proof_command

    return check_proof_command(ProofCheck(args.proof, args.audit_pubkey))
