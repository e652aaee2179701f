"""Certificate lifecycle by hand: revoke DACs, sign the PAI's CRL, the Matter revocation set and
the DCL revocation-point arguments (`linehost pki revoke|crl|revocation-set|dcl-revocation-point`).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shlex
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.errors import PkiError
from linehost.pki.crl import (
    CrlEntry,
    CrlSigner,
    build_crl,
    check_delegated_signer,
    crl_bytes,
    revocation_set_entry,
)
from linehost.pki.matter import OID_MATTER_PID
from linehost.pki.pai import (
    IssuingPai,
    key_identifier,
    load_certificate,
    load_pai,
    subject_attribute,
)
from linehost.pki.signer import open_signer
from linehost.records import REVOCATION_REASONS
from linehost.store.engine import create_engine
from linehost.store.migrate import open_current, upgrade_to_head
from linehost.store.revocations import RevocationError, RevocationLedger, RevocationTarget

if TYPE_CHECKING:
    from linehost.config import LineConfig, PkiSection
    from linehost.config.pki import PaiKeys

_UID = re.compile(r"[0-9A-F]{8,64}")
_HEX = re.compile(r"[0-9A-F]+")
#: Matter caps a DAC serial at 20 octets.
MAX_SERIAL_DIGITS: Final = 40


class LifecycleError(PkiError):
    """Bad input to a lifecycle command; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Selection:
    """What `pki revoke` takes back: exactly one kind of selector is set."""

    uids: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()
    sha256s: tuple[str, ...] = ()
    work_order: str | None = None

    @property
    def bulk(self) -> bool:
        """A work order or a file: DACs revoked before are skipped rather than refused."""
        return self.work_order is not None or len(self.uids) > 1


@dataclass(frozen=True, slots=True)
class RevokeReport:
    """What a revoke did (or, dry, would do)."""

    revoked: list[RevocationTarget]
    skipped: list[RevocationTarget]  # already revoked (bulk only)
    dry_run: bool


def parse_uid(text: str) -> str:
    """A device UID: 8..64 hex digits, returned upper-case; LifecycleError otherwise."""
    uid = text.strip().upper()
    if not _UID.fullmatch(uid):
        raise LifecycleError(f"malformed UID {text!r}: expected 8 to 64 hex digits")
    return uid


def parse_serial(text: str) -> str:
    """A DAC serial in hex (`0x` and leading zeros allowed), as the database spells it."""
    serial = text.strip().upper()
    serial = serial[2:] if serial.startswith("0X") else serial
    if not serial or not _HEX.fullmatch(serial) or len(serial.lstrip("0")) > MAX_SERIAL_DIGITS:
        raise LifecycleError(f"malformed DAC serial {text!r}: expected up to 40 hex digits")
    return serial.lstrip("0") or "0"


def parse_sha256(text: str) -> str:
    """A DAC SHA-256 fingerprint (64 hex digits), lower-case."""
    digest = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise LifecycleError(f"malformed SHA-256 {text!r}: expected 64 hex digits")
    return digest


def parse_reason(text: str) -> str:
    """An RFC 5280 reason name, as spelled in REVOCATION_REASONS (case-insensitive)."""
    for reason in REVOCATION_REASONS:
        if reason.lower() == text.strip().lower():
            return reason
    raise LifecycleError(
        f"unknown revocation reason {text!r}: use one of {', '.join(REVOCATION_REASONS)}"
    )


def read_uid_file(path: Path) -> tuple[str, ...]:
    """UIDs one per line (`#` comments and blank lines allowed); LifecycleError naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LifecycleError(f"{path}: unreadable ({exc})") from None
    uids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            uids.append(parse_uid(text))
        except LifecycleError as exc:
            raise LifecycleError(f"{path}:{number}: {exc}") from None
    if not uids:
        raise LifecycleError(f"{path}: no UIDs in the file")
    return tuple(dict.fromkeys(uids))


def operator() -> str:
    """Who runs the command, for the audit chain: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@asynccontextmanager
