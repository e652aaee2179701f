"""Pre-issued DAC bundles: reading a PKI provider's bundle, and the issuer that hands them out.

A bundle maps chip UIDs to DACs made in advance for the key inside each chip (secure elements
such as OPTIGA Trust M MTR). It comes as a directory of PEM files named by UID (Infineon /
keySTREAM: `<UID>_keyOID=E0F0_DAC.pem`) or as a CSV `uid,dac_pem_or_path`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.errors import IssuerError, LinehostError, PkiError
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.pai import IssuingPai, PaiIssuer, load_pai, subject_attribute
from linehost.pki.profile import check_dac, describe
from linehost.protocol.outcomes import LIVE_STATUSES
from linehost.records import (
    BundleCount,
    BundleDac,
    CsrInfo,
    ImportResult,
    IssuedDac,
    PoolEntry,
    UsedBy,
)

#: A claim with no assignment after this long was left by an attempt that died; it may be
#: taken over (the claim-to-record window is normally milliseconds).
CLAIM_STALE: Final = timedelta(minutes=2)
#: `<UID>.pem`, `<UID>_DAC.pem`, `<UID>_keyOID=E0F0_DAC.pem` (Infineon / keySTREAM), .crt, .der
DAC_FILE_NAME: Final = re.compile(
    r"(?P<uid>[0-9A-Fa-f]{8,64})(?:_keyOID=[0-9A-Fa-f]{4})?(?:_DAC)?\.(?:pem|crt|der)",
    re.IGNORECASE,
)
_CERT_SUFFIXES: Final = (".pem", ".crt", ".der", ".cer")
_UID: Final = re.compile(r"[0-9A-Fa-f]{8,64}")
_BUNDLE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}")
_LIVE: Final = frozenset(s.value for s in LIVE_STATUSES)

_log = structlog.get_logger("linehost.bundle")


@dataclass(frozen=True, slots=True)
class BundleItem:
    """One line of a bundle source: a UID and its DAC bytes, or why it could not be read."""

    source: str  # "FILE" or "FILE:LINE"
    uid: str | None
    data: bytes | None
    problem: str | None = None


class ImportProgress(Protocol):
    """Told how an import moves along: items checked, then entries stored."""

    def checking(self, total: int) -> None:
        """`total` items are about to be checked."""

    def checked(self) -> None:
        """One more item checked (accepted, rejected or skipped)."""

    def storing(self, total: int) -> None:
        """`total` good entries are about to be written to the pool."""

    def stored(self, count: int) -> None:
        """`count` more entries written (added or already there)."""


class BundleEntries(Protocol):
    """The pool of pre-issued DACs as the issuer and the import use it (the app injects
    `store.bundles.BundlePool`); each claim is guarded so that one entry has one winner."""

    async def add(
        self,
        bundle: str,
        dacs: Sequence[BundleDac],
        now: datetime,
        *,
        stored: Callable[[int], None] | None = None,
    ) -> ImportResult: ...

    async def find(self, uid: str) -> PoolEntry | None: ...

    async def claim(
        self,
        entry_id: int,
        *,
        token: str,
        by: str,
        now: datetime,
        stale_token: str | None = None,
        stale_before: datetime | None = None,
    ) -> bool: ...

    async def used_by(self, dac_sha256: str) -> UsedBy | None: ...

    async def counts(self) -> list[BundleCount]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What `import-bundle` did: counts and one (source, reason) per rejected item."""

    bundle: str
    read: int
    added: int
    unchanged: int
    rejected: list[tuple[str, str]]
    skipped: list[str]


def read_bundle(source: Path) -> Iterator[BundleItem]:
    """Every item of a bundle directory or CSV file, in a stable order; raise PkiError when
    `source` itself is unusable."""
    if source.is_dir():
        yield from _read_directory(source)
    elif source.is_file():
        yield from _read_csv(source)
    else:
        raise PkiError(f"bundle {source}: no such file or directory")


def count_bundle(source: Path) -> int:
    """How many items `read_bundle(source)` will yield, without reading any DAC (for progress)."""
    if source.is_dir():
        return sum(
            1 for p in source.iterdir() if p.is_file() and p.suffix.lower() in _CERT_SUFFIXES
        )
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return 0  # read_bundle says why
    return sum(1 for row in csv.reader(io.StringIO(text, newline="")) if _is_csv_item(row))


def _is_csv_item(row: list[str]) -> bool:
    if not row or all(not cell.strip() for cell in row):
        return False
    first = row[0].strip()
    return not (first.lower() == "uid" or first.startswith("#"))  # header or comment


