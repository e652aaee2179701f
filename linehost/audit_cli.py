"""`linehost audit ...`: records and histories for auditors, and `verify`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.config import LineConfig, load_config
from linehost.errors import ConfigError
from linehost.evidence.cli import checkpoint_report
from linehost.pki.local import load_certificate
from linehost.pki.profile import check_dac_der, check_pai, describe
from linehost.store.audit import Audit

ASSIGNMENT_FIELDS = [
    "uid",
    "status",
    "dac_serial",
    "dac_sha256",
    "dac_pem",
    "pai_sha256",
    "vid",
    "pid",
    "line",
    "station",
    "jig",
    "attempt_id",
    "issued_at",
    "confirmed_at",
    "work_order",
    "revoked_at",
    "revocation_reason",
    "key_proof",
]
ATTEMPT_FIELDS = [
    "attempt_id",
    "uid",
    "line",
    "station",
    "jig",
    "outcome",
    "detail",
    "device_code",
    "dac_serial",
    "started_at",
    "ended_at",
    "work_order",
    "key_proof",
    "attest_nonce",
    "attest_signature",
]


def export_assignments(args: argparse.Namespace) -> int:
    """One record per assignment, as JSON lines or CSV, on stdout."""
    config = load_config(args.config)
    since, until = _window(args)
    if getattr(args, "include_onboarding", False):
        return _export_with_onboarding(args, config, since, until)

    async def go() -> int:
        async with _audit(config) as audit:
            rows = audit.iter_assignment_records(
                since,
                until,
                station=args.station,
                jig=args.jig,
                status=args.status,
                work_order=getattr(args, "work_order", None),
            )
            return await _write(rows, args.format, ASSIGNMENT_FIELDS, sys.stdout)

    count = asyncio.run(go())
    print(f"{count} assignment record(s)", file=sys.stderr)
    return 0


def _export_with_onboarding(
    args: argparse.Namespace, config: LineConfig, since: datetime | None, until: datetime | None
) -> int:
    """The export plus each device's onboarding data, passcodes unsealed (said on stderr)."""
    from linehost.onboarding.service import ONBOARDING_EXPORT_FIELDS, export_fields, open_seal

    if config.onboarding is None:
        raise ConfigError(
            f"{args.config}: --include-onboarding needs the [onboarding] section (its passcode key)"
        )
    seal = open_seal(config.onboarding)
    print(
        "linehost: --include-onboarding: this export contains setup passcodes and QR/manual "
        "codes in clear; handle it as a secret",
        file=sys.stderr,
    )

    async def records(audit: Audit) -> AsyncIterator[dict[str, Any]]:
        rows = audit.iter_assignment_onboarding(
            since,
            until,
            station=args.station,
            jig=args.jig,
            status=args.status,
            work_order=getattr(args, "work_order", None),
        )
        async for record, found in rows:
            yield record | export_fields(found or {}, seal)

    async def go() -> int:
        async with _audit(config) as audit:
            fields = ASSIGNMENT_FIELDS + ONBOARDING_EXPORT_FIELDS
            return await _write(records(audit), args.format, fields, sys.stdout)

    count = asyncio.run(go())
    print(f"{count} assignment record(s) with onboarding data", file=sys.stderr)
    return 0


def export_controls(args: argparse.Namespace) -> int:
    """One record per supervisor call (the audit chain's `control` rows), on stdout."""
    from linehost.store.controls import CONTROL_FIELDS

    config = load_config(args.config)
    since, until = _window(args)

    async def records(audit: Audit) -> AsyncIterator[dict[str, Any]]:
        rows = audit.iter_control_records(since, until, line=args.line, user=args.user)
        async for row in rows:
            if args.format == "csv":  # one cell: the arguments as JSON
                row["arguments"] = json.dumps(row["arguments"], separators=(",", ":"))
            yield row

    async def go() -> int:
        async with _audit(config) as audit:
            return await _write(records(audit), args.format, CONTROL_FIELDS, sys.stdout)

    count = asyncio.run(go())
    print(f"{count} control record(s)", file=sys.stderr)
    return 0


def export_attempts(args: argparse.Namespace) -> int:
    """One record per attempt, as JSON lines or CSV, on stdout."""
    config = load_config(args.config)
    since, until = _window(args)

    async def go() -> int:
        async with _audit(config) as audit:
            rows = audit.iter_attempt_records(
                since,
                until,
                station=args.station,
                jig=args.jig,
                outcome=args.outcome,
                work_order=getattr(args, "work_order", None),
            )
            return await _write(rows, args.format, ATTEMPT_FIELDS, sys.stdout)

    count = asyncio.run(go())
    print(f"{count} attempt record(s)", file=sys.stderr)
    return 0


def show_uid(args: argparse.Namespace) -> int:
    """Human-readable history of one device."""
    config = load_config(args.config)

    async def go() -> list[dict[str, Any]]:
        async with _audit(config) as audit:
            return await audit.uid_history(args.uid)

    items = asyncio.run(go())
    uid = args.uid.strip().upper()
    if not items:
        print(f"no records for UID {uid}")
        return 1
    print(f"UID {uid}")
    for item in items:
        if item["kind"] == "assignment":
            print(
                f"  {item['at']}  assignment {item['status']:<10} DAC serial {item['dac_serial']}"
                f"  sha256 {item['dac_sha256'][:16]}…  {item['station']}/{item['jig']}"
                + (f"  confirmed {item['confirmed_at']}" if item["confirmed_at"] else "")
                + (
                    f"  REVOKED {item['revoked_at']} ({item['revocation_reason']})"
                    if item.get("revoked_at")
                    else ""
                )
            )
        else:
            code = "" if item["device_code"] is None else f" (device code {item['device_code']})"
            print(
                f"  {item['at']}  attempt    {item['outcome'] or 'running':<19}"
                f" {item['station']}/{item['jig']}  {item['attempt_id']}"
                f"  {item['detail'] or ''}{code}"
            )
    return 0


