"""`linehost status`: live terminal table of every jig (implemented in linehost.status_cli)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from linehost.commands import config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add `status`."""
    status = subparsers.add_parser(
        "status", help="live terminal table of every jig (from the database)"
    )
    config_arg(status)
    status.add_argument("--once", action="store_true", help="print one table and exit")
    status.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from linehost.status_cli import StatusOptions, show_status

    return show_status(StatusOptions(args.config, args.once, args.json, args.interval))
