"""Pre-issued bundles: reading sources, validation, the pool (idempotent import, guarded claim on
SQLite and PostgreSQL), and the BundleIssuer's answers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.errors import IssuerError, PkiError
from linehost.mqtt.payloads import result_payload
from linehost.pki.bundle import (
    DAC_FILE_NAME,
    BundleIssuer,
    BundleItem,
    check_bundle_dac,
    import_bundle,
    read_bundle,
)
from linehost.pki.csr import parse_csr
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import LocalIssuer
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AssignRequest, AttemptEnd, AttemptStart, CsrInfo
from linehost.store.bundles import BundlePool
from linehost.store.engine import create_engine
from linehost.store.store import Store

from .builders import make_csr

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def pai(dev_pki: DevPki) -> x509.Certificate:
    return x509.load_pem_x509_certificate(dev_pki.pai_cert.read_bytes())


def _sha(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def _chip(issuer: LocalIssuer, uid: str) -> tuple[CsrInfo, str]:
    """A chip's CSR (its key) and the DAC a provider pre-issued for it."""
    csr = parse_csr(make_csr())
    return csr, (await issuer.issue(uid, csr)).pem


# --- sources -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("0A1B2C3D4E5F6071_keyOID=E0F0_DAC.pem", "0A1B2C3D4E5F6071"),
        ("0a1b2c3d_keyOID=e0f1_DAC.PEM", "0a1b2c3d"),
        ("00112233445566778899AABBCCDDEEFF.pem", "00112233445566778899AABBCCDDEEFF"),
        ("DEADBEEF_DAC.der", "DEADBEEF"),
    ],
)
def test_file_names_that_carry_a_uid(name: str, uid: str) -> None:
    match = DAC_FILE_NAME.fullmatch(name)
    assert match is not None
    assert match["uid"] == uid


@pytest.mark.parametrize("name", ["PAI_FFF1.pem", "1234567.pem", "0A1B2C3D_keyOID=E0F0_PAI.pem"])
def test_file_names_without_a_uid(name: str) -> None:
    assert DAC_FILE_NAME.fullmatch(name) is None


def test_csv_items_carry_their_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "d.pem").write_text("PEM-ON-DISK")
    csv = tmp_path / "b.csv"
    csv.write_text(
        "uid,dac\n"
        "# a comment\n"
        "0011223344556677,d.pem\n"
        '8899AABBCCDDEEFF,"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"\n'
        "\n"
        "not-hex,d.pem\n"
        "0011223344556678,missing.pem\n"
        "0011223344556679\n"
    )
    items = list(read_bundle(csv))
    assert [i.source for i in items] == [f"{csv}:{n}" for n in (3, 4, 8, 9, 10)]
    assert items[0] == BundleItem(f"{csv}:3", "0011223344556677", b"PEM-ON-DISK")
    assert items[1].data is not None
    assert items[1].data.startswith(b"-----BEGIN CERTIFICATE-----\nAAAA")
    assert items[2].problem == "UID 'not-hex' is not 8-64 hex digits"
    assert items[3].problem is not None
    assert "missing.pem" in items[3].problem
    assert items[4].problem == "1 fields, not uid,dac"


def test_missing_source_is_a_pki_error(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no such file or directory"):
        list(read_bundle(tmp_path / "nope"))


async def test_checker_rejects_foreign_and_wrong_product_dacs(
    issuer: LocalIssuer, pai: x509.Certificate, tmp_path: Path
) -> None:
    _, pem = await _chip(issuer, "0000000000000001")
    item = BundleItem("x", "0000000000000001", pem.encode())
    good = check_bundle_dac(item, pai, _sha(pai), "FFF1", "8000", NOW)
    assert good.uid == "0000000000000001"
    with pytest.raises(PkiError, match=r"^DAC PID 8000 differs from configured pid 8001$"):
        check_bundle_dac(item, pai, _sha(pai), "FFF1", "8001", NOW)
    other = init_dev(tmp_path / "other")
    other_pai = x509.load_pem_x509_certificate(other.pai_cert.read_bytes())
    with pytest.raises(PkiError, match="fails the Matter profile: DAC"):
        check_bundle_dac(item, other_pai, _sha(other_pai), "FFF1", "8000", NOW)
    with pytest.raises(PkiError, match=r"not a PEM or DER X\.509 certificate"):
        check_bundle_dac(BundleItem("x", "00000002", b"junk"), pai, _sha(pai), "FFF1", "8000", NOW)
    two = BundleItem("x", "00000003", (pem + pem).encode())
    with pytest.raises(PkiError, match="holds 2 certificates"):
        check_bundle_dac(two, pai, _sha(pai), "FFF1", "8000", NOW)


# --- the pool ---------------------------------------------------------------------------------


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url, line="bundle-line", result_payload=result_payload)
    yield store
    await store.close()


