"""`linehost dashboard`: the line dashboard web page, fed from MQTT."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import EXIT_OK, UserError, config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """`linehost dashboard` as parsed."""

    config: Path
    listen: str | None


def register(subparsers: Subparsers) -> None:
    """Add `dashboard`."""
    dashboard = subparsers.add_parser(
        "dashboard", help="the line dashboard web page, fed from MQTT"
    )
    config_arg(dashboard)
    dashboard.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="where to serve the page (default: [dashboard] listen, else 127.0.0.1:8080)",
    )
    dashboard.set_defaults(handler=lambda args: serve(DashboardOptions(args.config, args.listen)))


def serve(options: DashboardOptions) -> int:
    """Serve the dashboard until SIGINT/SIGTERM."""
    from linehost.app import install_stop_signals
    from linehost.config import load_config, parse_listen
    from linehost.dashboard.app import serve_dashboard

    config = load_config(options.config)
    if config.mqtt is None:
        raise UserError(f"{options.config}: the dashboard needs an [mqtt] section (url = ...)")
    try:
        host, port = parse_listen(options.listen or config.dashboard.listen)
    except ValueError as exc:
        raise UserError(f"--listen {exc}") from None
    mqtt = config.mqtt

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        try:
            await serve_dashboard(mqtt, host, port, stop, config.dashboard)
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror}") from None

    asyncio.run(go())
    return EXIT_OK
