"""OPC UA `WorkOrder.Open` checks the line's work-order CD as `linehost run` does at start-up:
a CD file that no longer verifies is refused, and the database keeps the CD it was opened with."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import ua
from sqlalchemy import select

from linehost.app import check_own_work_order
from linehost.config import OpcuaSection, load_config
from linehost.line.controls import LineControls
from linehost.line.hold import JigHolds
from linehost.line.workorder import WorkOrderGate, checked_work_order
from linehost.mqtt.payloads import result_payload
from linehost.opcua.server import OpcuaServer
from linehost.pki.devpki import init_dev
from linehost.store.models import work_orders
from linehost.store.store import Store
from tests.mqtt.broker import free_port
from tests.opcua.test_server import NS, _client


@pytest.fixture
async def line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Store, str, Path]]:
    pki = init_dev(tmp_path / "pki", cd=True)
    assert pki.cd is not None
    assert pki.cd_signer is not None
    config_path = tmp_path / "line.toml"
    config_path.write_text(
        '[line]\nname = "l1"\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "l.db"}"\n'
        f'[pki]\npai_cert = "{pki.pai_cert}"\npai_key = "{pki.pai_key}"\nvid = "FFF1"\n'
        f'pid = "8000"\ncd_signer_certs = ["{pki.cd_signer}"]\n'
        f'[work_order]\nid = "WO-CD"\nquantity = 10\ncd_file = "{pki.cd}"\n'
        'firmware_version = "2.0.1"\n'
    )
    config = load_config(config_path)
    store = await Store.open(config.database.url, line="l1", result_payload=result_payload)
    own = checked_work_order(config)
    assert own is not None
    await store.open_work_order(own.id, own.quantity, own.recorded)  # as `linehost run` does
    controls = LineControls(
        store, JigHolds(), jigs=[("st1", "j1")], gate=WorkOrderGate(own.id, own.quantity),
        check_work_order=functools.partial(check_own_work_order, config),
    )  # fmt: skip
    monkeypatch.setenv("LH_TEST_OPCUA_PW", "s3cret pass")
    port = free_port()
    settings = OpcuaSection.model_validate(
        {
            "endpoint": f"opc.tcp://0.0.0.0:{port}/linehost/",
            "certificate_dir": str(tmp_path / "opcua-pki"),
            "users": [{"name": "mes", "password_env": "LH_TEST_OPCUA_PW"}],
        }
    )
    server = OpcuaServer(settings, line="l1", jigs=[("st1", "j1")], controls=controls)
    await server.start()
    try:
        yield store, f"opc.tcp://127.0.0.1:{port}/linehost/", pki.cd
    finally:
        await server.close()
        await store.close()


@pytest.mark.timeout(60)
async def test_open_checks_the_work_order_cd(line: tuple[Store, str, Path], tmp_path: Path) -> None:
    store, url, cd = line
    good = cd.read_bytes()
    client = await _client(url, tmp_path, "mes", "s3cret pass")
    async with client:
        idx = await client.get_namespace_index(NS)
        wo = await client.nodes.objects.get_child([f"{idx}:Line", f"{idx}:WorkOrder"])
        quantity = ua.Variant(10, ua.VariantType.UInt32)
        assert await wo.call_method(f"{idx}:Open", "WO-CD", quantity) is True
        cd.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # the signature no longer verifies
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):
            await wo.call_method(f"{idx}:Open", "WO-CD", quantity)
        # another work order names no CD of its own: registered with its quantity only
        assert await wo.call_method(f"{idx}:Open", "WO-OTHER", quantity) is True
    async with store.engine.connect() as conn:
        rows = {
            r.id: (r.cd_sha256, r.firmware_version) for r in await conn.execute(select(work_orders))
        }
    assert rows == {
        "WO-CD": (hashlib.sha256(good).hexdigest(), "2.0.1"),
        "WO-OTHER": (None, None),
    }
