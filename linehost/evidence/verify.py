"""`audit verify --checkpoints DIR`: the database against signed checkpoints kept outside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.evidence.checkpoint import Checkpoint, PublicKey, parse_checkpoint, verify_checkpoint
from linehost.evidence.merkle import CompactTree, consistency_proof, leaf_hash, verify_consistency
from linehost.evidence.rows import iter_rows


@dataclass
class CheckpointReport:
    """What the checkpoint check found: problems (one line each) and what it covered."""

    problems: list[str] = field(default_factory=list)
    files: int = 0
    lines: dict[str, int] = field(default_factory=dict)  # line -> newest checkpointed size


def read_checkpoint_files(
    directory: Path, public_key: PublicKey, report: CheckpointReport
) -> dict[str, list[tuple[Path, Checkpoint]]]:
    """Every checkpoint file in `directory` whose signature holds, by line, oldest first."""
    by_line: dict[str, list[tuple[Path, Checkpoint]]] = {}
    if not directory.is_dir():
        report.problems.append(f"checkpoint directory {directory}: not a directory")
        return by_line
    files = sorted(directory.glob("*.json"))
    if not files:
        report.problems.append(f"checkpoint directory {directory}: no checkpoint files")
    for path in files:
        report.files += 1
        try:
            checkpoint = parse_checkpoint(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            report.problems.append(f"checkpoint file {path.name}: not a checkpoint ({exc})")
            continue
        problem = verify_checkpoint(checkpoint, public_key)
        if problem is not None:
            report.problems.append(f"checkpoint file {path.name}: {problem}")
            continue
        by_line.setdefault(checkpoint.line, []).append((path, checkpoint))
    for found in by_line.values():
        found.sort(key=lambda pc: pc[1].tree_size)
    return by_line


async def verify_against_checkpoints(
    engine: AsyncEngine, directory: Path, public_key: PublicKey
) -> CheckpointReport:
    """Signatures, each checkpoint's root and head from the database's rows, no tail
    truncation, and consecutive checkpoints consistent (RFC 9162)."""
    report = CheckpointReport()
    by_line = read_checkpoint_files(directory, public_key, report)
    for line in sorted(by_line):
        await _check_line(engine, line, by_line[line], report)
    return report


async def _check_line(
    engine: AsyncEngine,
    line: str,
    checkpoints: list[tuple[Path, Checkpoint]],
    report: CheckpointReport,
) -> None:
    where = f"line {line!r}"
    sizes = {cp.tree_size for _, cp in checkpoints}
    newest = max(sizes)
    report.lines[line] = newest
    leaves: list[bytes] = []
    heads: dict[int, str] = {}
    roots: dict[int, str] = {}
    tree = CompactTree()
    async for row in iter_rows(engine, line):
        leaves.append(leaf_hash(row.leaf_text().encode()))
        tree.append(leaves[-1])
        if tree.size in sizes:
            roots[tree.size] = tree.root().hex()
            heads[tree.size] = row.row_hash
    db_size = len(leaves)
    for path, cp in checkpoints:
        name = f"checkpoint {path.name} (size {cp.tree_size}, {cp.at})"
        if cp.tree_size > db_size:
            report.problems.append(
                f"{where}: the database holds {db_size} audit row(s) but {name} covers "
                f"{cp.tree_size}: rows were deleted from the end (tail truncation)"
            )
            continue
        if roots[cp.tree_size] != cp.root_hash:
            report.problems.append(
                f"{where}: the database's rows 1..{cp.tree_size} do not reproduce the root of "
                f"{name}: audit rows were edited, deleted or inserted"
            )
        if heads[cp.tree_size] != cp.head_hash:
            report.problems.append(
                f"{where}: the database's row seq {cp.tree_size} has another hash than the head "
                f"of {name}: the chain was rewritten"
            )
    for (pa, a), (pb, b) in pairwise(checkpoints):
        if a.tree_size == b.tree_size:
            if a.root_hash != b.root_hash:
                report.problems.append(
                    f"{where}: checkpoints {pa.name} and {pb.name} sign different trees of "
                    f"the same size {a.tree_size}: the log forked"
                )
            continue
        old, new = bytes.fromhex(a.root_hash), bytes.fromhex(b.root_hash)
        if b.consistency is not None and b.consistency[0] == a.tree_size:
            # The proof the host attached: no database needed.
            hashes = [bytes.fromhex(h) for h in b.consistency[1]]
            if not verify_consistency(a.tree_size, b.tree_size, old, new, hashes):
                report.problems.append(
                    f"{where}: checkpoints {pa.name} and {pb.name} are not consistent: the "
                    "log was rewritten between them (RFC 9162 consistency proof fails)"
                )
            continue
        if b.consistency is not None and b.consistency[0] not in sizes:
            report.problems.append(
                f"{where}: {pb.name} follows a checkpoint of size {b.consistency[0]} that is "
                "not in the directory: a checkpoint file was removed"
            )
        if b.tree_size > db_size:
            continue  # reported above; no rows to build the proof from
        proof = consistency_proof(a.tree_size, leaves[: b.tree_size])
        if not verify_consistency(a.tree_size, b.tree_size, old, new, proof):
            report.problems.append(
                f"{where}: checkpoints {pa.name} and {pb.name} are not consistent: the "
                "database's rows give no RFC 9162 consistency proof between them"
            )
