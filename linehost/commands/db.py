"""`linehost db upgrade`: database maintenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import EXIT_OK, config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


@dataclass(frozen=True, slots=True)
class UpgradeOptions:
    """`linehost db upgrade` as parsed."""

    config: Path


def register(subparsers: Subparsers) -> None:
    """Add `db upgrade`."""
    db = subparsers.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade_parser = db_sub.add_parser("upgrade", help="apply migrations to head")
    config_arg(upgrade_parser)
    upgrade_parser.set_defaults(handler=lambda args: upgrade(UpgradeOptions(args.config)))


def upgrade(options: UpgradeOptions) -> int:
    """Apply the migrations to head."""
    from linehost.config import load_config
    from linehost.store.migrate import upgrade_cli

    config = load_config(options.config)
    upgrade_cli(config.database.url)
    print(f"database at head: {config.database.url}")
    return EXIT_OK
