"""The doctor's rows for this host and what it reaches: the config, the jig ports, the
database, the broker, the label printer and the free disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Final

from linehost.doctor.report import Check, Status
from linehost.errors import LinehostError, PortBusy, PortMissing

if TYPE_CHECKING:
    from linehost.config import LineConfig

_MQTT_BAD_CREDENTIALS: Final = frozenset({4, 5, 0x86, 0x87})  # 3.1.1 and v5 CONNACK codes


def check_config(path: Path) -> tuple[Check, LineConfig | None]:
    """The config loads; when it does not, every problem in it, not only the first."""
    from linehost.config import load_config

    try:
        config = load_config(path)
    except LinehostError as exc:
        problems = _all_problems(path) or [str(exc)]
        return Check(
            "config",
            Status.FAIL,
            "\n".join(problems),
            "correct each key named above (docs/configuration.md)",
        ), None
    return Check("config", Status.OK, f"{path}: {len(config.jigs)} jig(s)"), config


def check_key_proof_row(config: LineConfig) -> Check | None:
    """Jigs whose devices show a bare public key (ECC608 letters): allowed, refused, or None
    for a line without such jigs."""
    from linehost.app import check_key_proof
    from linehost.protocol.factory import WITHOUT_POP

    bare = [jig for jig in config.jigs if jig.protocol in WITHOUT_POP]
    if not bare:
        return None
    try:
        check_key_proof(config)
    except LinehostError as exc:
        return Check("key proof", Status.FAIL, str(exc), "see docs/protocol.md (letter dialect)")
    return Check(
        "key proof",
        Status.WARN,
        f"{len(bare)} jig(s) issue DACs for bare public keys (no proof of possession), "
        "allowed by [pki] allow_without_pop",
    )


async def check_ports(config: LineConfig) -> list[Check]:
    """Every jig's port exists, opens, and no other process holds it."""
    from linehost.transport.serial import open_port

    if not config.jigs:
        return [
            Check("jig ports", Status.WARN, "no [[jigs]] in the config", "add a [[jigs]] table")
        ]
    rows = []
    for jig in config.jigs:
        name = f"port {jig.station}/{jig.name}"
        try:
            port = await open_port(jig.port, jig.baudrate)
        except PortMissing as exc:
            fix = "plug the jig in; check its udev name (deploy/udev) or the port in the config"
            rows.append(Check(name, Status.FAIL, str(exc), fix))
            continue
        except PortBusy as exc:
            holders = port_holders(jig.port)
            who = "; held by " + ", ".join(holders) if holders else ""
            fix = "stop the other program (another linehost, a terminal, ModemManager)"
            rows.append(Check(name, Status.FAIL, f"{exc}{who}", fix))
            continue
        except LinehostError as exc:
            rows.append(Check(name, Status.FAIL, str(exc), "check the adapter and its cable"))
            continue
        port.close()
        rows.append(Check(name, Status.OK, f"{jig.port} opens"))
    return rows


def port_holders(port: str) -> list[str]:
    """'PID (command)' of every other process with `port` open, from /proc."""
    try:
        target = os.stat(port)
    except OSError:
        return []
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    held = fd.stat()
                    if (held.st_dev, held.st_ino, held.st_rdev) == (
                        target.st_dev,
                        target.st_ino,
                        target.st_rdev,
                    ):
                        raw = (proc / "cmdline").read_bytes()
                        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                        holders.append(f"PID {proc.name} ({command[:80]})")
                        break
    return holders


async def check_database(config: LineConfig) -> Check:
    """The database answers and its schema is at the newest migration."""
    from linehost.store.engine import create_engine, safe_url
    from linehost.store.migrate import schema_is_current

    url = config.database.url
    missing = _missing_sqlite_file(config)
    if missing is not None:
        return missing
    engine = create_engine(url)
    try:
        current = await schema_is_current(engine)
    except LinehostError as exc:
        fix = "start the database server, check [database] url, host, port and credentials"
        return Check("database", Status.FAIL, str(exc), fix)
    finally:
        await engine.dispose()
    where = safe_url(engine)
    if current:
        return Check("database", Status.OK, f"{where} at head")
    if config.database.auto_migrate:
        return Check("database", Status.WARN, f"{where} behind head: upgraded at start")
    fix = f"linehost db upgrade --config {config.source}"
    return Check("database", Status.FAIL, f"{where} is behind head (auto_migrate = false)", fix)


