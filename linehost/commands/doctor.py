"""`linehost doctor --config F`: every check a new line needs, as one table; exit 0 when ready."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from linehost.doctor import diagnose
from linehost.doctor.report import CHECK_TIMEOUT, MIN_FREE_MB, Limits, format_table, ready

EXIT_READY = 0
EXIT_NOT_READY = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `doctor` to the command tree."""
    parser = subparsers.add_parser(
        "doctor", help="check config, ports, PKI, database, broker, printer, clock and disk"
    )
    parser.add_argument("--config", required=True, type=Path, help="station config (TOML)")
    parser.add_argument(
        "--min-free-mb",
        type=int,
        default=MIN_FREE_MB,
        metavar="MB",
        help=f"fail when less disk is free where the line writes (default {MIN_FREE_MB})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT,
        metavar="S",
        help=f"seconds for each network check (default {CHECK_TIMEOUT:.0f})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run every check, print the table; 0 when nothing failed."""
    limits = Limits(min_free_mb=args.min_free_mb, timeout=args.timeout)
    rows = asyncio.run(diagnose(args.config, limits))
    print(format_table(rows), flush=True)
    if ready(rows):
        print("ready: every check needed to run this line passed")
        return EXIT_READY
    failed = sum(1 for row in rows if row.status.value == "fail")
    print(f"not ready: {failed} check(s) failed")
    return EXIT_NOT_READY
