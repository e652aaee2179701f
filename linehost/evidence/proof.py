"""Inclusion proofs: one device's assignment records, their audit rows, the Merkle audit paths
and the signed checkpoint, checked offline (docs/audit.md, "Inclusion proofs")."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import textwrap
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import StoreError
from linehost.evidence.checkpoint import Checkpoint, PublicKey, parse_checkpoint, verify_checkpoint
from linehost.evidence.merkle import inclusion_path, leaf_hash, verify_inclusion
from linehost.evidence.rows import iter_rows, stored_checkpoints
from linehost.records import assignment_record
from linehost.store.engine import translate_error
from linehost.store.models import assignments, audit_log

PROOF_FORMAT: Final = "linehost-audit-proof/1"

#: Export record fields taken from the data of the `assignment_issued` row.
ISSUED_FIELDS: Final = ("uid", "dac_sha256", "pai_sha256", "vid", "pid", "line", "station",
                        "jig", "attempt_id", "work_order", "issued_at")  # fmt: skip
#: The export record fields a proof carries: each one is checked against proven rows.
RECORD_FIELDS: Final = frozenset(
    {*ISSUED_FIELDS, "dac_serial", "status", "confirmed_at", "dac_pem"}
)


async def build_proof(
    engine: AsyncEngine, *, uid: str | None, serial: str | None
) -> dict[str, Any]:
    """The proof for a device (every assignment of `uid`) or one DAC (`serial`), against the
    newest checkpoint in the database; raise StoreError when there is nothing to prove."""
    a = assignments
    if uid is not None:
        where = a.c.uid == uid.strip().upper()
        what = f"UID {uid.strip().upper()}"
    else:
        assert serial is not None
        text = serial.strip().upper().removeprefix("0X").lstrip("0") or "0"
        where = a.c.dac_serial == text
        what = f"DAC serial {text}"
    found = await _all(engine, select(a).where(where).order_by(a.c.issued_at, a.c.id))
    if not found:
        raise StoreError(f"no assignment for {what}")
    lines = {row["line"] for row in found}
    if len(lines) > 1:
        raise StoreError(f"{what} has assignments on several lines; prove them by --serial")
    line = lines.pop()
    latest = await stored_checkpoints(engine, line, latest=True)
    if not latest:
        raise StoreError(f"line {line!r} has no checkpoint yet: is [audit] configured?")
    checkpoint = latest[0][0]
    serials = [row["dac_serial"] for row in found]
    events = await _all(
        engine,
        select(audit_log.c.seq, audit_log.c.entity, audit_log.c.event, audit_log.c.data)
        .where(audit_log.c.line == line, audit_log.c.entity == "assignment",
               audit_log.c.entity_id.in_(serials))
        .order_by(audit_log.c.seq),
    )  # fmt: skip
    wanted = {int(ev["seq"]) for ev in events}
    attempt_ids = {
        json.loads(ev["data"]).get("attempt_id")
        for ev in events
        if ev["event"] == "assignment_confirmed"
    }
    if attempt_ids:
        ended = await _all(
            engine,
            select(audit_log.c.seq).where(
                audit_log.c.line == line,
                audit_log.c.entity == "attempt",
                audit_log.c.event == "attempt_ended",
                or_(*(audit_log.c.entity_id == i for i in attempt_ids)),
            ),
        )
        wanted |= {int(r["seq"]) for r in ended}
    if max(wanted) > checkpoint.tree_size:
        raise StoreError(
            f"the newest checkpoint of line {line!r} covers {checkpoint.tree_size} audit rows; "
            f"{what} has rows up to seq {max(wanted)}: prove it after the next checkpoint"
        )
    leaves: list[bytes] = []
    texts: dict[int, str] = {}
    async for row in iter_rows(engine, line):
        if row.seq > checkpoint.tree_size:
            break
        text = row.leaf_text()
        leaves.append(leaf_hash(text.encode()))
        if row.seq in wanted:
            texts[row.seq] = text
    if len(leaves) != checkpoint.tree_size:
        raise StoreError(f"line {line!r}: the database holds fewer rows than its checkpoint")
    entries = [
        {
            "leaf_index": seq - 1,
            "row": texts[seq],
            "audit_path": [h.hex() for h in inclusion_path(seq - 1, leaves)],
        }
        for seq in sorted(wanted)
    ]
    return {
        "format": PROOF_FORMAT,
        "line": line,
        "assignments": [
            {k: v for k, v in assignment_record(row).items() if k in RECORD_FIELDS} for row in found
        ],
        "entries": entries,
        "checkpoint": checkpoint.signed_part().as_json(),
    }


def check_proof(proof: Any, public_key: PublicKey) -> tuple[list[str], Checkpoint | None]:
    """Problems found in `proof` ([] when it holds), and its checkpoint when that is signed."""
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        return [f"not a {PROOF_FORMAT} document"], None
    try:
        checkpoint = parse_checkpoint(proof.get("checkpoint"))
    except ValueError as exc:
        return [f"checkpoint: {exc}"], None
    problem = verify_checkpoint(checkpoint, public_key)
    if problem is not None:
        return [f"checkpoint: {problem}"], None
    problems: list[str] = []
    if proof.get("line") != checkpoint.line:
        problems.append("line differs from the checkpoint's line")
    rows: dict[int, dict[str, Any]] = {}
    entries = proof.get("entries")
    if not isinstance(entries, list) or not entries:
        return [*problems, "entries: missing or empty"], checkpoint
    root = bytes.fromhex(checkpoint.root_hash)
    for n, entry in enumerate(entries):
        where = f"entries[{n}]"
        try:
            index, text, path = entry["leaf_index"], entry["row"], entry["audit_path"]
            if type(index) is not int or not isinstance(text, str) or not isinstance(path, list):
                raise TypeError
            hashes = [_hash32(h) for h in path]
            row = json.loads(text)
            if not isinstance(row, dict) or not isinstance(row.get("data"), dict):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: malformed")
            continue
        if not verify_inclusion(
            index, checkpoint.tree_size, leaf_hash(text.encode()), hashes, root
        ):
            problems.append(f"{where}: the audit path does not lead to the checkpoint's root")
            continue
        if row.get("seq") != index + 1 or row.get("line") != checkpoint.line:
            problems.append(f"{where}: seq or line of the row do not match its leaf")
            continue
        rows[index + 1] = row
    records = proof.get("assignments")
    if not isinstance(records, list) or not records:
        return [*problems, "assignments: missing or empty"], checkpoint
    for n, record in enumerate(records):
        problems.extend(f"assignments[{n}]: {p}" for p in _check_record(record, rows))
    return problems, checkpoint


def _check_record(record: Any, rows: dict[int, dict[str, Any]]) -> list[str]:
    if not isinstance(record, dict):
        return ["not an object"]
    if set(record) != RECORD_FIELDS:
        return [f"fields must be exactly {sorted(RECORD_FIELDS)}"]
    serial = record.get("dac_serial")
    events = [
        rows[seq]
        for seq in sorted(rows)
        if rows[seq].get("entity") == "assignment" and rows[seq].get("entity_id") == serial
    ]
    issued = [ev for ev in events if ev.get("event") == "assignment_issued"]
    if len(issued) != 1:
        return [f"no proven assignment_issued row for DAC serial {serial!r}"]
    data = issued[0]["data"]
    problems = []
    for name in ISSUED_FIELDS:
        if record.get(name) != data.get(name):
            problems.append(f"{name} {record.get(name)!r} is not what its audit row says")
    if record.get("dac_serial") != data.get("dac_serial"):
        problems.append("dac_serial is not what its audit row says")
    if record.get("status") != events[-1]["data"].get("status"):
        problems.append(f"status {record.get('status')!r} is not that of its last audit row")
    confirmed = [ev for ev in events if ev.get("event") == "assignment_confirmed"]
    expected_at = None
    if confirmed:
        attempt = confirmed[-1]["data"].get("attempt_id")
        ends = [
            row for row in rows.values()
            if row.get("entity") == "attempt" and row.get("entity_id") == attempt
            and row.get("event") == "attempt_ended"
        ]  # fmt: skip
        if len(ends) != 1:
            problems.append("no proven attempt_ended row for the confirming attempt")
        else:
            expected_at = ends[0]["data"].get("ended_at")
    if record.get("confirmed_at") != expected_at:
        problems.append(f"confirmed_at {record.get('confirmed_at')!r} is not what its rows say")
    der = _pem_der(record.get("dac_pem"))
    if der is None:
        problems.append("dac_pem is not a canonical PEM certificate")
    elif hashlib.sha256(der).hexdigest() != record.get("dac_sha256"):
        problems.append("dac_pem does not hash to dac_sha256")
    return problems


def _hash32(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) != 64 or text != text.lower():
        raise ValueError("not 64 lower-case hex digits")
    return bytes.fromhex(text)


def _pem_der(pem: Any) -> bytes | None:
    """The DER inside `pem`, when `pem` is exactly the canonical encoding of it."""
    if not isinstance(pem, str):
        return None
    lines = pem.strip("\n").split("\n")
    if len(lines) < 3 or lines[0] != "-----BEGIN CERTIFICATE-----":
        return None
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    canonical = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    return der if pem == canonical else None


async def _all(engine: AsyncEngine, stmt: Any) -> list[dict[str, Any]]:
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]
    except Exception as exc:
        raise translate_error(exc, engine) from exc
