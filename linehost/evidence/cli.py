"""`linehost audit keygen | prove | check-proof` and `verify --checkpoints`: the handlers
(their arguments are in linehost.commands.audit)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from linehost.config import load_config
from linehost.errors import ConfigError
from linehost.evidence.checkpoint import (
    ED25519,
    generate_key_pair,
    key_id_of,
    load_public_key,
    public_pem,
)
from linehost.evidence.proof import build_proof, check_proof
from linehost.evidence.verify import CheckpointReport, verify_against_checkpoints


@dataclass(frozen=True, slots=True)
class KeygenOptions:
    """`audit keygen` as parsed: where the key pair goes, and its algorithm."""

    out: Path  # folder for audit.key, audit.pub
    algorithm: str = ED25519  # or ECDSA_P256


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """`audit prove` as parsed: the device (by UID or DAC serial) and the proof file to write."""

    config: Path
    out: Path
    uid: str | None = None
    serial: str | None = None  # hex


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """`audit check-proof` as parsed: the proof file and the auditor's public key."""

    proof: Path
    audit_pubkey: Path


def keygen_command(args: KeygenOptions) -> int:
    """Write the key pair, print the public key and its id for auditors."""
    key_path, pub_path, public = generate_key_pair(args.out, args.algorithm)
    print(public_pem(public), end="")
    print(f"key_id {key_id_of(public)}")
    print(
        f"linehost: private key {key_path} (keep it off the database host), "
        f"public key {pub_path} (give it to auditors)",
        file=sys.stderr,
    )
    return 0


def prove_command(args: ProofRequest) -> int:
    """Write the inclusion proof of `--uid` / `--serial` to `--out`."""
    from linehost.store.audit import Audit

    config = load_config(args.config)

    async def go() -> dict[str, object]:
        audit = await Audit.open(config.database.url)
        try:
            return await build_proof(audit.engine, uid=args.uid, serial=args.serial)
        finally:
            await audit.close()

    proof = asyncio.run(go())
    text = json.dumps(proof, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"--out {args.out}: exists already") from None
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    records = proof["assignments"]
    assert isinstance(records, list)
    print(f"proof of {len(records)} assignment(s) written to {args.out}")
    return 0


def check_proof_command(args: ProofCheck) -> int:
    """Check a proof with the audit public key alone; exit 1 with one line per problem."""
    public = load_public_key(args.audit_pubkey)
    try:
        proof = json.loads(args.proof.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{args.proof}: cannot read: {exc.strerror}") from None
    except ValueError:
        print(f"FAIL {args.proof}: not JSON")
        return 1
    problems, checkpoint = check_proof(proof, public)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems or checkpoint is None:
        print(f"check-proof: {len(problems)} problem(s)")
        return 1
    print(
        f"check-proof: OK — {len(proof['assignments'])} assignment record(s) of line "
        f"{checkpoint.line!r} are in its audit log of {checkpoint.tree_size} rows, signed "
        f"{checkpoint.at} by key {checkpoint.key_id[:16]}…"
    )
    return 0


def checkpoint_report(
    checkpoints: Path | None, audit_pubkey: Path | None, database_url: str
) -> CheckpointReport | None:
    """With `--checkpoints`: the database checked against the checkpoint files; else None."""
    if checkpoints is None:
        if audit_pubkey is not None:
            raise ConfigError("--audit-pubkey needs --checkpoints DIR")
        return None
    if audit_pubkey is None:
        raise ConfigError("--checkpoints needs --audit-pubkey FILE (the auditor's copy)")
    public = load_public_key(audit_pubkey)
    from linehost.store.audit import Audit

    async def go() -> CheckpointReport:
        audit = await Audit.open(database_url)
        try:
            return await verify_against_checkpoints(audit.engine, checkpoints, public)
        finally:
            await audit.close()

    return asyncio.run(go())
