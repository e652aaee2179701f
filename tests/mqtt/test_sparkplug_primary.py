"""The edge node waits for its primary host application and is born again when it returns."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from linehost.config import MqttSection, SparkplugSection
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus
from linehost.sparkplug.node import EdgeNode
from linehost.sparkplug.payloads import Payload
from linehost.store.sparkplug import SparkplugStore
from linehost.store.store import Store
from tests.mqtt.subscriber import Received, Subscriber
from tests.waiting import eventually

pytestmark = pytest.mark.mqtt


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", line="l1", result_payload=result_payload
    )
    try:
        yield s
    finally:
        await s.close()


def _state(url: str, topic: str, online: bool | None) -> None:
    """Publish (retained) or clear the primary host's STATE."""
    parts = urlsplit(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"h-{secrets.token_hex(4)}")
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=5)
    client.loop_start()
    body = b"" if online is None else json.dumps({"online": online, "timestamp": 1}).encode()
    try:
        client.publish(topic, body, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _kinds(messages: list[Received]) -> list[str]:
    return [m.topic.split("/")[2] for m in messages if "/STATE/" not in m.topic]


def _bd_seq(message: Received) -> int:
    payload = Payload.FromString(message.payload)
    return next(int(m.long_value) for m in payload.metrics if m.name == "bdSeq")


async def _until(sub: Subscriber, predicate: object, what: str, timeout: float = 10) -> None:
    assert callable(predicate)
    await eventually(
        lambda: predicate(_kinds(sub.snapshot())),
        within=timeout,
        what=lambda: f"{what}: {_kinds(sub.snapshot())}",
        every=0.05,
    )


@pytest.mark.timeout(60)
async def test_births_wait_for_the_primary_host_and_follow_it(
    broker_url: str, store: Store
) -> None:
    group, host_id = f"lhtest-{secrets.token_hex(4)}", f"scada-{secrets.token_hex(4)}"
    state_topic = f"spBv1.0/STATE/{host_id}"
    sub = Subscriber(broker_url, [f"spBv1.0/{group}/#"], f"w-{secrets.token_hex(4)}",
                     persistent=False, qos=0).start()  # fmt: skip
    settings = SparkplugSection(group_id=group, edge_node_id="n1", primary_host_id=host_id)
    node = EdgeNode(
        settings,
        # its own client id: the sqlite and postgres runs of this test may meet (xdist)
        MqttSection(url=broker_url, drain_timeout=2, client_id=f"{group}-node"),
        SparkplugStore(store.engine, "l1"),
        line="l1",
        jigs=[("st1", "j1")],
    )
    node.jig_changed(JigStatus("l1", "st1", "j1", state=JigState.WAITING_FOR_DEVICE))
    node.start()
    try:
        await asyncio.sleep(1.5)
        assert _kinds(sub.snapshot()) == [], "no birth before the primary host is online"

        _state(broker_url, state_topic, True)
        await _until(sub, lambda k: k == ["NBIRTH", "DBIRTH"], "births once the host is online")
        first = sub.snapshot()[0]

        _state(broker_url, state_topic, False)
        await _until(sub, lambda k: k[-1:] == ["NDEATH"], "NDEATH when the host goes offline")
        death = sub.snapshot()[-1]
        assert _bd_seq(death) == _bd_seq(first)

        _state(broker_url, state_topic, True)
        await _until(sub, lambda k: k.count("NBIRTH") == 2 and k[-1] == "DBIRTH", "a rebirth")
        second = [m for m in sub.snapshot() if m.topic.split("/")[2] == "NBIRTH"][1]
        assert _bd_seq(second) == (_bd_seq(first) + 1) % 256, "a new connection, a new bdSeq"
    finally:
        await node.close()
        _state(broker_url, state_topic, None)
    await _until(sub, lambda k: k[-2:] == ["DDEATH", "NDEATH"], "DDEATH and NDEATH on close")
    sub.stop()
