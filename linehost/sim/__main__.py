"""`python -m linehost.sim`: the simulated line in its own process (options as `linehost sim`)."""

from __future__ import annotations

import argparse
import sys

from linehost.commands.sim import sim_options
from linehost.errors import LinehostError
from linehost.sim.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the simulated line, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m linehost.sim",
        description="Simulated provisioning firmware on pseudo-terminals; prints `<jig> <path>`.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(sim_options(args))
    except LinehostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
