"""`linehost sim`: simulated provisioning firmware (options in linehost.sim.cli)."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linehost.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add `sim`."""
    from linehost.sim.cli import add_arguments

    sim = subparsers.add_parser("sim", help="simulated provisioning firmware on pseudo-terminals")
    add_arguments(sim)
    sim.set_defaults(handler=_sim)


def _sim(args: argparse.Namespace) -> int:
    from linehost.sim.cli import run_from_args

    return asyncio.run(run_from_args(args))
