"""`linehost doctor`: is this host ready to run its line? One row per check, each with a fix."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import tomllib
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from linehost.errors import LinehostError, PortBusy, PortMissing

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    from linehost.config import LineConfig, PkiSection

CHECK_TIMEOUT: Final = 5.0  # seconds for each network check (database, broker, printer)
MIN_FREE_MB: Final = 500  # below this, the database and the labels may not fit a shift
_MQTT_BAD_CREDENTIALS: Final = frozenset({4, 5, 0x86, 0x87})  # 3.1.1 and v5 CONNACK codes


class Status(enum.StrEnum):
    """How one check came out; only FAIL makes the host not ready."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report: what was checked, how it came out, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """The thresholds of the checks that have one."""

    min_free_mb: int = MIN_FREE_MB
    timeout: float = CHECK_TIMEOUT


async def diagnose(path: Path, limits: Limits = Limits()) -> list[Check]:
    """Every check for the station config at `path`, in the order a new line is brought up."""
    row, config = check_config(path)
    if config is None:
        later = ("jig ports", "PAI", "PAI key", "PAA chain", "clock", "CD", "database", "broker",
                 "label printer", "free disk")  # fmt: skip
        return [row, *(Check(name, Status.SKIPPED, "the config is not valid") for name in later)]
    rows = [row]
    proof = check_key_proof_row(config)
    if proof is not None:
        rows.append(proof)
    rows.extend(await check_ports(config))
    pai_row, pai = check_pai(config.pki)
    rows.append(pai_row)
    rows.append(await check_pai_key(config.pki, pai))
    rows.append(check_paa_chain(config.pki, pai))
    rows.append(check_clock(pai, margin=config.pki.pai_expiry_warning))
    rows.append(check_line_cd(config))
    rows.append(await _timed("database", check_database(config), limits.timeout))
    rows.append(await _timed("broker", check_broker(config), limits.timeout))
    rows.append(await _timed("label printer", check_printer(config), limits.timeout))
    rows.append(check_disk(config, limits.min_free_mb))
    return rows


def ready(rows: list[Check]) -> bool:
    """True when no check failed (warnings and skipped checks do not stop a line)."""
    return all(row.status is not Status.FAIL for row in rows)


def format_table(rows: list[Check]) -> str:
    """The report as an aligned text table; a detail of several lines continues below."""
    name_w = max(len("check"), *(len(r.name) for r in rows))
    status_w = len("skipped")
    lines = [f"{'check':<{name_w}}  {'status':<{status_w}}  detail / fix"]
    for row in rows:
        first, *rest = row.detail.splitlines() or [""]
        lines.append(f"{row.name:<{name_w}}  {row.status.value:<{status_w}}  {first}")
        pad = " " * (name_w + status_w + 4)
        lines.extend(f"{pad}{more}" for more in rest)
        if row.fix and row.status in (Status.FAIL, Status.WARN):
            lines.append(f"{pad}fix: {row.fix}")
    return "\n".join(lines)


# --- the checks -------------------------------------------------------------------------------


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


def check_pai(pki: PkiSection) -> tuple[Check, x509.Certificate | None]:
    """The PAI certificate loads, conforms to the Matter profile and carries the VID/PID."""
    from linehost.pki.local import load_certificate
    from linehost.pki.profile import OID_MATTER_PID, OID_MATTER_VID, describe
    from linehost.pki.profile import check_pai as profile_check_pai

    try:
        pai = load_certificate(pki.pai_cert, "PAI")
    except LinehostError as exc:
        return Check(
            "PAI", Status.FAIL, str(exc), "point pki.pai_cert at the PAI (PEM or DER)"
        ), None
    violations = profile_check_pai(pai, None)
    if violations:
        fix = "use a PAI issued to the Matter attestation profile (docs/pki.md)"
        return Check("PAI", Status.FAIL, f"{pki.pai_cert}: {describe(violations)}", fix), pai
    vid, pid = _subject_hex(pai, OID_MATTER_VID), _subject_hex(pai, OID_MATTER_PID)
    if vid != pki.vid or (pid is not None and pid != pki.pid):
        detail = f"PAI is for VID {vid} PID {pid or 'any'}, the config says {pki.vid}/{pki.pid}"
        return Check(
            "PAI", Status.FAIL, detail, "set pki.vid / pki.pid or use this product's PAI"
        ), pai
    return Check("PAI", Status.OK, f"{pki.pai_cert}: conforms, VID {vid}"), pai


async def check_pai_key(pki: PkiSection, pai: x509.Certificate | None) -> Check:
    """The PAI key (file or HSM token, with its passphrase / PIN) opens and matches the PAI."""
    from linehost.pki.signer import open_signer

    if pki.issuer != "local" or pki.pai_key is None:
        return Check("PAI key", Status.SKIPPED, f"issuer = {pki.issuer!r} signs nothing here")
    if pai is None:
        return Check("PAI key", Status.SKIPPED, "no PAI certificate to match")
    try:
        signer = open_signer(
            pki.pai_key,
            passphrase=pki.passphrase(),
            pkcs11_module=pki.pkcs11_module,
            pkcs11_pin=pki.pin(),
        )
    except LinehostError as exc:
        fix = "check pki.pai_key, its passphrase / the token PIN, and the PKCS#11 module"
        return Check("PAI key", Status.FAIL, str(exc), fix)
    try:
        if _spki(signer.public_key()) != _spki(pai.public_key()):
            fix = "pki.pai_key must be the private key of pki.pai_cert"
            return Check("PAI key", Status.FAIL, f"{pki.pai_key} is not the PAI's key", fix)
    finally:
        await signer.aclose()
    where = "HSM token" if pki.pai_key.startswith("pkcs11:") else "file"
    return Check("PAI key", Status.OK, f"{where} key matches the PAI")


def check_paa_chain(pki: PkiSection, pai: x509.Certificate | None) -> Check:
    """The PAA conforms and issued the PAI."""
    from linehost.pki.local import load_certificate
    from linehost.pki.profile import check_paa, describe
    from linehost.pki.profile import check_pai as profile_check_pai

    if pki.paa_cert is None:
        fix = "set pki.paa_cert so a wrong PAI is caught before devices fail attestation"
        return Check("PAA chain", Status.WARN, "no pki.paa_cert: the chain is not checked", fix)
    if pai is None:
        return Check("PAA chain", Status.SKIPPED, "no PAI certificate to chain")
    try:
        paa = load_certificate(pki.paa_cert, "PAA")
    except LinehostError as exc:
        return Check("PAA chain", Status.FAIL, str(exc), "point pki.paa_cert at the PAA")
    own = set(profile_check_pai(pai, None))
    violations = check_paa(paa) + [v for v in profile_check_pai(pai, paa) if v not in own]
    if violations:
        fix = "use the PAA that issued this PAI (and a PAA that conforms)"
        return Check("PAA chain", Status.FAIL, describe(violations), fix)
    return Check("PAA chain", Status.OK, f"PAI issued by {pki.paa_cert}")


def check_clock(
    pai: x509.Certificate | None, now: datetime | None = None, *, margin: timedelta | None = None
) -> Check:
    """The clock is within the PAI's validity: DACs must not start before their issuer."""
    if pai is None:
        return Check("clock", Status.SKIPPED, "no PAI certificate to compare with")
    now = now or datetime.now(UTC)
    stamp = f"{now:%Y-%m-%d %H:%M:%S} UTC"
    fix = "set the clock (timedatectl set-ntp true) or check the PAI's validity"
    if now < pai.not_valid_before_utc:
        detail = f"{stamp} is before the PAI's notBefore {pai.not_valid_before_utc:%Y-%m-%d %H:%M}"
        return Check("clock", Status.FAIL, detail, fix)
    if now > pai.not_valid_after_utc:
        detail = f"{stamp} is after the PAI's notAfter {pai.not_valid_after_utc:%Y-%m-%d %H:%M}"
        return Check("clock", Status.FAIL, detail, fix)
    if margin is not None and pai.not_valid_after_utc - now <= margin:
        days = (pai.not_valid_after_utc - now).total_seconds() / 86400
        detail = (
            f"{stamp}: the PAI expires on {pai.not_valid_after_utc:%Y-%m-%d %H:%M} "
            f"({days:.1f} days left, within pki.pai_expiry_warning)"
        )
        roll = "roll over to a new PAI (docs/pki.md, PAI rollover)"
        return Check("clock", Status.WARN, detail, roll)
    return Check("clock", Status.OK, f"{stamp}, within the PAI's validity")


