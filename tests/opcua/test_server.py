"""The OPC UA server driven by asyncua's client over Basic256Sha256 Sign&Encrypt with a user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID

from linehost.config import OpcuaSection
from linehost.opcua.server import OpcuaServer
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus
from linehost.store.audit import Audit
from linehost.store.store import Store
from tests.mqtt.broker import free_port
from tests.waiting import eventually

NS = "urn:linehost"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", line="l1")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def secured(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[OpcuaServer, str]]:
    monkeypatch.setenv("LH_TEST_OPCUA_PW", "s3cret pass")
    port = free_port()
    settings = OpcuaSection.model_validate(
        {
            "endpoint": f"opc.tcp://0.0.0.0:{port}/linehost/",
            "certificate_dir": str(tmp_path / "opcua-pki"),
            "users": [{"name": "mes", "password_env": "LH_TEST_OPCUA_PW"}],
        }
    )
    assert settings.policy == "basic256sha256"
    server = OpcuaServer(
        settings, line="l1", jigs=[("st1", "j1"), ("st1", "j2")],
        open_work_order=store.open_work_order,
    )  # fmt: skip
    await server.start()
    try:
        yield server, f"opc.tcp://127.0.0.1:{port}/linehost/"
    finally:
        await server.close()


async def _client(url: str, tmp_path: Path, user: str, password: str) -> Client:
    key, cert = tmp_path / "client-key.pem", tmp_path / "client-cert.der"
    if not cert.exists():
        await setup_self_signed_certificate(
            key, cert, "urn:linehost:test-client", "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test client"},
        )  # fmt: skip
    client = Client(url, timeout=10)
    client.application_uri = "urn:linehost:test-client"
    await client.set_security(
        SecurityPolicyBasic256Sha256, str(cert), str(key),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )  # fmt: skip
    client.set_user(user)
    client.set_password(password)
    return client


class _Changes:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append(val)


@pytest.mark.timeout(60)
async def test_basic256sha256_user_browses_subscribes_and_opens_a_work_order(
    secured: tuple[OpcuaServer, str], tmp_path: Path, store: Store
) -> None:
    server, url = secured
    client = await _client(url, tmp_path, "mes", "s3cret pass")
    async with client:
        idx = await client.get_namespace_index(NS)
        line = await client.nodes.objects.get_child(f"{idx}:Line")
        stations = await line.get_child(f"{idx}:Stations")
        jigs = await (await stations.get_child(f"{idx}:st1")).get_children()
        names = sorted([(await j.read_browse_name()).Name for j in jigs])
        assert names == ["j1", "j2"]
        state = await line.get_child([f"{idx}:Stations", f"{idx}:st1", f"{idx}:j1", f"{idx}:State"])
        assert await state.read_value() == "offline"

        changes = _Changes()
        sub = await client.create_subscription(50, changes)
        await sub.subscribe_data_change(state)
        status = JigStatus("l1", "st1", "j1", state=JigState.PROVISIONING, uid="AB12")
        server.jig_changed(status)
        await eventually(lambda: "provisioning" in changes.values, within=5, what="the change")
        assert changes.values[-1] == "provisioning", changes.values
        uid = await line.get_child([f"{idx}:Stations", f"{idx}:st1", f"{idx}:j1", f"{idx}:UID"])
        assert await uid.read_value() == "AB12"

        wo = await line.get_child(f"{idx}:WorkOrder")
        opened = await wo.call_method(
            f"{idx}:Open", "WO-OPC-1", ua.Variant(25, ua.VariantType.UInt32)
        )
        assert opened is True
        assert await (await wo.get_child(f"{idx}:Id")).read_value() == "WO-OPC-1"
        with pytest.raises(ua.UaStatusCodeError):
            await wo.call_method(f"{idx}:Open", "", ua.Variant(0, ua.VariantType.UInt32))
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):  # another quantity
            await wo.call_method(f"{idx}:Open", "WO-OPC-1", ua.Variant(9, ua.VariantType.UInt32))
    progress = await Audit(store.engine).work_order_progress("WO-OPC-1")
    assert progress is not None
    assert progress["quantity"] == 25


@pytest.mark.timeout(60)
async def test_wrong_password_and_no_security_are_refused(
    secured: tuple[OpcuaServer, str], tmp_path: Path
) -> None:
    _, url = secured
    client = await _client(url, tmp_path, "mes", "wrong")
    with pytest.raises(Exception, match=r"(?i)identity|denied|rejected|Bad"):
        async with client:
            pass
    plain = Client(url, timeout=5)
    with pytest.raises(Exception):  # noqa: B017, PT011  (asyncua raises several kinds here)
        async with plain:
            pass
