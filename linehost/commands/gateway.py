"""`linehost gateway`: the site signing gateway (EST) and its quota, client and audit tools."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from linehost.commands import EXIT_FAILED, EXIT_OK
from linehost.commands import UserError as GatewayUsageError

if TYPE_CHECKING:
    from linehost.gateway.config import GatewayConfig
    from linehost.gateway.decision import Scope
    from linehost.gateway.store import GatewayStore

T = TypeVar("T")


def register(subparsers: Any) -> None:
    """Add `gateway` and its actions to the `linehost` command tree."""
    gw = subparsers.add_parser(
        "gateway",
        help="the site signing gateway (EST, RFC 7030); with an ACTION, its tools",
        description="Without an ACTION: serve EST until SIGINT/SIGTERM.",
    )
    gw.add_argument("--config", type=Path, default=None, help="gateway config (TOML)")
    gw.set_defaults(handler=cmd_serve)
    sub = gw.add_subparsers(dest="gateway_command", required=False, metavar="ACTION")

    quota = sub.add_parser("quota", help="DAC quotas and rate limits per client / work order")
    quota_sub = quota.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    show = quota_sub.add_parser("show", help="every counter: issued, cap, rate limit")
    show.add_argument("--json", action="store_true", help="one JSON object per counter")
    show.set_defaults(handler=cmd_quota_show)
    setq = quota_sub.add_parser("set", help="change a cap or rate limit (audited)")
    who = setq.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", default=None, help="a [[clients]] name")
    who.add_argument("--work-order", default=None, help="a work order id")
    setq.add_argument("--max", default=None, help="most DACs in all, or 'none' for no cap")
    setq.add_argument("--rate", default=None, help="DACs per second (clients), or 'none'")
    setq.add_argument("--burst", default=None, help="token bucket size (clients), or 'none'")
    setq.set_defaults(handler=cmd_quota_set)

    client = sub.add_parser("client", help="line hosts' TLS client certificates")
    client_sub = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    add = client_sub.add_parser("add", help="make a client certificate + key for a line host")
    add.add_argument("name", help="the client's name: a [[clients]] name, the certificate CN")
    add.add_argument("--out", type=Path, required=True, help="folder for NAME.pem / NAME.key")
    add.set_defaults(handler=cmd_client_add)
    revoke = client_sub.add_parser("revoke", help="refuse a client's certificates from now on")
    revoke.add_argument("name")
    revoke.add_argument("--serial", default=None, help="only this certificate (hex serial)")
    revoke.add_argument("--reason", required=True)
    revoke.set_defaults(handler=cmd_client_revoke)
    listing = client_sub.add_parser("list", help="certificates made, and their revocations")
    listing.set_defaults(handler=cmd_client_list)

    verify = sub.add_parser(
        "verify", help="audit chain, counters and every DAC against the PAI; exit 0 if all holds"
    )
    verify.set_defaults(handler=cmd_verify)
    upgrade = sub.add_parser("db-upgrade", help="apply the gateway's migrations to head")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    init_tls = sub.add_parser(
        "init-tls", help="a server CA + gateway certificate and a client CA (no --config)"
    )
    init_tls.add_argument("--out", type=Path, required=True)
    init_tls.add_argument(
        "--host", action="append", required=True, help="gateway name or IP (repeat)"
    )
    init_tls.set_defaults(handler=cmd_init_tls)


# --- handlers --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """`linehost gateway --config F`: serve until SIGINT/SIGTERM."""
    from linehost.app import install_stop_signals
    from linehost.gateway.server import run_gateway

    config = _config(args)

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_gateway(config, stop)

    asyncio.run(go())
    return EXIT_OK


def cmd_quota_show(args: argparse.Namespace) -> int:
    """Print every counter."""
    config = _config(args)

    async def go() -> int:
        store = await _store(config)
        try:
            rows = await store.quotas()
        finally:
            await store.close()
        gw = config.gateway
        for row in rows:
            rate, burst = row.rate, row.burst
            if row.scope == "client":
                section = config.client(row.name)
                rate = rate or (section.rate if section else None) or gw.rate
                burst = burst or (section.burst if section else None) or gw.burst
            if args.json:
                print(
                    json.dumps(
                        {
                            "scope": row.scope,
                            "name": row.name,
                            "issued": row.issued,
                            "max_dacs": row.max_dacs,
                            "rate": rate,
                            "burst": burst,
                        }
                    )
                )
                continue
            cap = "no cap" if row.max_dacs is None else f"max {row.max_dacs}"
            left = "" if row.max_dacs is None else f", {max(0, row.max_dacs - row.issued)} left"
            limit = f", rate {rate:g}/s burst {burst}" if row.scope == "client" else ""
            print(f"{row.scope} {row.name}: {row.issued} issued ({cap}{left}){limit}")
        if not rows and not args.json:
            print("no quotas yet: no DAC issued and none set")
        return EXIT_OK

    return asyncio.run(go())


def cmd_quota_set(args: argparse.Namespace) -> int:
    """Change a counter's cap / rate / burst; the change is an audit event."""
    config = _config(args)
    changes: dict[str, int | float | None] = {}
    if args.max is not None:
        changes["max_dacs"] = _number(args.max, "--max", int, minimum=0)
    if args.rate is not None:
        changes["rate"] = _number(args.rate, "--rate", float, minimum=1e-9)
    if args.burst is not None:
        changes["burst"] = _number(args.burst, "--burst", int, minimum=1)
    if not changes:
        raise GatewayUsageError("quota set: give --max, --rate or --burst")
    if args.work_order is not None and ({"rate", "burst"} & set(changes)):
        raise GatewayUsageError("quota set: --rate and --burst apply to clients only")
    scope: Scope = "client" if args.client is not None else "work_order"
    name: str = args.client if args.client is not None else args.work_order
    if scope == "client" and config.client(name) is None:
        raise GatewayUsageError(f"quota set: client {name!r} is not in [[clients]]")

    async def go() -> int:
        store = await _store(config)
        try:
            _before, after = await store.set_quota(scope, name, changes)
        finally:
            await store.close()
        cap = "no cap" if after.max_dacs is None else f"max {after.max_dacs}"
        print(
            f"{scope} {name}: {cap}, {after.issued} issued (rate {after.rate}, burst {after.burst})"
        )
        return EXIT_OK

    return asyncio.run(go())


