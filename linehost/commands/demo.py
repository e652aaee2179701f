"""`linehost demo`: the whole system on this machine, no hardware."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from linehost.commands import UserError, positive_int

if TYPE_CHECKING:
    from linehost.commands import Subparsers


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """`linehost demo` as parsed and checked."""

    workdir: Path
    jigs: int
    devices: int | None
    duration: float | None
    faults: bool
    mqtt_url: str | None
    dashboard_listen: str
    hold: bool


def register(subparsers: Subparsers) -> None:
    """Add `demo`."""
    demo = subparsers.add_parser(
        "demo", help="the whole system on simulated jigs, embedded database, dev PKI"
    )
    demo.add_argument("--jigs", type=positive_int, default=4, help="simulated jigs (default 4)")
    demo.add_argument(
        "--devices", type=positive_int, default=None, help="devices in all (default 6 per jig)"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("linehost-demo"),
        help="working folder (default ./linehost-demo)",
    )
    demo.add_argument(
        "--faults", action="store_true", help="mix fault personalities among the devices"
    )
    demo.add_argument(
        "--mqtt",
        default=None,
        metavar="URL",
        help="publish to this broker (mqtt://HOST:PORT) instead of an embedded one",
    )
    demo.add_argument(
        "--dashboard",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to serve the dashboard (default 127.0.0.1:8080; any free port if busy)",
    )
    demo.add_argument(
        "--hold",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the dashboard up after the line is done, until Ctrl-C "
        "(default: when run in a terminal)",
    )
    demo.set_defaults(handler=lambda args: demo_command(_options(args)))


def demo_command(options: DemoOptions) -> int:
    """Run the demo line; return its exit code."""
    from linehost.demo import run_demo

    return asyncio.run(
        run_demo(
            workdir=options.workdir,
            jigs=options.jigs,
            devices=options.devices,
            duration=options.duration,
            faults=options.faults,
            mqtt_url=options.mqtt_url,
            dashboard_listen=options.dashboard_listen,
            hold=options.hold,
        )
    )


def _options(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        workdir=args.dir.resolve(),
        jigs=args.jigs,
        devices=args.devices,
        duration=args.duration,
        faults=args.faults,
        mqtt_url=_demo_mqtt(args.mqtt),
        dashboard_listen=check_listen(args.dashboard, "--dashboard"),
        hold=args.hold if args.hold is not None else sys.stdin.isatty() and sys.stdout.isatty(),
    )


def _demo_mqtt(url: str | None) -> str | None:
    from linehost.config import MqttSection

    if url is None:
        return None
    try:
        MqttSection(url=url)
    except ValueError:
        raise UserError(f"--mqtt must look like mqtt://HOST[:PORT], got {url!r}") from None
    return url


def check_listen(value: str, name: str) -> str:
    """`value` when it is HOST:PORT; UserError naming the option otherwise."""
    from linehost.config import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise UserError(f"{name} {exc}") from None
    return value
