"""Host-added latency probe for benchmarks: an observer `linehost run` adds when asked to.

`linehost run` adds one to its line when the environment variable LINEHOST_LATENCY_FILE names
a file; the samples (seconds, loop clock) are written there as JSON at shutdown.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.observers import DB_ASSIGN, Observer
from linehost.records import AttemptStart

ENV_VAR: Final = "LINEHOST_LATENCY_FILE"
#: Samples kept per series; enough for any benchmark run, bounded for a forgotten variable.
MAX_SAMPLES: Final = 1_000_000


class LatencyProbe(Observer):
    """CSR received -> first DAC byte written; finish received -> attempt committed; and three
    parts of the first: the wait for the event loop, the issuer's answer and the assignment's
    commit."""

    __slots__ = (
        "_collecting_since",
        "assign_commit",
        "commits",
        "csr_to_dac",
        "csr_wait",
        "finish_to_commit",
        "gc_pauses",
        "issue",
        "path",
        "statements",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.csr_to_dac: list[float] = []
        self.finish_to_commit: list[float] = []
        self.csr_wait: list[float] = []  # CSR received -> the host begins checking it
        self.issue: list[float] = []  # issuer asked -> DAC back (signed and checked)
        self.assign_commit: list[float] = []  # assignment submitted -> committed
        self.statements = 0  # SQL statements sent (an executemany counts once), BEGIN/COMMIT not
        self.commits = 0
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) per collection
        self._collecting_since = 0.0

    def watch_collector(self) -> None:
        """Time every garbage collection: one stalls every jig for as long as it takes."""
        gc.callbacks.append(self._on_collection)

    def stop_watching_collector(self) -> None:
        """Stop timing collections (tests: the callback list is the process's)."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._collecting_since = time.perf_counter()
        elif len(self.gc_pauses) < MAX_SAMPLES:
            pause = time.perf_counter() - self._collecting_since
            self.gc_pauses.append((info["generation"], pause))

    def count_database(self, engine: AsyncEngine) -> None:
        """Count the statements and commits of `engine` (benchmarks: round trips per device)."""

        def on_execute(*_args: Any) -> None:
            self.statements += 1

        def on_commit(*_args: Any) -> None:
            self.commits += 1

        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
        event.listen(engine.sync_engine, "commit", on_commit)

    def key_taken_up(self, start: AttemptStart, seconds: float) -> None:
        """The host began checking a CSR `seconds` after it was read (the loop's queue)."""
        if len(self.csr_wait) < MAX_SAMPLES:
            self.csr_wait.append(seconds)

    def dac_written(self, start: AttemptStart, seconds: float) -> None:
        """The DAC of a CSR went to the port `seconds` after the CSR was read."""
        if len(self.csr_to_dac) < MAX_SAMPLES:
            self.csr_to_dac.append(seconds)

    def result_committed(self, start: AttemptStart, seconds: float) -> None:
        """A finish line was durably recorded `seconds` after it was read."""
        if len(self.finish_to_commit) < MAX_SAMPLES:
            self.finish_to_commit.append(seconds)

    def issuer_answered(self, start: AttemptStart, seconds: float) -> None:
        """The issuer gave a DAC `seconds` after it was asked."""
        if len(self.issue) < MAX_SAMPLES:
            self.issue.append(seconds)

    def database_committed(self, start: AttemptStart, operation: str, seconds: float) -> None:
        """A store call was durably committed `seconds` after it was made (the assignment's
        commit is the part of CSR -> DAC that waits for the database)."""
        if operation == DB_ASSIGN and len(self.assign_commit) < MAX_SAMPLES:
            self.assign_commit.append(seconds)

    def dump(self) -> None:
        """Write the samples as JSON (atomically)."""
        data = {
            "csr_to_dac": self.csr_to_dac,
            "finish_to_commit": self.finish_to_commit,
            "csr_wait": self.csr_wait,
            "issue": self.issue,
            "assign_commit": self.assign_commit,
            "statements": self.statements,
            "commits": self.commits,
            "gc_pauses": self.gc_pauses,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.path)


def probe_from_env(environ: Mapping[str, str]) -> LatencyProbe | None:
    """A probe when LINEHOST_LATENCY_FILE is set in `environ` (None when off)."""
    path = environ.get(ENV_VAR)
    if not path:
        return None
    probe = LatencyProbe(Path(path))
    probe.watch_collector()
    return probe