def cmd_client_add(args: argparse.Namespace) -> int:
    """Make and record a client certificate."""
    from linehost.gateway.tls import make_client_cert, write_client_files

    config = _config(args)
    gw = config.gateway
    if gw.client_ca_key is None:
        raise GatewayUsageError(
            f"{config.source}: gateway.client_ca_key is needed to make client certificates"
        )
    if config.client(args.name) is None:
        raise GatewayUsageError(
            f"client {args.name!r} is not in [[clients]] of {config.source}: add it first "
            "(name, products, work_orders)"
        )
    cert, key_pem = make_client_cert(args.name, gw.client_ca, gw.client_ca_key, gw.client_cert_days)

    async def go() -> None:
        store = await _store(config)
        try:
            await store.add_client_cert(args.name, cert)
        finally:
            await store.close()

    path = write_client_files(args.out, args.name, cert, key_pem)
    asyncio.run(go())
    print(f"client {args.name}: certificate {cert.serial_number:X} written to {path}")
    print(f"  key: {path.with_suffix('.key')} (give both to the line host, then delete them here)")
    return EXIT_OK


def cmd_client_revoke(args: argparse.Namespace) -> int:
    """Revoke a client's certificates: the gateway refuses them from the next request."""
    config = _config(args)

    async def go() -> int:
        store = await _store(config)
        try:
            return await store.revoke_client(args.name, serial=args.serial, reason=args.reason)
        finally:
            await store.close()

    count = asyncio.run(go())
    if count == 0:
        raise GatewayUsageError(f"client {args.name!r}: no certificate to revoke")
    print(f"client {args.name}: {count} certificate(s) revoked")
    return EXIT_OK


def cmd_client_list(args: argparse.Namespace) -> int:
    """Print every client certificate made."""
    config = _config(args)
    rows = _run_store(config, lambda store: store.client_certs())
    for row in rows:
        state = "revoked " + str(row["revoked_at"]) if row["revoked_at"] else "valid"
        print(f"{row['client']} {row['serial']} until {row['not_after']:%Y-%m-%d}: {state}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the audit chain, the counters and every DAC; exit 0 only when all holds."""
    from linehost.pki.local import load_certificate
    from linehost.pki.profile import check_dac, describe
    from linehost.store.audit import Audit

    config = _config(args)
    pai = load_certificate(config.pki.pai_cert, "PAI")

    async def go() -> tuple[list[str], int]:
        from cryptography import x509

        store = await _store(config)
        try:
            problems = await Audit(store.engine).verify_audit_chain(cross_check=False)
            problems += await store.count_mismatches()
            records = await store.issuances()
            for record in records:
                dac = x509.load_pem_x509_certificate(record.dac_pem.encode("ascii"))
                violations = check_dac(dac, pai)
                if violations:
                    problems.append(f"DAC {record.dac_serial}: {describe(violations)}")
            return problems, len(records)
        finally:
            await store.close()

    problems, count = asyncio.run(go())
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return EXIT_FAILED
    print(f"OK gateway {config.gateway.name}: audit chain intact, counters agree, {count} DACs")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the gateway database to head."""
    config = _config(args)
    _run_store(config, lambda store: asyncio.sleep(0))
    print(f"gateway database at head: {config.database.url}")
    return EXIT_OK


def cmd_init_tls(args: argparse.Namespace) -> int:
    """Write the gateway's TLS CAs and server certificate."""
    from linehost.gateway.tls import init_tls

    files = init_tls(args.out, args.host)
    print(f"gateway TLS material written to {args.out}:")
    for path in (files.server_ca, files.server_cert, files.server_key, files.client_ca,
                 files.client_ca_key):  # fmt: skip
        print(f"  {path}")
    return EXIT_OK


# --- helpers ---------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> GatewayConfig:
    from linehost.gateway.config import load_gateway_config

    if args.config is None:
        raise GatewayUsageError("linehost gateway: --config FILE is required")
    return load_gateway_config(args.config)


async def _store(config: GatewayConfig) -> GatewayStore:
    from linehost.gateway.store import GatewayStore

    return await GatewayStore.open(
        config.database.url, name=config.gateway.name, auto_migrate=config.database.auto_migrate
    )


def _run_store(config: GatewayConfig, action: Callable[[GatewayStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = await _store(config)
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _number(
    text: str, name: str, kind: type[int] | type[float], *, minimum: float
) -> int | float | None:
    if text.lower() == "none":
        return None
    try:
        value = kind(text)
    except ValueError:
        raise GatewayUsageError(f"{name}: not a number: {text!r}") from None
    if value < minimum:
        raise GatewayUsageError(f"{name}: must be at least {minimum:g}, got {text}")
    return value
