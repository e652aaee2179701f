"""`linehost pki ...`: development PKI and pre-issued DAC bundles."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    from_paa: Path | None = None  # only a new PAI under this directory's PAA (a rollover)
    valid_days: float | None = None  # the new PAI's lifetime (default: no expiry)


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
    init_dev.add_argument(
        "--from-paa",
        type=Path,
        default=None,
        metavar="DIR",
        help="write only a new PAI (pai.pem, pai.key, a copy of paa.pem) under the PAA that "
        "init-dev wrote in DIR: a PAI rollover rehearsal",
    )
    init_dev.add_argument(
        "--valid-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="with --from-paa: the new PAI expires after DAYS days (default: never)",
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
    register_lifecycle(pki_sub)


def init_dev_command(options: InitDevOptions) -> int:
    """Write a development PAA + PAI (and CD) and list the files."""
    from linehost.pki.devpki import init_dev, issue_dev_pai

    if options.from_paa is not None:
        not_after = None
        if options.valid_days is not None:
            not_after = datetime.now(UTC) + timedelta(days=options.valid_days)
        made = issue_dev_pai(
            options.from_paa, options.out, vid=options.vid, pid=options.pid, not_after=not_after
        )
        print(f"development PAI written to {options.out} under {made.paa_cert}:")
        print(f"  {made.pai_cert}\n  {made.pai_key}")
        return EXIT_OK
    made = init_dev(options.out, vid=options.vid, pid=options.pid, cd=options.cd)
    print(f"development PKI written to {options.out} (never use it in production):")
    for path in (made.paa_cert, made.paa_key, made.pai_cert, made.pai_key, made.cd):
        if path is not None:
            print(f"  {path}")
    return EXIT_OK


def _init_dev_options(args: argparse.Namespace) -> InitDevOptions:
    if args.valid_days is not None and (args.from_paa is None or args.valid_days <= 0):
        raise UserError("--valid-days needs --from-paa and a positive number of days")
    return InitDevOptions(
        args.out,
        _vid_pid(args.vid, "--vid"),
        _vid_pid(args.pid, "--pid"),
        args.cd,
        args.from_paa,
        args.valid_days,
    )


def _vid_pid(text: str, name: str) -> str:
    from linehost.vidpid import parse_vid_pid

    try:
        return parse_vid_pid(text)
    except ValueError:
        raise UserError(f"{name} must be exactly 4 hex digits, got {text!r}") from None


def _import_bundle(args: argparse.Namespace) -> int:
    from linehost.pki.cli import BundleImport, import_bundle

    return import_bundle(BundleImport(args.config, args.source, args.bundle))


def register_lifecycle(pki_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pki revoke|crl|revocation-set|dcl-revocation-point`."""
    from linehost.records import REVOCATION_REASONS

    revoke = pki_sub.add_parser(
        "revoke", help="revoke DACs (recorded and audited), or list revocation candidates"
    )
    config_arg(revoke)
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--uid", help="every DAC of this device")
    what.add_argument("--serial", help="one DAC by serial number (hex)")
    what.add_argument("--sha256", help="one DAC by SHA-256 of its DER")
    what.add_argument("--work-order", help="every DAC of this work order")
    what.add_argument("--from-file", type=Path, help="a file of UIDs, one a line")
    what.add_argument(
        "--candidates",
        action="store_true",
        help="list delivered DACs whose device failed afterwards (revokes nothing)",
    )
    revoke.add_argument("--reason", help=f"one of {', '.join(REVOCATION_REASONS)}")
    revoke.add_argument("--dry-run", action="store_true", help="list, change nothing")
    revoke.set_defaults(handler=_revoke)
    crl = pki_sub.add_parser("crl", help="sign the CRL of each PAI (active and previous)")
    config_arg(crl)
    crl.add_argument(
        "--out",
        type=Path,
        required=True,
        help="CRL file to write; with several PAIs a directory (pai-<SKID>.crl each) or a "
        "file name that gets -<SKID> before its suffix",
    )
    crl.add_argument("--der", action="store_true", help="DER instead of PEM")
    crl.set_defaults(handler=_crl)
    rset = pki_sub.add_parser("revocation-set", help="the Matter SDK revocation-set JSON")
    config_arg(rset)
    rset.add_argument("--out", type=Path, required=True)
    rset.set_defaults(handler=_revocation_set)
    dcl = pki_sub.add_parser(
        "dcl-revocation-point", help="print the `dcld tx pki add-revocation-point` arguments"
    )
    config_arg(dcl)
    dcl.add_argument("--data-url", required=True, help="where the CRL is published (http/https)")
    dcl.add_argument("--crl", type=Path, help="the published CRL file (default: sign one now)")
    dcl.add_argument("--label", default=None, help="DCL label (default: the line name)")
    dcl.add_argument(
        "--pai",
        default=None,
        metavar="SKID",
        help="which configured PAI (its subjectKeyIdentifier in hex; default: the active one)",
    )
    dcl.set_defaults(handler=_dcl)


def _revoke(args: argparse.Namespace) -> int:
    from linehost.commands.revocation import candidates_command, revoke_command
    from linehost.pki import lifecycle

    if args.candidates:
        if args.reason is not None or args.dry_run:
            raise UserError("--candidates lists only: it takes no --reason or --dry-run")
        return candidates_command(args.config)
    if args.reason is None:
        raise UserError("--reason is required (e.g. keyCompromise, cessationOfOperation)")
    reason = lifecycle.parse_reason(args.reason)
    if args.uid is not None:
        selection = lifecycle.Selection(uids=(lifecycle.parse_uid(args.uid),))
    elif args.serial is not None:
        selection = lifecycle.Selection(serials=(lifecycle.parse_serial(args.serial),))
    elif args.sha256 is not None:
        selection = lifecycle.Selection(sha256s=(lifecycle.parse_sha256(args.sha256),))
    elif args.work_order is not None:
        selection = lifecycle.Selection(work_order=args.work_order)
    else:
        selection = lifecycle.Selection(uids=lifecycle.read_uid_file(args.from_file))
    return revoke_command(args.config, selection, reason=reason, dry_run=args.dry_run)


def _crl(args: argparse.Namespace) -> int:
    from linehost.commands.revocation import crl_command

    return crl_command(args.config, args.out, der=args.der)


def _revocation_set(args: argparse.Namespace) -> int:
    from linehost.commands.revocation import revocation_set_command

    return revocation_set_command(args.config, args.out)


def _dcl(args: argparse.Namespace) -> int:
    from linehost.commands.revocation import dcl_command

    return dcl_command(args.config, args.data_url, crl=args.crl, label=args.label, pai=args.pai)