def check_bundle_dac(
    item: BundleItem, pai: x509.Certificate, pai_sha256: str, vid: str, pid: str, now: datetime
) -> BundleDac:
    """The item as a pool entry when its DAC passes the Matter checker under `pai` and is for
    the configured VID/PID; raise PkiError with the reason otherwise."""
    if item.problem is not None or item.data is None or item.uid is None:
        raise PkiError(item.problem or "nothing to read")
    data = item.data
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise PkiError(f"holds {len(certs)} certificates, not one DAC")
            dac = certs[0]
        else:
            dac = x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError("not a PEM or DER X.509 certificate") from None
    violations = check_dac(dac, pai)
    if violations:
        raise PkiError(f"fails the Matter profile: {describe(violations)}")
    dac_vid = subject_attribute(dac, OID_MATTER_VID)
    dac_pid = subject_attribute(dac, OID_MATTER_PID)
    if dac_vid != vid:
        raise PkiError(f"DAC VID {dac_vid} differs from configured vid {vid}")
    if dac_pid != pid:
        raise PkiError(f"DAC PID {dac_pid} differs from configured pid {pid}")
    if now > dac.not_valid_after_utc:
        raise PkiError(f"DAC expired on {dac.not_valid_after_utc:%Y-%m-%d %H:%M:%S}")
    der = dac.public_bytes(serialization.Encoding.DER)
    spki = dac.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return BundleDac(
        uid=item.uid,
        dac_pem=dac.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        dac_serial=f"{dac.serial_number:X}",
        dac_sha256=hashlib.sha256(der).hexdigest(),
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        pai_sha256=pai_sha256,
        vid=vid,
        pid=pid,
        source=item.source,
    )


