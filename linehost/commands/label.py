"""`linehost label`: reprint a device label (implemented in linehost.onboarding.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add `label`."""
    label = subparsers.add_parser("label", help="reprint a device label (needs [onboarding])")
    config_arg(label)
    label.add_argument("uid", metavar="UID")
    label.add_argument(
        "--out", type=Path, default=None, help="also write the PNG/ZPL files into this folder"
    )
    label.set_defaults(handler=_label)


def _label(args: argparse.Namespace) -> int:
    from linehost.onboarding.cli import LabelRequest, reprint_label

    return reprint_label(LabelRequest(args.config, args.uid, args.out))