def show_dac(args: argparse.Namespace) -> int:
    """Human-readable history of one certificate."""
    config = load_config(args.config)

    async def go() -> dict[str, Any] | None:
        async with _audit(config) as audit:
            return await audit.dac_lookup(args.serial_or_sha256)

    found = asyncio.run(go())
    if found is None:
        print(f"no DAC with serial or SHA-256 {args.serial_or_sha256}")
        return 1
    a = found["assignment"]
    print(f"DAC serial {a['dac_serial']}")
    print(f"  sha256      {a['dac_sha256']}")
    print(f"  device UID  {a['uid']}")
    print(f"  status      {a['status']}")
    print(f"  issued      {a['issued_at']} on {a['line']}/{a['station']}/{a['jig']}")
    print(f"  confirmed   {a['confirmed_at'] or '-'}")
    if a.get("revoked_at"):
        print(f"  REVOKED     {a['revoked_at']} ({a['revocation_reason']})")
    print(f"  VID/PID     {a['vid']}/{a['pid']}  PAI sha256 {a['pai_sha256']}")
    print(f"  work order  {a['work_order'] or '-'}")
    print("  deliveries")
    for attempt in found["attempts"]:
        print(
            f"    {attempt['started_at']}  {attempt['outcome'] or 'running':<19}"
            f" {attempt['attempt_id']}  {attempt['detail'] or ''}"
        )
    print("  audit events")
    for event in found["events"]:
        print(f"    {event['at']}  {event['line']}#{event['seq']}  {event['event']}")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Check every DAC against the PAI and its recorded fingerprint, and the audit chain."""
    config = load_config(args.config)
    pai = load_certificate(config.pki.pai_cert, "pki.pai_cert")
    paa = load_certificate(config.pki.paa_cert, "pki.paa_cert") if config.pki.paa_cert else None
    problems: list[str] = []
    pai_problems = check_pai(pai, paa)
    if pai_problems:
        problems.append(f"PAI {config.pki.pai_cert}: {describe(pai_problems)}")

    async def go() -> tuple[int, list[str]]:
        async with _audit(config) as audit:
            checked = 0
            found: list[str] = []
            async for record in audit.iter_assignment_records():
                checked += 1
                found.extend(_check_record(record, pai))
            found.extend(await audit.verify_audit_chain())
            pools.extend(await _bundle_lines(audit))
            return checked, found

    pools: list[str] = []
    checked, found = asyncio.run(go())
    problems.extend(found)
    report = checkpoint_report(args, config.database.url)
    if report is not None:
        problems.extend(report.problems)
    for problem in problems:
        print(f"FAIL {problem}")
    for line in pools:
        print(line)
    if problems:
        print(f"audit verify: {len(problems)} problem(s) in {checked} assignment(s)")
        return 1
    print(
        f"audit verify: OK — {checked} DAC(s) chain to the PAI and match their records; "
        "audit chain intact"
    )
    if report is None:
        print(
            "audit verify: checked the database against itself only; a database administrator "
            "can rewrite it consistently (see --checkpoints DIR --audit-pubkey FILE)"
        )
    else:
        covered = ", ".join(f"{k}: {v} rows" for k, v in sorted(report.lines.items()))
        print(f"audit verify: {report.files} signed checkpoint(s) hold ({covered})")
    return 0


def _check_record(record: dict[str, Any], pai: x509.Certificate) -> list[str]:
    where = f"DAC serial {record['dac_serial']} (UID {record['uid']})"
    try:
        dac = x509.load_pem_x509_certificate(record["dac_pem"].encode())
    except ValueError:
        return [f"{where}: recorded PEM does not parse"]
    problems = []
    der = dac.public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != record["dac_sha256"]:
        problems.append(f"{where}: SHA-256 differs from the recorded fingerprint")
    if format(dac.serial_number, "X") != record["dac_serial"]:
        problems.append(f"{where}: serial differs from the recorded serial")
    pai_sha = hashlib.sha256(pai.public_bytes(serialization.Encoding.DER)).hexdigest()
    if record["pai_sha256"] != pai_sha:
        problems.append(f"{where}: issued under another PAI ({record['pai_sha256'][:16]}…)")
        return problems
    # The full Matter checker on the stored bytes, exactly as a commissioner would see them.
    violations = check_dac_der(der, pai)
    if violations:
        problems.append(f"{where}: {describe(violations)}")
    return problems


async def _bundle_lines(audit: Audit) -> list[str]:
    """Remaining pre-issued DACs per bundle (nothing when no bundle was ever imported)."""
    from linehost.pki.bundle import format_counts
    from linehost.store.bundles import BundlePool

    return format_counts(await BundlePool(audit.engine).counts())


class _audit:
    """Open the read-only audit view of the configured database."""

    def __init__(self, config: LineConfig) -> None:
        self._url = config.database.url
        self._audit: Audit | None = None

    async def __aenter__(self) -> Audit:
        self._audit = await Audit.open(self._url)
        return self._audit

    async def __aexit__(self, *exc: object) -> None:
        if self._audit is not None:
            await self._audit.close()


async def _write(
    rows: AsyncIterator[dict[str, Any]], fmt: str, fields: list[str], out: TextIO
) -> int:
    from linehost.progress import counting

    rows = counting(rows, "exporting records")
    count = 0
    if fmt == "jsonl":
        async for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    async for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        count += 1
    return count


def _window(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    return _parse_time(args.since, "--since"), _parse_time(args.until, "--until")


def _parse_time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{name}: not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
