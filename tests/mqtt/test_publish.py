"""publish_all: many QoS 1 messages, one future, against the real Mosquitto."""

from __future__ import annotations

import asyncio
import selectors
import signal

import aiomqtt
import pytest

from linehost.mqtt.publish import PublishFailed, publish_all, publish_now
from tests.mqtt.broker import PrivateBroker
from tests.mqtt.subscriber import Subscriber


async def test_every_message_arrives_and_is_acknowledged(broker_url: str, prefix: str) -> None:
    sub = Subscriber(broker_url, [f"{prefix}/#"], f"{prefix}-sub", persistent=False).start()
    try:
        messages = [(f"{prefix}/m/{i}", f"payload {i}".encode(), i % 2 == 0) for i in range(60)]
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"{prefix}-pub") as client:
            acked = await publish_all(client, messages)
            # Nothing left behind in aiomqtt's bookkeeping, and it still publishes normally.
            assert client._pending_publishes == {}
            await client.publish(f"{prefix}/after", b"x", qos=1)
        assert acked == list(range(60))
        await asyncio.to_thread(
            sub.wait_for, lambda got: len(got) >= 61, 10, "every message at the subscriber"
        )
        got = {m.topic: m for m in sub.snapshot()}
        for topic, payload, _retain in messages:
            assert got[topic].payload == payload
            assert got[topic].qos == 1
    finally:
        sub.stop()


async def test_no_puback_is_a_failure_naming_nothing_acknowledged(
    own_broker: PrivateBroker, prefix: str
) -> None:
    """The broker stops while messages are in flight: PublishFailed, nothing counted sent."""
    async with aiomqtt.Client("127.0.0.1", own_broker.port, identifier=f"{prefix}-pub") as client:
        await publish_all(client, [(f"{prefix}/first", b"1", False)])  # a working link first
        own_broker.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            with pytest.raises(PublishFailed) as failed:
                await publish_all(
                    client, [(f"{prefix}/m/{i}", b"x", False) for i in range(5)], ack_within=0.5
                )
            assert failed.value.acked == []
            assert client._pending_publishes == {}
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]


async def test_publish_now_keeps_the_order_given_and_waits_for_nothing(
    broker_url: str, prefix: str
) -> None:
    """QoS 0 messages handed over with publish_now arrive in order; the loop is left with no
    writer to spin on; QoS 1 publishing works as before around them."""
    sub = Subscriber(broker_url, [f"{prefix}/#"], f"{prefix}-sub", persistent=False, qos=0).start()
    loop = asyncio.get_running_loop()
    try:
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"{prefix}-pub") as client:
            await publish_all(client, [(f"{prefix}/first", b"1", False)])
            fd = client._client.socket().fileno()  # type: ignore[union-attr]
            publish_now(client, [(f"{prefix}/n", b"0"), (f"{prefix}/n", b"1")])
            assert client._pending_publishes == {}  # nothing to wait for at QoS 0
            assert not client._client.want_write(), "written at once"
            for i in range(2, 40):
                publish_now(client, [(f"{prefix}/n", str(i).encode())])
            await asyncio.sleep(0.1)  # aiomqtt's deferred writer registrations have run
            key = loop._selector.get_map().get(fd)  # type: ignore[attr-defined]
            assert key is None or not key.events & selectors.EVENT_WRITE, "a writer left behind"
            await client.publish(f"{prefix}/last", b"x", qos=1)  # aiomqtt's own, after
        await asyncio.to_thread(
            sub.wait_for, lambda got: len(got) >= 42, 10, "every message at the subscriber"
        )
        numbered = [m for m in sub.snapshot() if m.topic == f"{prefix}/n"]
        assert [m.payload for m in numbered] == [str(i).encode() for i in range(40)]
        assert {m.qos for m in numbered} == {0}
    finally:
        sub.stop()


async def test_publish_now_without_a_connection_is_a_failure(prefix: str) -> None:
    client = aiomqtt.Client("127.0.0.1", 1883, identifier=f"{prefix}-pub")
    async with client:
        pass  # connected once, then disconnected
    with pytest.raises(PublishFailed):
        publish_now(client, [(f"{prefix}/n", b"lost")])
