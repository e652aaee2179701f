"""`linehost sim`: simulated provisioning firmware (options in linehost.sim.cli)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linehost.commands import Subparsers
    from linehost.sim.cli import SimOptions


def register(subparsers: Subparsers) -> None:
    """Add `sim`."""
    from linehost.sim.cli import add_arguments

    sim = subparsers.add_parser("sim", help="simulated provisioning firmware on pseudo-terminals")
    add_arguments(sim)
    sim.set_defaults(handler=_sim)


def sim_options(args: argparse.Namespace) -> SimOptions:
    """The options `linehost.sim.cli.add_arguments` parsed (also for `python -m linehost.sim`)."""
    from linehost.sim.cli import SimOptions

    return SimOptions(
        jigs=args.jigs,
        devices=args.devices,
        personality=args.personality,
        mix=args.mix,
        dir=args.dir,
        record=args.record,
        paa=args.paa,
        swap_seconds=args.swap_seconds,
        swap_jitter=args.swap_jitter,
        seed=args.seed,
        baud=args.baud,
        reseat_seconds=args.reseat_seconds,
        linger=args.linger,
        protocol=args.protocol,
        plans=args.plan,
    )


def _sim(args: argparse.Namespace) -> int:
    from linehost.sim.cli import run

    return run(sim_options(args))
