"""Checkpointer: follows one line's committed audit rows, extends the Merkle tree, signs
checkpoints and keeps them in the database, in a directory and on MQTT.

It follows what the store writer committed and never writes audit rows itself, so provisioning
never waits for it. The rows this process's writer committed come in memory (`rows_committed`,
the writer's commit listener): reading them back and re-parsing them was most of its cost. Every
poll still reads the database after the newest row it has, which brings the rows other
processes wrote (a CLI revocation, another host of the line) and fills any gap in the feed.
It signs only a chain that verifies, either way: a row that does not link or whose hash does
not recompute stops checkpointing (logged `audit_chain_broken`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, Protocol

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError, StoreError
from linehost.evidence.checkpoint import (
    AuditKey,
    Checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from linehost.evidence.merkle import CompactTree, consistency_proof_from, leaf_hash
from linehost.evidence.rows import iter_rows, stored_checkpoints
from linehost.records import iso_utc, utcnow
from linehost.store.chain import GENESIS_HASH, CommittedRow
from linehost.store.engine import translate_error
from linehost.store.models import audit_checkpoints

POLL_INTERVAL: Final = 0.5  # seconds between looks for newly committed audit rows
READ_LIMIT: Final = 20_000  # rows per read, so one look never holds the loop for long
FEED_LIMIT: Final = 100_000  # rows held from the writer; beyond, the database read catches up
STORE_RETRY: Final = 2.0  # seconds before trying again while the database is away

_log = structlog.get_logger("linehost.evidence")


class CheckpointSink(Protocol):
    """Somewhere else a new checkpoint goes (MQTT); must not block."""

    def checkpoint_made(self, checkpoint: Checkpoint) -> None: ...


class Checkpointer:
    """Signs checkpoints of one line's audit log every `every` rows or `interval` seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        line: str,
        key: AuditKey,
        directory: Path,
        *,
        every: int,
        interval: float,
        sinks: Sequence[CheckpointSink] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Checkpoint `line` in the database behind `engine`; `start()` runs it."""
        self.line = line
        self.made = 0  # checkpoints signed by this process
        self._engine = engine
        self._key = key
        self._directory = directory
        self._every = every
        self._interval = interval
        self._sinks = list(sinks)
        self._clock = clock
        self._tree = CompactTree()
        self._base: list[bytes] | None = None  # frontier at the last checkpoint
        self._new_leaves: list[bytes] = []  # leaves since, for the consistency proof
        self._head = GENESIS_HASH
        self._last_size = 0
        self._last_time = 0.0
        self._broken: str | None = None
        self._fed: deque[CommittedRow] = deque()  # committed by this process, not yet in the tree
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def tree_size(self) -> int:
        """Audit rows in the tree so far."""
        return self._tree.size

    async def start(self) -> None:
        """Resume from the newest checkpoint in the database, then follow the log in the
        background until `close()`."""
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"audit.checkpoint_dir {self._directory}: cannot create ({exc.strerror})"
            ) from None
        await self._resume()
        # Catching up on a long log happens in the background: jigs need not wait for it.
        self._last_time = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name=f"checkpointer-{self.line}")

    async def close(self) -> None:
        """Stop following, then sign a final checkpoint of every committed row."""
        self._closing.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        try:
            await self.catch_up()
            await self.checkpoint()
        except LinehostError as exc:
            _log.error("final_checkpoint_failed", line=self.line, detail=str(exc))
        finally:
            await self._key.aclose()

    def rows_committed(self, rows: Sequence[CommittedRow]) -> None:
        """The store writer's commit listener: audit rows it just committed, in seq order."""
        if self._broken is not None:
            return
        if len(self._fed) + len(rows) > FEED_LIMIT:
            self._fed.clear()  # far behind: the database read fills the gap
            return
        self._fed.extend(row for row in rows if row.line == self.line)

    async def catch_up(self) -> int:
        """Add every newly committed row of the line to the tree; return how many."""
        added = self._take_fed()
        while self._broken is None:
            got = 0
            async for row in iter_rows(self._engine, self.line, self._tree.size, READ_LIMIT):
                where = f"row id={row.id} (seq {row.seq})"
                if not self._add(row.seq, row.prev_hash, row.row_hash, row.leaf_text(), where):
                    break
                got += 1
            added += got
            if got < READ_LIMIT:
                break
        return added + self._take_fed()

    def _take_fed(self) -> int:
        """Add the fed rows that continue the tree; stop at a gap (the read fills it)."""
        added = 0
        fed = self._fed
        while fed and self._broken is None:
            row = fed[0]
            if row.seq > self._tree.size + 1:
                break
            fed.popleft()
            if row.seq <= self._tree.size:
                continue  # the database read brought it first
            if not self._add(row.seq, row.prev_hash, row.row_hash, row.body, f"row seq {row.seq}"):
                break
            added += 1
        return added

    def _add(self, seq: int, prev_hash: str, row_hash: str, body: str, where: str) -> bool:
        """Append a row to the tree when it continues the chain; else mark the chain broken."""
        ok = seq == self._tree.size + 1 and prev_hash == self._head
        if ok:
            ok = hashlib.sha256((prev_hash + body).encode()).hexdigest() == row_hash
        if not ok:
            self._broken = f"{where} does not continue the chain"
            self._fed.clear()
            _log.error("audit_chain_broken", line=self.line, detail=self._broken)
            return False
        leaf = leaf_hash(body.encode())
        self._tree.append(leaf)
        self._new_leaves.append(leaf)
        self._head = row_hash
        return True

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the tree as it stands (None when nothing is new or the chain is broken)."""
        size = self._tree.size
        if size == 0 or size <= self._last_size or self._broken is not None:
            return None
        body: dict[str, object] = {
            "line": self.line,
            "seq": size,
            "head_hash": self._head,
            "tree_size": size,
            "root_hash": self._tree.root().hex(),
            "at": iso_utc(self._clock()),
        }
        consistency = None
        if self._base is not None:
            path = consistency_proof_from(self._last_size, self._base, self._new_leaves)
            consistency = (self._last_size, tuple(h.hex() for h in path))
        checkpoint = await sign_checkpoint(self._key, body, consistency)
        await asyncio.to_thread(self._write_file, checkpoint)
        await self._store(checkpoint)
        for sink in self._sinks:
            sink.checkpoint_made(checkpoint)
        self._last_size = size
        self._base, self._new_leaves = self._tree.frontier, []
        self._last_time = asyncio.get_running_loop().time()
        self.made += 1
        _log.info(
            "audit_checkpoint", line=self.line, tree_size=size, root=checkpoint.root_hash[:16]
        )
        return checkpoint

    # --- private ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self._closing.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._closing.wait()
            first = False
            if self._closing.is_set():
                return
            try:
                await self.catch_up()
                pending = self._tree.size - self._last_size
                overdue = loop.time() - self._last_time >= self._interval
                if pending >= self._every or (pending > 0 and overdue):
                    await self.checkpoint()
            except LinehostError as exc:
                _log.warning("checkpoint_deferred", line=self.line, detail=str(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STORE_RETRY):
                        await self._closing.wait()

    async def _resume(self) -> None:
        found = await stored_checkpoints(self._engine, self.line, latest=True)
        if not found:
            return
        checkpoint, frontier = found[0]
        problem = verify_checkpoint(checkpoint, self._key.public_key())
        if problem is None:
            try:
                tree = CompactTree(checkpoint.tree_size, [bytes.fromhex(h) for h in frontier])
            except ValueError as exc:
                problem = f"frontier unusable ({exc})"
            else:
                if tree.root().hex() != checkpoint.root_hash:
                    problem = "frontier does not give the signed root"
        if problem is not None:
            # Rebuilt from the rows instead; `audit verify` judges the old checkpoint.
            _log.warning("checkpoint_not_resumed", line=self.line, detail=problem)
            return
        self._tree = tree
        self._base = tree.frontier
        self._head = checkpoint.head_hash
        self._last_size = checkpoint.tree_size

    def _write_file(self, checkpoint: Checkpoint) -> None:
        path = self._directory / f"{self.line}-{checkpoint.tree_size:012d}.json"
        data = checkpoint.encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._check_existing(path, checkpoint)
            return
        except OSError as exc:
            raise StoreError(f"audit.checkpoint_dir: cannot write {path}: {exc.strerror}") from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"audit.checkpoint_dir: cannot write {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # the directory entry too, where the OS allows it
            dir_fd = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _check_existing(self, path: Path, checkpoint: Checkpoint) -> None:
        """Another host of the line checkpointed the same size: it must be the same tree."""
        try:
            other = parse_checkpoint(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            _log.error("checkpoint_file_conflict", path=str(path), detail=str(exc))
            return
        if (other.root_hash, other.head_hash) != (checkpoint.root_hash, checkpoint.head_hash):
            _log.error("checkpoint_file_conflict", path=str(path), detail="another tree")

    async def _store(self, checkpoint: Checkpoint) -> None:
        row = {
            **{k: v for k, v in checkpoint.signed_part().as_json().items() if k != "at"},
            "at": datetime.fromisoformat(checkpoint.at.replace("Z", "+00:00")),
            "frontier": json.dumps([h.hex() for h in self._tree.frontier]),
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(audit_checkpoints).values(**row))
        except IntegrityError:
            return  # another host of the line stored this size already
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
