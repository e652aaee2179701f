"""`linehost run`: the line daemon."""

from __future__ import annotations

import asyncio
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import EXIT_OK, config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


@dataclass(frozen=True, slots=True)
class RunOptions:
    """`linehost run` as parsed."""

    config: Path


def register(subparsers: Subparsers) -> None:
    """Add `run`."""
    run = subparsers.add_parser("run", help="drive every jig of a line until SIGINT/SIGTERM")
    config_arg(run)
    run.set_defaults(handler=lambda args: run_line_command(RunOptions(args.config)))


def run_line_command(options: RunOptions) -> int:
    """Drive every jig of the configured line until SIGINT/SIGTERM."""
    from linehost.app import install_stop_signals, run_line
    from linehost.config import load_config
    from linehost.line.latency import probe_from_env

    config = load_config(options.config)
    # What start-up imported and built lives as long as the process: out of the collector's
    # sight, a full collection walks only what the running line made. Without this one
    # collection of that heap stalled every jig for 70-200 ms (p99, benchmarks/line.py).
    gc.collect()
    gc.freeze()

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        probe = probe_from_env(os.environ)  # benchmarks only: LINEHOST_LATENCY_FILE
        try:
            counting = probe.count_database if probe is not None else None
            await run_line(config, stop, observer=probe, count_database=counting)
        finally:
            if probe is not None:
                probe.dump()

    asyncio.run(go())
    return EXIT_OK
