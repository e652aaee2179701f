"""The `linehost pki revoke|crl|revocation-set|dcl-revocation-point` handlers: load, run, print
(the `pki` group in commands/pki.py registers them)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from linehost.commands import EXIT_OK
from linehost.config import load_config
from linehost.pki import lifecycle
from linehost.pki.crl import crl_bytes
from linehost.store.revocations import Candidate


def revoke_command(
    config_path: Path, selection: lifecycle.Selection, *, reason: str, dry_run: bool
) -> int:
    """Revoke the selection in one transaction (or list it) and print each DAC and a summary."""
    config = load_config(config_path)

    async def go() -> lifecycle.RevokeReport:
        async with lifecycle.open_ledger(config, write=not dry_run) as ledger:
            return await lifecycle.revoke(
                ledger, selection, reason=reason, dry_run=dry_run, by=lifecycle.operator()
            )

    report = asyncio.run(go())
    verb = "WOULD REVOKE" if dry_run else "REVOKED"
    out = sys.stdout
    for target in report.revoked:
        out.write(f"{verb} {target.dac_serial} uid {target.uid} ({reason})\n")
    for target in report.skipped:
        out.write(f"SKIP {target.dac_serial} uid {target.uid}: already revoked ({target.reason})\n")
    done = "would be revoked (dry run: nothing changed)" if dry_run else "revoked"
    out.write(
        f"{len(report.revoked)} DAC(s) {done}, {len(report.skipped)} already revoked; "
        f"reason {reason}\n"
    )
    if not dry_run:
        out.write("publish a new CRL: linehost pki crl (linehost run re-signs its own)\n")
    return EXIT_OK


def candidates_command(config_path: Path) -> int:
    """List revocation candidates: delivered DACs whose device failed afterwards."""
    config = load_config(config_path)

    async def go() -> list[Candidate]:
        async with lifecycle.open_ledger(config, write=False) as ledger:
            return await ledger.candidates()

    found = asyncio.run(go())
    for c in found:
        print(f"CANDIDATE {c.dac_serial} uid {c.uid} work_order {c.work_order or '-'}: {c.why}")
    print(f"{len(found)} candidate(s); revoke with: linehost pki revoke --serial S --reason R")
    return EXIT_OK


def crl_command(config_path: Path, out: Path, *, der: bool) -> int:
    """Sign each PAI's CRL with its next CRL number and write it (one file per PAI)."""
    config = load_config(config_path)
    pais = lifecycle.configured_pais(config.pki)
    paths = lifecycle.crl_paths(out, [pai for _, pai in pais])
    signers = [lifecycle.open_crl_signer(config.pki, pai.certificate, keys) for keys, pai in pais]

    async def go() -> list[lifecycle.SignedCrl]:
        try:
            async with lifecycle.open_ledger(config, write=True) as ledger:
                return [
                    await lifecycle.sign_crl(ledger, pai, crl_signer, config.pki)
                    for (_, pai), crl_signer in zip(pais, signers, strict=True)
                ]
        finally:
            for crl_signer in signers:
                await crl_signer.signer.aclose()

    for signed, path, crl_signer, (keys, _) in zip(
        asyncio.run(go()), paths, signers, pais, strict=True
    ):
        lifecycle.write_crl(signed, path, der=der)
        print(
            f"CRL {path}: number {signed.number}, {signed.entries} revoked DAC(s), "
            f"thisUpdate {signed.this_update.isoformat()}, "
            f"nextUpdate {signed.next_update.isoformat()}"
            + (", indirect (delegated signer)" if crl_signer.indirect else "")
            + (f"; PAI {keys.pai_cert}" + (" (active)" if keys.active else " (previous)"))
            * (len(pais) > 1)
        )
    return EXIT_OK


def revocation_set_command(config_path: Path, out: Path) -> int:
    """Write the Matter SDK revocation-set JSON of every PAI's revoked DACs."""
    config = load_config(config_path)
    pais = lifecycle.configured_pais(config.pki)
    signers = [lifecycle.open_crl_signer(config.pki, pai.certificate, keys) for keys, pai in pais]

    async def go() -> list[dict[str, Any]]:
        try:
            async with lifecycle.open_ledger(config, write=False) as ledger:
                entries: list[dict[str, Any]] = []
                for (_, pai), crl_signer in zip(pais, signers, strict=True):
                    entries.extend(await lifecycle.revocation_set(ledger, pai, crl_signer))
                return entries
        finally:
            for crl_signer in signers:
                await crl_signer.signer.aclose()

    entries = asyncio.run(go())
    out.write_text(lifecycle.json_text(entries))
    count = sum(len(e["revoked_serial_numbers"]) for e in entries)
    print(f"revocation set {out}: {count} revoked serial(s) under {len(entries)} issuer(s)")
    return EXIT_OK


def dcl_command(
    config_path: Path,
    data_url: str,
    *,
    crl: Path | None,
    label: str | None,
    pai: str | None = None,
) -> int:
    """Print the `dcld tx pki add-revocation-point` line of one PAI (by SKID; default: the
    active one), checked against the CRL."""
    config = load_config(config_path)
    keys, issuing = lifecycle.select_pai(config.pki, pai)
    crl_signer = lifecycle.open_crl_signer(config.pki, issuing.certificate, keys)
    pai_of = issuing

    async def fresh() -> bytes:
        try:
            async with lifecycle.open_ledger(config, write=True) as ledger:
                signed = await lifecycle.sign_crl(ledger, pai_of, crl_signer, config.pki)
                return crl_bytes(signed.crl, pem=False)
        finally:
            await crl_signer.signer.aclose()

    if crl is not None:
        asyncio.run(crl_signer.signer.aclose())
        crl_der = lifecycle.read_crl_der(crl)
    else:
        crl_der = asyncio.run(fresh())
    args = lifecycle.dcl_arguments(
        pai_of, crl_signer, crl_der, data_url, label=label or config.line.name
    )
    print(lifecycle.shell_line(args))
    return EXIT_OK