async def import_bundle(
    pool: BundleEntries,
    source: Path,
    *,
    pai: x509.Certificate,
    vid: str,
    pid: str,
    bundle: str | None = None,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Validate every DAC of `source` against `pai` and add the good ones to the pool;
    importing the same bundle again adds nothing and rejects nothing new."""
    name = bundle if bundle is not None else _default_name(source)
    if not _BUNDLE_NAME.fullmatch(name):
        raise PkiError(f"bundle name {name!r}: 1-64 letters, digits, '_', '.', ':', '+', '-'")
    pai_sha256 = IssuingPai(pai, vid, pid).sha256
    now = datetime.now(UTC)
    good: list[BundleDac] = []
    rejected: list[tuple[str, str]] = []
    skipped: list[str] = []
    read = 0
    if progress is not None:
        progress.checking(count_bundle(source))
    for item in read_bundle(source):
        if progress is not None:
            progress.checked()
        if item.uid is None and item.problem is None:
            skipped.append(item.source)
            continue
        read += 1
        try:
            good.append(check_bundle_dac(item, pai, pai_sha256, vid, pid, now))
        except PkiError as exc:
            rejected.append((item.source, str(exc)))
    if progress is not None:
        progress.storing(len(good))
    result: ImportResult = await pool.add(
        name, good, now, stored=progress.stored if progress is not None else None
    )
    rejected.extend(result.rejected)
    rejected.sort(key=lambda r: _source_order(r[0]))
    return ImportReport(name, read, result.added, result.unchanged, rejected, skipped)


class BundleIssuer(PaiIssuer):
    """Hands out the pre-issued DAC for a device's UID, only to the chip holding its key."""

    def __init__(
        self,
        pai: x509.Certificate,
        pool: BundleEntries,
        vid: str,
        pid: str,
        *,
        line: str,
        stale_after: timedelta = CLAIM_STALE,
    ) -> None:
        """Use `pai` and `pool` as given; BundleIssuer.load is the checked way in."""
        self._issuing = IssuingPai(pai, vid, pid)
        self._pai = pai
        self._pool = pool
        self._line = line
        self._stale_after = stale_after

    @classmethod
    def load(
        cls,
        pai_cert: Path,
        vid: str,
        pid: str,
        *,
        pool: BundleEntries,
        line: str,
        paa_cert: Path | None = None,
    ) -> BundleIssuer:
        """Load and check the PAI (and PAA); raise PkiError naming the file and the problem."""
        pai = load_pai(pai_cert, vid, pid, paa_cert=paa_cert).certificate
        return cls(pai, pool, vid, pid, line=line)

    @property
    def pool(self) -> BundleEntries:
        """The pool this issuer draws from."""
        return self._pool

    async def counts(self) -> list[BundleCount]:
        """Depletion per bundle (for start-up logs and status)."""
        return await self._pool.counts()

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        """The bundle DAC of `uid` when its key is the CSR's; raise IssuerError saying why not."""
        try:
            return await self._issue(uid, csr)
        except IssuerError:
            raise
        except LinehostError as exc:  # the pool's database
            raise IssuerError(f"bundle pool: {exc}") from None
        except Exception as exc:  # never let one device take its jig down
            _log.exception("bundle_issuer_failed", uid=uid)
            raise IssuerError(f"bundle issuer failed: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Release the pool's connections."""
        await self._pool.close()

    async def _issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        entry = await self._pool.find(uid)
        if entry is None:
            raise IssuerError(f"no bundle entry for UID {uid}")
        if entry.public_key_sha256 != csr.public_key_sha256:
            raise IssuerError(
                f"bundle DAC for UID {uid} (serial {entry.dac_serial}, bundle {entry.bundle}) "
                f"is for another key: DAC key sha256 {entry.public_key_sha256[:16]}…, "
                f"CSR key sha256 {csr.public_key_sha256[:16]}…"
            )
        if entry.pai_sha256 != self._issuing.sha256:
            raise IssuerError(
                f"bundle DAC for UID {uid} was imported under another PAI "
                f"({entry.pai_sha256[:16]}…)"
            )
        dac = x509.load_pem_x509_certificate(entry.dac_pem.encode("ascii"))
        violations = check_dac(dac, self._pai)
        if violations:
            raise IssuerError(
                f"bundle DAC for UID {uid} fails the Matter profile: {describe(violations)}"
            )
        await self._claim(entry, uid, csr)
        der = dac.public_bytes(serialization.Encoding.DER)
        return IssuedDac(
            pem=entry.dac_pem,
            der=der,
            serial_hex=entry.dac_serial,
            sha256=entry.dac_sha256,
            public_key_sha256=entry.public_key_sha256,
            pai_sha256=self._issuing.sha256,
            vid=entry.vid,
            pid=entry.pid,
            bundle_entry_id=entry.id,
        )

    async def _claim(self, entry: PoolEntry, uid: str, csr: CsrInfo) -> None:
        """Claim the entry, or accept an earlier claim that a live assignment of this very
        chip (UID and key) holds; raise IssuerError otherwise."""
        now = datetime.now(UTC)
        token = str(uuid.uuid4())
        if entry.claimed_at is None:
            if await self._pool.claim(entry.id, token=token, by=self._line, now=now):
                _log.info("bundle_entry_claimed", uid=uid, entry=entry.id, bundle=entry.bundle)
                return
            fresh = await self._pool.find(uid)
            assert fresh is not None
            entry = fresh
        used = await self._pool.used_by(entry.dac_sha256)
        if used is not None:
            same_chip = used.uid == uid and used.public_key_sha256 == csr.public_key_sha256
            if same_chip and used.status in _LIVE:
                return  # the store re-delivers it (or refuses) as for any DAC
            raise IssuerError(
                f"bundle DAC for UID {uid} was already used (assignment {used.id} is "
                f"{used.status}); a bundle DAC is never handed out twice"
            )
        claimed_at = entry.claimed_at
        assert claimed_at is not None
        if claimed_at > now - self._stale_after:
            raise IssuerError(
                f"bundle entry for UID {uid} is claimed by another attempt in progress "
                f"(line {entry.claimed_by}, since {claimed_at:%H:%M:%S})"
            )
        if not await self._pool.claim(
            entry.id,
            token=token,
            by=self._line,
            now=now,
            stale_token=entry.claim_token,
            stale_before=now - self._stale_after,
        ):
            raise IssuerError(f"bundle entry for UID {uid} was claimed concurrently")
        _log.warning("bundle_claim_taken_over", uid=uid, entry=entry.id, since=str(claimed_at))


def format_counts(counts: list[BundleCount]) -> list[str]:
    """One line per bundle: `bundle NAME: R of T remaining (C claimed)`."""
    return [
        f"bundle {c.bundle}: {c.remaining} of {c.total} remaining ({c.claimed} claimed)"
        for c in counts
    ]


def _read_directory(folder: Path) -> Iterator[BundleItem]:
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in _CERT_SUFFIXES:
            continue
        match = DAC_FILE_NAME.fullmatch(path.name)
        if match is None:
            yield BundleItem(str(path), None, None)  # a PAI, a PAA, ...: not keyed by UID
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield BundleItem(str(path), match["uid"].upper(), None, f"unreadable ({exc.strerror})")
            continue
        yield BundleItem(str(path), match["uid"].upper(), data)


def _read_csv(path: Path) -> Iterator[BundleItem]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PkiError(f"bundle {path}: cannot read ({reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    for row in reader:
        where = f"{path}:{line}"
        line = reader.line_num + 1
        if not _is_csv_item(row):
            continue
        first = row[0].strip()
        if len(row) != 2:
            yield BundleItem(where, first or None, None, f"{len(row)} fields, not uid,dac")
            continue
        if not _UID.fullmatch(first):
            yield BundleItem(where, None, None, f"UID {first!r} is not 8-64 hex digits")
            continue
        value = row[1].strip()
        if "-----BEGIN" in value:
            yield BundleItem(
                where, first.upper(), value.replace("\\n", "\n").encode("ascii", "replace")
            )
            continue
        dac_path = Path(value)
        if not dac_path.is_absolute():
            dac_path = path.parent / dac_path
        try:
            data = dac_path.read_bytes()
        except OSError as exc:
            yield BundleItem(where, first.upper(), None, f"{dac_path}: {exc.strerror}")
            continue
        yield BundleItem(where, first.upper(), data)


def _default_name(source: Path) -> str:
    name = source.resolve().name
    stem = name.rsplit(".", 1)[0] if source.is_file() else name
    cleaned = re.sub(r"[^A-Za-z0-9_.:+-]", "-", stem).strip("-.")[:64]
    return cleaned or "bundle"


def _source_order(source: str) -> tuple[str, int]:
    head, _, tail = source.rpartition(":")
    if head and tail.isdigit():
        return head, int(tail)
    return source, 0
