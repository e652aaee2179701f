"""The gateway over real TLS: enrollment, replays, every refusal, quotas exact under concurrency,
rate limits, client revocation, and its database and audit chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.cli import main
from linehost.gateway.server import RunningGateway
from linehost.gateway.store import GatewayStore
from linehost.pki.est_wire import (
    CACERTS_PATH,
    QUOTA_HEADER,
    REASON_HEADER,
    SIMPLEREENROLL_PATH,
    decode_certs_only,
)
from linehost.pki.profile import check_dac
from linehost.store.audit import Audit

from .conftest import (
    CLIENTS,
    GatewayFiles,
    Starter,
    client_tls,
    enroll,
    gateway_toml,
    make_csr_der,
)


def _uid(i: int) -> str:
    return f"{i:016X}"


def _pai(files: GatewayFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.pki.pai_cert.read_bytes())


async def test_enroll_gives_a_matter_dac_for_the_csr_key_recorded_and_audited(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    csr, key = make_csr_der()
    reply = await enroll(gw_files, gateway.port, "line-1", _uid(1), csr, work_order="WO-1")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/pkcs7-mime")
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    [dac] = decode_certs_only(reply.body)
    assert dac.public_key() == key.public_key()
    assert check_dac(dac, _pai(gw_files)) == []
    [record] = await gateway.store.issuances()
    assert (record.client, record.uid, record.work_order) == ("line-1", _uid(1), "WO-1")
    assert record.dac_serial == f"{dac.serial_number:X}"
    assert await Audit(gateway.store.engine).verify_audit_chain(cross_check=False) == []


async def test_cacerts_is_the_pai_chain_without_a_client_certificate(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    connector = aiohttp.TCPConnector(ssl=client_tls(gw_files, None))
    url = f"https://127.0.0.1:{gateway.port}{CACERTS_PATH}"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as resp:
        assert resp.status == 200
        certs = decode_certs_only(await resp.read())
    names = {c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in certs}
    assert names == {
        _pai(gw_files).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
        x509.load_pem_x509_certificate(gw_files.pki.paa_cert.read_bytes())
        .subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
        .value,
    }


async def test_replayed_request_gets_the_same_dac_and_mints_nothing(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    csr, _ = make_csr_der()
    first = await enroll(gw_files, gateway.port, "line-1", _uid(2), csr)
    again = await asyncio.gather(
        *(enroll(gw_files, gateway.port, "line-1", _uid(2), csr) for _ in range(4))
    )
    assert first.status == 200
    assert all(r.status == 200 and r.body == first.body for r in again)
    assert len(await gateway.store.issuances()) == 1
    quota = await gateway.store.quota("client", "line-1")
    assert quota is not None
    assert quota.issued == 1


async def test_concurrent_first_requests_for_one_uid_mint_one_dac(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    csr, _ = make_csr_der()
    replies = await asyncio.gather(
        *(enroll(gw_files, gateway.port, "line-1", _uid(3), csr) for _ in range(6))
    )
    assert {r.status for r in replies} == {200}
    assert len({r.body for r in replies}) == 1
    assert len(await gateway.store.issuances()) == 1


async def test_another_key_for_a_uid_with_a_dac_is_refused(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    assert (
        await enroll(gw_files, gateway.port, "line-1", _uid(4), make_csr_der()[0])
    ).status == 200
    reply = await enroll(gw_files, gateway.port, "line-1", _uid(4), make_csr_der()[0])
    assert reply.status == 409
    assert reply.headers[REASON_HEADER] == "uid_has_dac"
    assert b"re-provisioning is not allowed" in reply.body
    # The same key and UID from another client is not handed over either.
    csr, _ = make_csr_der()
    assert (await enroll(gw_files, gateway.port, "line-1", _uid(5), csr)).status == 200
    other = await enroll(gw_files, gateway.port, "line-2", _uid(5), csr)
    assert (other.status, other.headers[REASON_HEADER]) == (409, "uid_has_dac")
    # One key, two UIDs: refused.
    dup = await enroll(gw_files, gateway.port, "line-1", _uid(6), csr)
    assert (dup.status, dup.headers[REASON_HEADER]) == (409, "duplicate_key")
    assert len(await gateway.store.issuances()) == 2


async def test_reprovisioning_when_allowed_supersedes_the_old_dac(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    gw = await gateway_factory(gateway_toml(gw_files, db, gateway_extra="allow_reprovision = true"))
    assert (await enroll(gw_files, gw.port, "line-1", _uid(7), make_csr_der()[0])).status == 200
    assert (await enroll(gw_files, gw.port, "line-1", _uid(7), make_csr_der()[0])).status == 200
    statuses = sorted(r.status for r in await gw.store.issuances())
    assert statuses == ["issued", "superseded"]


async def test_refusals_name_their_reason(
    gw_files: GatewayFiles, gateway: RunningGateway, tmp_path: Path
) -> None:
    port = gateway.port
    csr, _ = make_csr_der()
    no_cert = await enroll(gw_files, port, None, _uid(8), csr)
    assert (no_cert.status, no_cert.headers[REASON_HEADER]) == (401, "no_client_cert")

    with pytest.raises(aiohttp.ClientError):  # another CA's certificate: the handshake fails
        await enroll(gw_files, port, "stranger", _uid(8), csr)

    bad_sig, _ = make_csr_der(bad_signature=True)
    reply = await enroll(gw_files, port, "line-1", _uid(8), bad_sig)
    assert (reply.status, reply.headers[REASON_HEADER]) == (400, "csr_rejected")
    assert b"proof of possession" in reply.body

    p384, _ = make_csr_der(ec.generate_private_key(ec.SECP384R1()))
    reply = await enroll(gw_files, port, "line-1", _uid(8), p384)
    assert (reply.status, reply.headers[REASON_HEADER]) == (400, "csr_rejected")
    assert b"P-256" in reply.body

    reply = await enroll(gw_files, port, "line-1", "not-a-uid", csr)
    assert (reply.status, reply.headers[REASON_HEADER]) == (400, "bad_request")

    reply = await enroll(gw_files, port, "line-1", _uid(8), csr, path=SIMPLEREENROLL_PATH)
    assert (reply.status, reply.headers[REASON_HEADER]) == (501, "reenroll_not_offered")
    assert await gateway.store.issuances() == []


async def test_client_not_allowed_for_the_product_or_work_order_is_refused(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    clients = (
        '[[clients]]\nname = "line-1"\nproducts = ["FFF1:8001"]\n\n'
        '[[clients]]\nname = "line-2"\nproducts = ["FFF1:8000"]\nwork_orders = ["WO-7"]\n'
    )
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    gw = await gateway_factory(gateway_toml(gw_files, db, clients=clients))
    csr, _ = make_csr_der()
    reply = await enroll(gw_files, gw.port, "line-1", _uid(9), csr)
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "product_not_allowed")
    reply = await enroll(gw_files, gw.port, "line-2", _uid(9), csr, work_order="WO-8")
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "work_order_not_allowed")
    reply = await enroll(gw_files, gw.port, "line-2", _uid(9), csr)
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "work_order_not_allowed")
    reply = await enroll(gw_files, gw.port, "line-3", _uid(9), csr)
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "client_unknown")
    assert (
        await enroll(gw_files, gw.port, "line-2", _uid(9), csr, work_order="WO-7")
    ).status == 200


async def test_revoked_client_certificate_is_refused_from_the_next_request(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    cert_path, _ = gw_files.cert("line-3")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    await gateway.store.add_client_cert("line-3", cert)
    assert (
        await enroll(gw_files, gateway.port, "line-3", _uid(10), make_csr_der()[0])
    ).status == 200
    assert await gateway.store.revoke_client("line-3", serial=None, reason="line PC stolen") == 1
    reply = await enroll(gw_files, gateway.port, "line-3", _uid(11), make_csr_der()[0])
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "client_revoked")


async def test_rate_limit_answers_429_with_retry_after(
    gw_files: GatewayFiles, gateway_factory: Starter, tmp_path: Path
) -> None:
    clients = '[[clients]]\nname = "line-1"\nproducts = ["FFF1:8000"]\nrate = 0.01\nburst = 2\n'
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    gw = await gateway_factory(gateway_toml(gw_files, db, clients=clients))
    replies = [
        await enroll(gw_files, gw.port, "line-1", _uid(20 + i), make_csr_der()[0]) for i in range(3)
    ]
    assert [r.status for r in replies] == [200, 200, 429]
    assert replies[2].headers[REASON_HEADER] == "rate_limited"
    assert 1 <= int(replies[2].headers["Retry-After"]) <= 100
    assert len(await gw.store.issuances()) == 2


async def test_work_order_quota_is_exact_with_8_clients_racing_on_two_gateways(
    gw_files: GatewayFiles, db_url: str, gateway_factory: Starter
) -> None:
    """Two gateway processes' worth of servers on one database, 8 clients, 24 requests for
    the last 10 DACs of a work order: exactly 10 DACs, the rest refused as quota_exhausted."""
    first = await gateway_factory(gateway_toml(gw_files, db_url))
    second = await gateway_factory(gateway_toml(gw_files, db_url))
    await first.store.set_quota("work_order", "WO-9", {"max_dacs": 13})
    warmup = [
        await enroll(
            gw_files, first.port, "line-1", _uid(100 + i), make_csr_der()[0], work_order="WO-9"
        )
        for i in range(3)
    ]
    assert {r.status for r in warmup} == {200}

    async def one(n: int) -> tuple[int, str | None, str | None]:
        gw = first if n % 2 else second
        reply = await enroll(
            gw_files, gw.port, CLIENTS[n % 8], _uid(200 + n), make_csr_der()[0], work_order="WO-9"
        )
        return reply.status, reply.headers.get(REASON_HEADER), reply.headers.get(QUOTA_HEADER)

    results = await asyncio.gather(*(one(n) for n in range(24)))
    assert sum(1 for r in results if r[0] == 200) == 10
    assert sorted({r for r in results if r[0] != 200}) == [
        (403, "quota_exhausted", "work_order:WO-9")
    ]
    records = await first.store.issuances()
    assert len(records) == 13
    quota = await first.store.quota("work_order", "WO-9")
    assert quota is not None
    assert quota.issued == 13
    assert await first.store.count_mismatches() == []


async def test_client_quota_refuses_without_signing(
    gw_files: GatewayFiles, gateway: RunningGateway
) -> None:
    await gateway.store.set_quota("client", "line-4", {"max_dacs": 1})
    assert (
        await enroll(gw_files, gateway.port, "line-4", _uid(30), make_csr_der()[0])
    ).status == 200
    reply = await enroll(gw_files, gateway.port, "line-4", _uid(31), make_csr_der()[0])
    assert (reply.status, reply.headers[REASON_HEADER]) == (403, "quota_exhausted")
    assert reply.headers[QUOTA_HEADER] == "client:line-4"
    assert b"quota of 1 DACs exhausted" in reply.body


def test_quota_cli_sets_shows_and_audits(
    gw_files: GatewayFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"))
    args = ["gateway", "--config", str(config), "quota"]
    assert main([*args, "set", "--client", "line-1", "--max", "500", "--rate", "5"]) == 0
    assert main([*args, "set", "--work-order", "WO-1", "--max", "1000"]) == 0
    assert main([*args, "set", "--work-order", "WO-1", "--max", "none"]) == 0
    capsys.readouterr()
    assert main([*args, "show", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {
            "scope": "client",
            "name": "line-1",
            "issued": 0,
            "max_dacs": 500,
            "rate": 5.0,
            "burst": 100,
        },
        {
            "scope": "work_order",
            "name": "WO-1",
            "issued": 0,
            "max_dacs": None,
            "rate": None,
            "burst": None,
        },
    ]
    assert main([*args, "set", "--client", "nobody", "--max", "1"]) == 2
    assert "not in [[clients]]" in capsys.readouterr().err
    assert main([*args, "set", "--client", "line-1", "--max", "-3"]) == 2
    assert main(["gateway", "--config", str(config), "verify"]) == 0
    assert "audit chain intact" in capsys.readouterr().out

    async def events() -> list[tuple[str, str]]:
        store = await GatewayStore.open(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", name="gw-test")
        try:
            async with store.engine.connect() as conn:
                from sqlalchemy import text

                rows = await conn.execute(
                    text("SELECT event, entity_id FROM audit_log ORDER BY seq")
                )
                return [(r[0], r[1]) for r in rows]
        finally:
            await store.close()

    assert asyncio.run(events()) == [
        ("quota_set", "client:line-1"),
        ("quota_set", "work_order:WO-1"),
        ("quota_set", "work_order:WO-1"),
    ]


def test_client_add_revoke_and_list(
    gw_files: GatewayFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(gw_files, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"))
    base = ["gateway", "--config", str(config), "client"]
    assert main([*base, "add", "line-5", "--out", str(tmp_path / "out")]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "out" / "line-5.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "line-5"
    ca = x509.load_pem_x509_certificate(gw_files.tls.client_ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "out" / "line-5.key").stat().st_mode & 0o077 == 0
    assert main([*base, "add", "somebody", "--out", str(tmp_path / "out")]) == 2
    assert main([*base, "revoke", "line-5", "--reason", "decommissioned"]) == 0
    assert main([*base, "revoke", "line-5", "--reason", "again"]) == 2
    capsys.readouterr()
    assert main([*base, "list"]) == 0
    assert f"line-5 {cert.serial_number:X}" in capsys.readouterr().out
    assert main(["gateway", "--config", str(config), "verify"]) == 0


def test_gateway_without_config_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "linehost: error: linehost gateway: --config FILE is required"
    )