@pytest.fixture
def pool(store: Store) -> BundlePool:
    return BundlePool(store.engine)


async def test_import_is_idempotent_and_reports_conflicts(
    issuer: LocalIssuer, pai: x509.Certificate, pool: BundlePool, tmp_path: Path
) -> None:
    folder = tmp_path / "b1"
    folder.mkdir()
    for i in range(3):
        uid = f"{i:016X}"
        _, pem = await _chip(issuer, uid)
        (folder / f"{uid}_keyOID=E0F0_DAC.pem").write_text(pem)
    first = await import_bundle(pool, folder, pai=pai, vid="FFF1", pid="8000")
    assert (first.bundle, first.read, first.added, first.unchanged) == ("b1", 3, 3, 0)
    again = await import_bundle(pool, folder, pai=pai, vid="FFF1", pid="8000")
    assert (again.added, again.unchanged, again.rejected) == (0, 3, [])
    # a different DAC for a UID already in the pool is refused, per line
    _, other = await _chip(issuer, "0000000000000001")
    csv = tmp_path / "b2.csv"
    csv.write_text(f'0000000000000001,"{other.replace(chr(10), chr(92) + "n")}"\n')
    clash = await import_bundle(pool, csv, pai=pai, vid="FFF1", pid="8000")
    assert clash.added == 0
    assert clash.rejected == [
        (f"{csv}:1", f"UID 0000000000000001 already has another DAC in the pool (bundle b1, "
         f"{folder / '0000000000000001_keyOID=E0F0_DAC.pem'})"),
    ]  # fmt: skip
    counts = await pool.counts()
    assert [(c.bundle, c.total, c.claimed, c.remaining) for c in counts] == [("b1", 3, 0, 3)]


async def test_only_one_of_many_concurrent_claims_wins(
    issuer: LocalIssuer, pai: x509.Certificate, db_url: str, store: Store, tmp_path: Path
) -> None:
    """Several hosts (own engines) race for one entry: exactly one UPDATE takes it."""
    folder = tmp_path / "race"
    folder.mkdir()
    _, pem = await _chip(issuer, "00000000000000AA")
    (folder / "00000000000000AA.pem").write_text(pem)
    await import_bundle(BundlePool(store.engine), folder, pai=pai, vid="FFF1", pid="8000")
    hosts = [await BundlePool.open(db_url) for _ in range(8)]
    try:
        entry = await hosts[0].find("00000000000000AA")
        assert entry is not None
        wins = await asyncio.gather(
            *(
                host.claim(entry.id, token=f"00000000-0000-0000-0000-{i:012d}", by=f"h{i}", now=NOW)
                for i, host in enumerate(hosts)
                for _ in range(3)
            )
        )
    finally:
        for host in hosts:
            await host.close()
    assert wins.count(True) == 1
    claimed = await BundlePool(store.engine).find("00000000000000AA")
    assert claimed is not None
    assert claimed.claimed_at is not None
    assert (await BundlePool(store.engine).counts())[0].remaining == 0


# --- the issuer --------------------------------------------------------------------------------


def _start(uid: str, n: int) -> AttemptStart:
    return AttemptStart(
        attempt_id=f"00000000-0000-4000-8000-{n:012d}",
        line="bundle-line",
        station="st1",
        jig="j1",
        uid=uid,
        started_at=datetime.now(UTC),
    )