async def open_ledger(config: LineConfig, *, write: bool) -> AsyncIterator[RevocationLedger]:
    """The ledger on the configured database (schema brought to head first when allowed)."""
    if write and config.database.auto_migrate:
        engine = create_engine(config.database.url)
        try:
            await upgrade_to_head(engine)
        except BaseException:
            await engine.dispose()
            raise
    else:
        engine = await open_current(config.database.url)
    try:
        yield RevocationLedger(engine)
    finally:
        await engine.dispose()


async def revoke(
    ledger: RevocationLedger,
    selection: Selection,
    *,
    reason: str,
    dry_run: bool,
    by: str,
    now: datetime | None = None,
) -> RevokeReport:
    """Check the selection against the database and revoke it in one transaction (unless
    `dry_run`); LifecycleError (nothing changed) for unknown or already revoked DACs."""
    found = await ledger.targets(
        uids=selection.uids,
        serials=selection.serials,
        sha256s=selection.sha256s,
        work_order=selection.work_order,
    )
    _require_known(selection, found)
    skipped = [t for t in found if t.revoked_at is not None]
    chosen = [t for t in found if t.revoked_at is None]
    if not chosen:
        first = skipped[0]
        when = first.revoked_at.isoformat() if first.revoked_at else "?"
        raise LifecycleError(
            f"DAC {first.dac_serial} (UID {first.uid}) is already revoked "
            f"({first.reason}, {when})"
            + (f"; {len(skipped) - 1} more too" if len(skipped) > 1 else "")
        )
    if skipped and not selection.bulk:
        first = skipped[0]
        raise LifecycleError(f"DAC {first.dac_serial} (UID {first.uid}) is already revoked")
    if not dry_run:
        try:
            await ledger.revoke(chosen, reason=reason, by=by, now=now or datetime.now(UTC))
        except RevocationError as exc:
            raise LifecycleError(str(exc)) from None
    return RevokeReport(chosen, skipped, dry_run)


def _require_known(selection: Selection, found: Sequence[RevocationTarget]) -> None:
    missing: list[str] = []
    if selection.uids:
        have = {t.uid for t in found}
        missing = [f"UID {u}" for u in selection.uids if u not in have]
    elif selection.serials:
        have = {t.dac_serial for t in found}
        missing = [f"DAC serial {s}" for s in selection.serials if s not in have]
    elif selection.sha256s:
        have = {t.dac_sha256 for t in found}
        missing = [f"DAC SHA-256 {s}" for s in selection.sha256s if s not in have]
    elif not found:
        missing = [f"work order {selection.work_order!r} (no DACs recorded)"]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LifecycleError(f"unknown {missing[0]}{more}: no DAC recorded; nothing was revoked")


# --- the CRL and what is derived from it -----------------------------------------------------


def issuing_pai(pki: PkiSection) -> IssuingPai:
    """The configured (active) PAI, checked (with its PAA when given)."""
    return load_pai(pki.pai_cert, pki.vid, pki.pid, paa_cert=pki.paa_cert)


def configured_pai(pki: PkiSection, keys: PaiKeys) -> IssuingPai:
    """One PAI of `[pki]`, checked: the active one must be current; a previous one only has to
    conform and chain (it may have expired), and keeps its own PID when it has one."""
    if keys.active:
        return issuing_pai(pki)
    pid = subject_attribute(load_certificate(keys.pai_cert, "PAI"), OID_MATTER_PID) or pki.pid
    return load_pai(keys.pai_cert, pki.vid, pid, paa_cert=pki.paa_cert, current=False)


def configured_pais(pki: PkiSection) -> list[tuple[PaiKeys, IssuingPai]]:
    """Every PAI of `[pki]` (the active one first), each checked."""
    return [(keys, configured_pai(pki, keys)) for keys in pki.pais()]


