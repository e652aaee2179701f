"""Entry points only: parse arguments, call into the package, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from linehost import __version__
from linehost.errors import LinehostError

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (audit verify) or a runtime error
EXIT_USAGE = 2  # bad input: arguments, config, files


class UserError(LinehostError):
    """Bad input from the person at the keyboard."""


def build_parser() -> argparse.ArgumentParser:
    """The whole `linehost` command tree."""
    parser = argparse.ArgumentParser(
        prog="linehost",
        description="Line host for provisioning Matter device credentials on programming jigs.",
    )
    parser.add_argument("--version", action="version", version=f"linehost {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json", "console"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="drive every jig of a line until SIGINT/SIGTERM")
    _config_arg(run)
    run.set_defaults(handler=_cmd_run)

    demo = sub.add_parser(
        "demo", help="the whole system on simulated jigs, embedded database, dev PKI"
    )
    demo.add_argument("--jigs", type=_positive_int, default=4, help="simulated jigs (default 4)")
    demo.add_argument(
        "--devices", type=_positive_int, default=None, help="devices in all (default 6 per jig)"
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
    demo.set_defaults(handler=_cmd_demo)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="apply migrations to head")
    _config_arg(upgrade)
    upgrade.set_defaults(handler=_cmd_db_upgrade)

    audit = sub.add_parser("audit", help="records of assignments and attempts, for auditors")
    _config_arg(audit)
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="QUERY")
    export = audit_sub.add_parser("export", help="one record per assignment")
    _record_args(export)
    export.add_argument("--status", default=None, help="only assignments in this status")
    export.add_argument(
        "--include-onboarding",
        action="store_true",
        help="add each device's onboarding data, passcode and QR/manual codes included "
        "(for label reprint and MES hand-over; needs the passcode key)",
    )
    export.set_defaults(handler=_cmd_audit_export)
    attempts = audit_sub.add_parser("attempts", help="one record per attempt")
    _record_args(attempts)
    attempts.add_argument("--outcome", default=None, help="only attempts with this outcome")
    attempts.set_defaults(handler=_cmd_audit_attempts)
    uid = audit_sub.add_parser("uid", help="history of one device")
    uid.add_argument("uid")
    uid.set_defaults(handler=_cmd_audit_uid)
    dac = audit_sub.add_parser("dac", help="history of one certificate")
    dac.add_argument("serial_or_sha256")
    dac.set_defaults(handler=_cmd_audit_dac)
    verify = audit_sub.add_parser(
        "verify", help="check the database against itself and the PKI; exit 0 only if all holds"
    )
    verify.set_defaults(handler=_cmd_audit_verify)
    bundles = audit_sub.add_parser("bundles", help="pre-issued DAC pools: remaining per bundle")
    bundles.set_defaults(handler=_cmd_audit_bundles)

    pki = sub.add_parser("pki", help="PKI tools")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init_dev = pki_sub.add_parser(
        "init-dev", help="a development PAA + PAI for demos and tests (never for production)"
    )
    init_dev.add_argument("--out", type=Path, required=True)
    init_dev.add_argument("--vid", default="FFF1")
    init_dev.add_argument("--pid", default="8000")
    init_dev.add_argument(
        "--no-cd",
        dest="cd",
        action="store_false",
        help="do not write the test Certification Declaration (cd.der)",
    )
    init_dev.set_defaults(handler=_cmd_pki_init_dev)
    import_bundle = pki_sub.add_parser(
        "import-bundle",
        help="load pre-issued DACs keyed by UID (a directory of <UID>*.pem, or uid,dac CSV)",
    )
    _config_arg(import_bundle)
    import_bundle.add_argument("source", type=Path, metavar="SOURCE")
    import_bundle.add_argument(
        "--bundle", default=None, help="bundle name in the pool (default: the source's name)"
    )
    import_bundle.set_defaults(handler=_cmd_pki_import_bundle)

    dashboard = sub.add_parser("dashboard", help="the line dashboard web page, fed from MQTT")
    _config_arg(dashboard)
    dashboard.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="where to serve the page (default: [dashboard] listen, else 127.0.0.1:8080)",
    )
    dashboard.set_defaults(handler=_cmd_dashboard)

    label = sub.add_parser("label", help="reprint a device label (needs [onboarding])")
    _config_arg(label)
    label.add_argument("uid", metavar="UID")
    label.add_argument(
        "--out", type=Path, default=None, help="also write the PNG/ZPL files into this folder"
    )
    label.set_defaults(handler=_cmd_label)

    sim = sub.add_parser("sim", help="simulated provisioning firmware on pseudo-terminals")
    from linehost.sim.cli import add_arguments as add_sim_arguments

    add_sim_arguments(sim)
    sim.set_defaults(handler=_cmd_sim)

    status = sub.add_parser("status", help="live terminal table of every jig (from the database)")
    _config_arg(status)
    status.add_argument("--once", action="store_true", help="print one table and exit")
    status.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    status.set_defaults(handler=_cmd_status)

    workorder = sub.add_parser("workorder", help="work orders: progress against the quantity")
    wo_sub = workorder.add_subparsers(dest="workorder_command", required=True, metavar="ACTION")
    wo_status = wo_sub.add_parser("status", help="done / failed / remaining")
    _config_arg(wo_status)
    wo_status.add_argument("--id", default=None, help="another work order than [work_order]")
    wo_status.add_argument("--json", action="store_true", help="print the counts as JSON")
    wo_status.set_defaults(handler=_cmd_workorder_status)

    from linehost.commands import gateway as gateway_commands

    gateway_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from linehost.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        code: int = args.handler(args)
    except LinehostError as exc:
        print(f"linehost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if _is_input_error(exc) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `linehost audit export | head` is fine.
        return EXIT_OK
    return code


# --- commands ------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from linehost.app import install_stop_signals, run_line
    from linehost.config import load_config
    from linehost.line.latency import enable_from_env

    config = load_config(args.config)

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        probe = enable_from_env()  # benchmarks only: LINEHOST_LATENCY_FILE
        try:
            await run_line(config, stop)
        finally:
            if probe is not None:
                probe.dump()

    asyncio.run(go())
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from linehost.demo import run_demo

    return asyncio.run(
        run_demo(
            workdir=args.dir.resolve(),
            jigs=args.jigs,
            devices=args.devices,
            duration=args.duration,
            faults=args.faults,
            mqtt_url=_demo_mqtt(args.mqtt),
            dashboard_listen=_listen(args.dashboard, "--dashboard"),
            hold=args.hold if args.hold is not None else sys.stdin.isatty() and sys.stdout.isatty(),
        )
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


def _listen(value: str, name: str) -> str:
    from linehost.config import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise UserError(f"{name} {exc}") from None
    return value


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from linehost.config import load_config
    from linehost.store.migrate import upgrade_cli

    config = load_config(args.config)
    upgrade_cli(config.database.url)
    print(f"database at head: {config.database.url}")
    return EXIT_OK


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_assignments

    return export_assignments(args)


def _cmd_audit_attempts(args: argparse.Namespace) -> int:
    from linehost.audit_cli import export_attempts

    return export_attempts(args)


def _cmd_audit_uid(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_uid

    return show_uid(args)


def _cmd_audit_dac(args: argparse.Namespace) -> int:
    from linehost.audit_cli import show_dac

    return show_dac(args)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from linehost.audit_cli import verify

    return verify(args)


def _cmd_pki_init_dev(args: argparse.Namespace) -> int:
    from linehost.pki.devpki import init_dev

    vid = _hex4(args.vid, "--vid")
    pid = _hex4(args.pid, "--pid")
    made = init_dev(args.out, vid=vid, pid=pid, cd=args.cd)
    print(f"development PKI written to {args.out} (never use it in production):")
    for path in (made.paa_cert, made.paa_key, made.pai_cert, made.pai_key, made.cd):
        if path is not None:
            print(f"  {path}")
    return EXIT_OK


def _cmd_pki_import_bundle(args: argparse.Namespace) -> int:
    from linehost.pki.cli import import_bundle

    return import_bundle(args)


def _cmd_audit_bundles(args: argparse.Namespace) -> int:
    from linehost.pki.cli import show_bundles

    return show_bundles(args)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from linehost.app import install_stop_signals
    from linehost.config import load_config, parse_listen
    from linehost.dashboard.app import serve_dashboard

    config = load_config(args.config)
    if config.mqtt is None:
        raise UserError(f"{args.config}: the dashboard needs an [mqtt] section (url = ...)")
    try:
        host, port = parse_listen(args.listen or config.dashboard.listen)
    except ValueError as exc:
        raise UserError(f"--listen {exc}") from None
    mqtt = config.mqtt

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        try:
            await serve_dashboard(mqtt, host, port, stop)
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror}") from None

    asyncio.run(go())
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from linehost.status_cli import show_status

    return show_status(args)


def _cmd_workorder_status(args: argparse.Namespace) -> int:
    from linehost.status_cli import workorder_status

    return workorder_status(args)


def _cmd_sim(args: argparse.Namespace) -> int:
    from linehost.sim.cli import run_from_args

    return asyncio.run(run_from_args(args))


def _cmd_label(args: argparse.Namespace) -> int:
    from linehost.onboarding.cli import reprint_label

    return reprint_label(args)


# --- helpers -------------------------------------------------------------------------------


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="station config (TOML)")


def _record_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--since", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--until", default=None, help="ISO 8601 time (UTC if no zone)")
    parser.add_argument("--station", default=None)
    parser.add_argument("--jig", default=None)
    parser.add_argument("--work-order", default=None, help="only records of this work order")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _hex4(text: str, name: str) -> str:
    if len(text) != 4 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise UserError(f"{name} must be exactly 4 hex digits, got {text!r}")
    return text.upper()


def _is_input_error(exc: LinehostError) -> bool:
    from linehost.errors import ConfigError, PkiError

    return isinstance(exc, UserError | ConfigError | PkiError)


if __name__ == "__main__":
    sys.exit(main())