async def test_issuer_hands_out_a_dac_once_and_says_why_not(
    issuer: LocalIssuer,
    pai: x509.Certificate,
    dev_pki: DevPki,
    store: Store,
    db_url: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "lot7"
    folder.mkdir()
    chips = {}
    for uid in ("00000000000000B1", "00000000000000B2"):
        csr, pem = await _chip(issuer, uid)
        chips[uid] = (csr, pem)
        (folder / f"{uid}_keyOID=E0F0_DAC.pem").write_text(pem)
    await import_bundle(BundlePool(store.engine), folder, pai=pai, vid="FFF1", pid="8000")
    bundles = BundleIssuer.load(
        dev_pki.pai_cert, "FFF1", "8000", pool=BundlePool(create_engine(db_url), owns_engine=True),
        line="bundle-line", paa_cert=dev_pki.paa_cert,
    )  # fmt: skip
    try:
        with pytest.raises(IssuerError, match=r"^no bundle entry for UID 00000000000000C0$"):
            await bundles.issue("00000000000000C0", parse_csr(make_csr()))
        with pytest.raises(IssuerError, match=r"^bundle DAC for UID 00000000000000B1 \(serial "):
            await bundles.issue("00000000000000B1", parse_csr(make_csr()))
        csr, pem = chips["00000000000000B1"]
        dac = await bundles.issue("00000000000000B1", csr)
        assert dac.pem == pem
        assert dac.bundle_entry_id is not None
        # recorded and confirmed by the store: a re-delivery to the same chip is allowed
        req = AssignRequest(_start("00000000000000B1", 1), csr.public_key_sha256, dac)
        result = await store.assign(req)
        assert result.kind == "issued"
        again = await bundles.issue("00000000000000B1", csr)
        assert again.sha256 == dac.sha256
        # a second, concurrent claim before anything is recorded waits its turn
        csr2, _ = chips["00000000000000B2"]
        await bundles.issue("00000000000000B2", csr2)
        with pytest.raises(IssuerError, match="claimed by another attempt in progress"):
            await bundles.issue("00000000000000B2", csr2)
        # the device refused the DAC (finish:003): a bundle DAC is never handed out twice
        await store.end_attempt(
            req.attempt,
            AttemptEnd(
                outcome=Outcome.DEVICE_ERROR,
                detail="device said 003",
                ended_at=datetime.now(UTC),
                device_code=3,
                assignment_id=result.assignment_id,
                assignment_status=AssignmentStatus.FAILED,
            ),
        )
        with pytest.raises(IssuerError, match=r"already used \(assignment \d+ is failed\)"):
            await bundles.issue("00000000000000B1", csr)
        counts = await bundles.counts()
        assert [(c.bundle, c.claimed, c.remaining) for c in counts] == [("lot7", 2, 0)]
    finally:
        await bundles.aclose()


async def test_stale_claim_is_taken_over(
    issuer: LocalIssuer, pai: x509.Certificate, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "stale"
    folder.mkdir()
    csr, pem = await _chip(issuer, "00000000000000D1")
    (folder / "00000000000000D1.pem").write_text(pem)
    pool = BundlePool(store.engine)
    await import_bundle(pool, folder, pai=pai, vid="FFF1", pid="8000")
    entry = await pool.find("00000000000000D1")
    assert entry is not None
    old = datetime.now(UTC) - timedelta(hours=1)
    assert await pool.claim(entry.id, token="dead-attempt", by="crashed", now=old)
    bundles = BundleIssuer(pai, pool, "FFF1", "8000", line="bundle-line")
    dac = await bundles.issue("00000000000000D1", csr)
    assert dac.pem == pem
    taken = await pool.find("00000000000000D1")
    assert taken is not None
    assert taken.claimed_by == "bundle-line"
    assert taken.claim_token != "dead-attempt"


def test_bundle_issuer_refuses_a_pai_of_another_vendor(dev_pki: DevPki) -> None:
    with pytest.raises(PkiError, match="PAI VID FFF1 differs from configured vid FFF2"):
        BundleIssuer.load(
            dev_pki.pai_cert, "FFF2", "8000",
            pool=BundlePool(create_engine("sqlite+aiosqlite:///:memory:")), line="l",
        )  # fmt: skip