def check_line_cd(config: LineConfig) -> Check:
    """The work order's own CD when it names one (signature and VID/PID, as at work-order
    open), else `check_cd` of `[pki] cd_file`."""
    wo = config.work_order
    if wo is None or wo.cd_file is None:
        return check_cd(config.pki)
    from linehost.line.operations import with_work_order
    from linehost.line.workorder import checked_work_order

    try:
        found = checked_work_order(with_work_order(config))
    except LinehostError as exc:
        fix = "use the CSA's CD for the work order's product (signed by a pki.cd_signer_certs key)"
        return Check("CD", Status.FAIL, str(exc), fix)
    assert found is not None
    assert found.cd is not None
    return Check(
        "CD",
        Status.OK,
        f"work order {wo.id}: {wo.cd_file} verifies, sha256 {found.cd.sha256[:16]}…",
    )


def check_cd(pki: PkiSection) -> Check:
    """The Certification Declaration parses and certifies the configured VID and PID."""
    from linehost.pki.cd import load_cd

    if pki.cd_file is None:
        return Check("CD", Status.SKIPPED, "no pki.cd_file: devices get no CD: line")
    fix = "use the CD the CSA issued for this product (pki.cd_file)"
    try:
        vendor, products = load_cd(pki.cd_file).products()
    except LinehostError as exc:
        return Check("CD", Status.FAIL, str(exc), fix)
    vid, pid = int(pki.vid, 16), int(pki.pid, 16)
    if vendor != vid or pid not in products:
        listed = ", ".join(f"{p:04X}" for p in sorted(products))
        detail = f"CD certifies VID {vendor:04X} PID {listed}, the config says {pki.vid}/{pki.pid}"
        return Check("CD", Status.FAIL, detail, fix)
    return Check("CD", Status.OK, f"certifies VID {pki.vid} PID {pki.pid}")


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


# --- helpers ----------------------------------------------------------------------------------


async def _timed(name: str, check: Awaitable[Check], seconds: float) -> Check:
    try:
        async with asyncio.timeout(seconds):
            return await check
    except TimeoutError:
        return Check(name, Status.FAIL, f"no answer in {seconds:.0f} s", "check host and port")


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


def _subject_hex(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value).upper() if attrs else None


def _spki(key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
