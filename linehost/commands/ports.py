"""`linehost ports`: the serial ports here, with VID/PID/serial and the path for `[[jigs]]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from linehost.commands import EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `linehost ports` to the command tree."""
    ports = subparsers.add_parser(
        "ports", help="list serial ports (VID/PID, serial number, stable by-id path)"
    )
    form = ports.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    form.add_argument(
        "--toml", action="store_true", help="a ready [[jigs]] block per port, to paste"
    )
    ports.add_argument(
        "--station", default="st1", help="station name written into --toml blocks (default st1)"
    )
    ports.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the ports in the chosen form; exit 0 even when there are none."""
    from linehost.transport.ports import jigs_toml, list_ports, ports_json, ports_table

    found = list_ports()
    if args.json:
        print(ports_json(found))
    elif args.toml:
        print(jigs_toml(found, station=args.station), end="")
    else:
        print(ports_table(found))
    if not found:
        print("linehost: no serial ports found (is the jig plugged in?)", file=sys.stderr)
    return EXIT_OK
