"""The OPC UA server driven by asyncua's client over Basic256Sha256 Sign&Encrypt with a user."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import select

from linehost.config import OpcuaSection
from linehost.line.controls import LineControls
from linehost.line.hold import JigHolds
from linehost.line.workorder import WorkOrderGate
from linehost.mqtt.payloads import result_payload
from linehost.opcua.server import OpcuaServer
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus
from linehost.store.audit import Audit
from linehost.store.models import audit_log
from linehost.store.store import Store
from tests.mqtt.broker import free_port
from tests.waiting import eventually

NS = "urn:linehost"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", line="l1", result_payload=result_payload
    )
    try:
        yield s
    finally:
        await s.close()


JIGS = [("st1", "j1"), ("st1", "j2")]


@pytest.fixture
def gate() -> WorkOrderGate:
    return WorkOrderGate("WO-OPC-2", 50)


@pytest.fixture
def controls(store: Store, gate: WorkOrderGate) -> LineControls:
    return LineControls(store, JigHolds(), jigs=JIGS, gate=gate)


@pytest.fixture
async def secured(
    tmp_path: Path, controls: LineControls, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[OpcuaServer, str]]:
    monkeypatch.setenv("LH_TEST_OPCUA_PW", "s3cret pass")
    monkeypatch.setenv("LH_TEST_OPCUA_VIEWER", "look only")
    port = free_port()
    settings = OpcuaSection.model_validate(
        {
            "endpoint": f"opc.tcp://0.0.0.0:{port}/linehost/",
            "certificate_dir": str(tmp_path / "opcua-pki"),
            "users": [
                {"name": "mes", "password_env": "LH_TEST_OPCUA_PW"},
                {"name": "board", "password_env": "LH_TEST_OPCUA_VIEWER", "role": "viewer"},
            ],
        }
    )
    assert settings.policy == "basic256sha256"
    server = OpcuaServer(settings, line="l1", jigs=JIGS, controls=controls)
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


async def _controls_in_audit(store: Store) -> list[dict[str, Any]]:
    t = audit_log
    stmt = select(t.c.entity_id, t.c.event, t.c.data).where(t.c.entity == "control")
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(t.c.seq))).all()
    return [{"target": r.entity_id, "event": r.event, **json.loads(r.data)} for r in rows]


@pytest.mark.timeout(90)
async def test_methods_hold_resume_close_and_every_call_is_audited_with_the_user(
    secured: tuple[OpcuaServer, str],
    tmp_path: Path,
    store: Store,
    controls: LineControls,
    gate: WorkOrderGate,
) -> None:
    _, url = secured
    j1 = controls.holds.of("st1", "j1")
    async with await _client(url, tmp_path, "mes", "s3cret pass") as client:
        idx = await client.get_namespace_index(NS)
        line = await client.nodes.objects.get_child(f"{idx}:Line")
        jig = await line.get_child([f"{idx}:Stations", f"{idx}:st1", f"{idx}:j1"])
        assert await jig.call_method(f"{idx}:Hold") is True
        assert j1.held
        assert await jig.call_method(f"{idx}:Hold") is False  # held already
        assert await jig.call_method(f"{idx}:Resume") is True
        assert not j1.held
        wo = await line.get_child(f"{idx}:WorkOrder")
        ok = await wo.call_method(f"{idx}:Open", "WO-OPC-2", ua.Variant(50, ua.VariantType.UInt32))
        assert ok is True
        assert await wo.call_method(f"{idx}:Close", "WO-OPC-2") is True
        assert gate.closed
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):
            await wo.call_method(f"{idx}:Close", "WO-OPC-2")  # closed already
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
            await wo.call_method(f"{idx}:Close", "")
    async with await _client(url, tmp_path, "board", "look only") as viewer:
        idx = await viewer.get_namespace_index(NS)
        line = await viewer.nodes.objects.get_child(f"{idx}:Line")
        jig = await line.get_child([f"{idx}:Stations", f"{idx}:st1", f"{idx}:j1"])
        state = await jig.get_child(f"{idx}:State")
        assert isinstance(await state.read_value(), str)  # a viewer reads
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
            await jig.call_method(f"{idx}:Hold")
    assert not j1.held
    rows = await _controls_in_audit(store)
    assert [(r["event"], r["user"], r["result"]) for r in rows] == [
        ("jig_held", "mes", "done"),
        ("jig_held", "mes", "held already"),
        ("jig_resumed", "mes", "done"),
        ("work_order_opened", "mes", "done"),
        ("work_order_closed", "mes", "done"),
        ("control_refused", "mes", "refused"),
        ("control_refused", "mes", "refused"),
        ("control_refused", "board", "refused"),
    ]
    assert rows[5]["reason"] == "work order WO-OPC-2 is closed already"
    assert rows[7]["refusal"] == "denied"
    assert rows[7]["operation"] == "Jig.Hold"
    assert {r["via"] for r in rows} == {"opcua"}
    assert await store.audit().verify_audit_chain() == []