def select_pai(pki: PkiSection, skid: str | None) -> tuple[PaiKeys, IssuingPai]:
    """The configured PAI whose subjectKeyIdentifier is `skid` (hex, any case; None: the
    active one), checked; LifecycleError naming the SKIDs there are."""
    if skid is None:
        keys = pki.pais()[0]
        return keys, configured_pai(pki, keys)
    pais = configured_pais(pki)
    wanted = skid.strip().upper().replace(":", "")
    for keys, pai in pais:
        if crl_file_stem(pai) == f"pai-{wanted}":
            return keys, pai
    known = ", ".join(crl_file_stem(pai)[4:] for _, pai in pais)
    raise LifecycleError(f"--pai {skid}: no configured PAI has that SKID (configured: {known})")


def open_crl_signer(
    pki: PkiSection, pai: x509.Certificate, keys: PaiKeys | None = None
) -> CrlSigner:
    """The PAI's delegated CRL signer when configured, else its key; PkiError when neither.
    `keys` names the PAI (default: the active one)."""
    keys = keys or pki.pais()[0]
    pin = pki.pin
    if keys.crl_signer_cert is not None and keys.crl_signer_key is not None:
        cert = load_certificate(keys.crl_signer_cert, "CRL signer")
        check_delegated_signer(cert, pai)
        passphrase = keys.crl_signer_passphrase.read()
        signer = open_signer(
            keys.crl_signer_key,
            passphrase=None if passphrase is None else passphrase.strip(),
            pkcs11_module=pki.pkcs11_module,
            pkcs11_pin=pin() if keys.crl_signer_key.startswith("pkcs11:") else None,
        )
        _require_match(signer.public_key(), cert, f"CRL signer certificate {keys.crl_signer_cert}")
        return CrlSigner(cert, signer, delegator=pai)
    if not keys.pai_key:
        prefix = "pki" if keys.active else "pki.previous_pais"
        raise LifecycleError(
            f"PAI certificate {keys.pai_cert}: no key to sign its CRL "
            f"(set {prefix}.pai_key, or {prefix}.crl_signer_cert and {prefix}.crl_signer_key)"
        )
    passphrase = keys.passphrase.read()
    signer = open_signer(
        keys.pai_key,
        passphrase=None if passphrase is None else passphrase.strip(),
        pkcs11_module=pki.pkcs11_module,
        pkcs11_pin=pin() if keys.pai_key.startswith("pkcs11:") else None,
    )
    _require_match(signer.public_key(), pai, f"PAI certificate {keys.pai_cert}")
    return CrlSigner(pai, signer)


def crl_paths(out: Path, pais: Sequence[IssuingPai]) -> list[Path]:
    """Where `pki crl --out OUT` writes each PAI's CRL: OUT itself for one PAI; for several,
    `pai-<SKID>.crl` inside OUT when it is a directory, else `<stem>-<SKID><suffix>` beside it."""
    if len(pais) == 1 and not out.is_dir():
        return [out]
    stems = [crl_file_stem(pai) for pai in pais]
    if out.is_dir():
        return [out / f"{stem}.crl" for stem in stems]
    return [out.with_name(f"{out.stem}-{stem[4:]}{out.suffix}") for stem in stems]


def crl_file_stem(pai: IssuingPai) -> str:
    """The file name (without suffix) of a PAI's CRL: `pai-<SKID hex>`."""
    skid = key_identifier(pai.certificate, x509.SubjectKeyIdentifier) or b""
    return f"pai-{skid.hex().upper()}"


def expiry_warning(pai: IssuingPai, margin: timedelta, now: datetime | None = None) -> str | None:
    """A one-line warning when the active PAI expires within `margin`, else None."""
    not_after = pai.certificate.not_valid_after_utc
    left = not_after - (now or datetime.now(UTC))
    if left > margin:
        return None
    days = left.total_seconds() / 86400
    return (
        f"the active PAI expires on {not_after:%Y-%m-%d %H:%M:%S} UTC ({days:.1f} days left, "
        f"pki.pai_expiry_warning is {margin.days} days): roll over to a new PAI"
    )


@dataclass(frozen=True, slots=True)
class SignedCrl:
    """One PAI's CRL as signed, with its number and validity."""

    pai: IssuingPai
    crl: x509.CertificateRevocationList
    number: int
    this_update: datetime
    next_update: datetime
    entries: int


