"""Host-added latency probes for benchmarks: off (one `is None` test per device) unless enabled.

`linehost run` installs one on its line when the environment variable LINEHOST_LATENCY_FILE
names a file; the samples (seconds, loop clock) are written there as JSON at shutdown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

ENV_VAR: Final = "LINEHOST_LATENCY_FILE"
#: Samples kept per series; enough for any benchmark run, bounded for a forgotten variable.
MAX_SAMPLES: Final = 1_000_000


class LatencyProbe:
    """Two series: CSR received -> first DAC byte written; finish received -> attempt committed."""

    __slots__ = ("commits", "csr_to_dac", "finish_to_commit", "path", "statements")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.csr_to_dac: list[float] = []
        self.finish_to_commit: list[float] = []
        self.statements = 0  # SQL statements sent (an executemany counts once), BEGIN/COMMIT not
        self.commits = 0

    def count_database(self, engine: AsyncEngine) -> None:
        """Count the statements and commits of `engine` (benchmarks: round trips per device)."""

        def on_execute(*_args: Any) -> None:
            self.statements += 1

        def on_commit(*_args: Any) -> None:
            self.commits += 1

        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
        event.listen(engine.sync_engine, "commit", on_commit)

    def dac_written(self, received_at: float, now: float) -> None:
        """The DAC of a CSR received at `received_at` went to the port at `now`."""
        if len(self.csr_to_dac) < MAX_SAMPLES:
            self.csr_to_dac.append(now - received_at)

    def result_committed(self, received_at: float, now: float) -> None:
        """A finish line received at `received_at` was durably recorded at `now`."""
        if len(self.finish_to_commit) < MAX_SAMPLES:
            self.finish_to_commit.append(now - received_at)

    def dump(self) -> None:
        """Write the samples as JSON (atomically)."""
        data = {
            "csr_to_dac": self.csr_to_dac,
            "finish_to_commit": self.finish_to_commit,
            "statements": self.statements,
            "commits": self.commits,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.path)


def enable_from_env() -> LatencyProbe | None:
    """A probe when LINEHOST_LATENCY_FILE is set (None when off); `run_line` installs it."""
    path = os.environ.get(ENV_VAR)
    return LatencyProbe(Path(path)) if path else None