async def check_broker(config: LineConfig) -> Check:
    """The broker accepts a connection with the configured credentials and TLS."""
    import aiomqtt

    from linehost.mqtt.link import companion_link, describe

    if config.mqtt is None:
        return Check("broker", Status.SKIPPED, "no [mqtt]: nothing is published")
    try:
        link = companion_link(config.mqtt, "doctor", config.line.name)
    except LinehostError as exc:
        return Check("broker", Status.FAIL, str(exc), "check the [mqtt] password and TLS files")
    while True:
        try:
            async with link.client():
                link.connected()
            break
        except aiomqtt.MqttError as exc:
            if link.downgrade(exc):
                continue
            if _refused_credentials(exc):
                fix = "check mqtt.username and the password (mqtt.password_file / password_env)"
                return Check("broker", Status.FAIL, f"{link.where}: {describe(exc)}", fix)
            fix = "start the broker; check mqtt.url, the firewall and the TLS settings"
            return Check("broker", Status.FAIL, f"{link.where}: {describe(exc)}", fix)
    return Check(
        "broker", Status.OK, f"{link.where} accepted {config.mqtt.username or 'anonymous'}"
    )


async def check_printer(config: LineConfig) -> Check:
    """The label printer accepts a TCP connection (nothing is printed)."""
    address = config.labels.printer_address if config.labels is not None else None
    if address is None:
        return Check("label printer", Status.SKIPPED, "no [labels] printer")
    host, port = address
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        fix = "switch the printer on; check labels.printer and the network"
        return Check("label printer", Status.FAIL, f"{host}:{port}: {exc.strerror or exc}", fix)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check("label printer", Status.OK, f"{host}:{port} accepts connections")


def check_disk(config: LineConfig, min_free_mb: int) -> Check:
    """Free space where the line writes: the SQLite database and the label folder."""
    from linehost.store.engine import database_url

    folders: list[Path] = []
    parsed = database_url(config.database.url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folders.append(Path(parsed.database).parent)
    if config.labels is not None and config.labels.folder is not None:
        folders.append(config.labels.folder)
    if not folders and config.source is not None:
        folders.append(config.source.parent)
    worst: tuple[int, Path] | None = None
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free // (1024 * 1024)
        if worst is None or free < worst[0]:
            worst = (free, folder)
    assert worst is not None
    free, folder = worst
    if free < min_free_mb:
        fix = "free some space or move the database / labels to a larger disk"
        return Check("free disk", Status.FAIL, f"{folder}: {free} MB free < {min_free_mb} MB", fix)
    return Check("free disk", Status.OK, f"{folder}: {free} MB free")


def _missing_sqlite_file(config: LineConfig) -> Check | None:
    """A row for a SQLite file that does not exist yet (connecting would create it)."""
    from linehost.store.engine import database_url

    parsed = database_url(config.database.url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if Path(parsed.database).exists():
        return None
    if config.database.auto_migrate:
        detail = f"{parsed.database} does not exist yet: made at start (auto_migrate)"
        return Check("database", Status.OK, detail)
    fix = f"linehost db upgrade --config {config.source}"
    return Check("database", Status.FAIL, f"{parsed.database} does not exist", fix)


def _refused_credentials(exc: Exception) -> bool:
    """True when a CONNACK refused the username or password."""
    import aiomqtt
    from paho.mqtt.reasoncodes import ReasonCode

    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    rc = exc.rc
    code = int(rc.value) if isinstance(rc, ReasonCode) else int(rc or 0)
    return code in _MQTT_BAD_CREDENTIALS


def _all_problems(path: Path) -> list[str]:
    """Each validation problem of the config as 'file: key: message' (none if it is no TOML)."""
    from pydantic import ValidationError

    from linehost.config import LineConfig

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    try:
        LineConfig.model_validate({**raw, "source": path})
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
            message = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(
                err["type"], err["msg"]
            )
            out.append(f"{path}: {where.replace('.[', '[') or '(top level)'}: {message}")
        return out
    return []