async def sign_crl(
    ledger: RevocationLedger,
    pai: IssuingPai,
    crl_signer: CrlSigner,
    pki: PkiSection,
    *,
    now: datetime | None = None,
) -> SignedCrl:
    """Take the PAI's next CRL number and sign its CRL over every revocation recorded."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    revoked = await ledger.revoked_of(pai.sha256)
    entries = [CrlEntry(r.dac_serial, r.revoked_at, r.reason) for r in revoked]
    number = await ledger.next_crl_number(pai.sha256, moment)
    next_update = moment + pki.crl_next_update
    crl = await build_crl(
        pai.certificate,
        crl_signer,
        entries,
        number=number,
        this_update=moment,
        next_update=next_update,
    )
    return SignedCrl(pai, crl, number, moment, next_update, len(entries))


def write_crl(signed: SignedCrl, out: Path, *, der: bool) -> None:
    """Write the CRL to `out` atomically (PEM unless `der`)."""
    data = crl_bytes(signed.crl, pem=not der)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


async def revocation_set(
    ledger: RevocationLedger, pai: IssuingPai, crl_signer_cert: CrlSigner
) -> list[dict[str, Any]]:
    """The Matter SDK revocation set (a JSON list) of the PAI's revoked DACs."""
    revoked = await ledger.revoked_of(pai.sha256)
    return [revocation_set_entry(pai.certificate, crl_signer_cert, [r.dac_serial for r in revoked])]


def dcl_arguments(
    pai: IssuingPai,
    crl_signer: CrlSigner,
    crl_der: bytes,
    data_url: str,
    *,
    label: str,
) -> list[str]:
    """`dcld tx pki add-revocation-point` arguments for this PAI, checked against its CRL."""
    crl = x509.load_der_x509_crl(crl_der)
    signer_cert = crl_signer.certificate
    if crl.issuer != signer_cert.subject:
        raise LifecycleError("the CRL's issuer is not the configured CRL signer")
    if not crl.is_signature_valid(signer_cert.public_key()):  # type: ignore[arg-type]
        raise LifecycleError("the CRL's signature does not verify with the CRL signer's key")
    akid = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    skid = signer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    if akid.key_identifier != skid.key_identifier:
        raise LifecycleError("the CRL's authorityKeyIdentifier is not the signer's key id")
    if not data_url.lower().startswith(("http://", "https://")):
        raise LifecycleError(f"--data-url {data_url!r}: must be an http(s) URL")
    pem = signer_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    args = [
        "dcld", "tx", "pki", "add-revocation-point",
        f"--vid=0x{pai.vid}",
        f"--pid=0x{pai.pid}",
        "--is-paa=false",
        f"--label={label}",
        f"--certificate={pem.strip()}",
        f"--issuer-subject-key-id={skid.key_identifier.hex().upper()}",
        f"--data-url={data_url}",
        f"--data-file-size={len(crl_der)}",
        f"--data-digest={hashlib.sha256(crl_der).hexdigest().upper()}",
        "--data-digest-type=1",
        "--revocation-type=1",
    ]  # fmt: skip
    if crl_signer.delegator is not None:
        delegator = crl_signer.delegator.public_bytes(serialization.Encoding.PEM).decode("ascii")
        args.append(f"--certificate-delegator={delegator.strip()}")
    return args


def shell_line(args: Sequence[str]) -> str:
    """The arguments as one line an operator can paste into a shell."""
    return " ".join(shlex.quote(arg) for arg in args)


def json_text(value: object) -> str:
    """Pretty JSON with a final newline."""
    return json.dumps(value, indent=2) + "\n"


def _require_match(public_key: object, cert: x509.Certificate, name: str) -> None:
    ours = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise LifecycleError(f"{name}: its key does not match the certificate")


def read_crl_der(path: Path) -> bytes:
    """A CRL file (PEM or DER) as DER; LifecycleError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LifecycleError(f"CRL {path}: unreadable ({exc.strerror or exc})") from None
    try:
        if b"-----BEGIN" in data:
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError:
        raise LifecycleError(f"CRL {path}: not a PEM or DER CRL") from None
    return crl.public_bytes(serialization.Encoding.DER)
