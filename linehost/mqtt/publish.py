"""QoS 1 publishing of many messages with one future, not one per message.

`aiomqtt.Client.publish` makes an Event, a `wait_for` task and a timeout per message and
awaits each PUBACK on its own: at one result and a few jig states per device that was most of
the relay's CPU (docs/performance.md). Here a group of messages goes to paho at once and one
future waits for all their PUBACKs; the guarantee is the same (a message counts as delivered
only once its PUBACK came back).

`publish_now` hands QoS 0 messages to paho and writes them to the socket at once, awaiting
nothing (aiomqtt would make an Event and a `wait_for` task for each and leave the write to the
loop's writer callback): they go on the wire in the order given (paho's one outgoing queue).

It relies on how aiomqtt 2.x tracks a QoS 1 publish: paho's `on_publish(mid)` makes aiomqtt
call `.set()` on `_pending_publishes[mid]` (pinned: aiomqtt>=2.5,<3; tests/mqtt/test_publish.py
drives it against the real broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as mqtt

QOS: Final = 1


class _Ack:
    """Stands in for aiomqtt's per-message Event: counts the PUBACK towards the group."""

    __slots__ = ("group", "index")

    def __init__(self, group: _Group, index: int) -> None:
        self.group = group
        self.index = index

    def set(self) -> None:
        self.group.acked(self.index)


class _Group:
    __slots__ = ("acked_at", "done", "left")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.left = 0
        self.acked_at: list[int] = []

    def acked(self, index: int) -> None:
        self.acked_at.append(index)
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


async def publish_all(
    client: aiomqtt.Client,
    messages: Sequence[tuple[str, bytes, bool]],
    *,
    ack_within: float | None = None,
) -> list[int]:
    """Publish (topic, payload, retain) messages at QoS 1; wait for every PUBACK.

    Returns the indexes of the messages the broker acknowledged, all of them on success;
    raises PublishFailed (an MqttError whose `acked` lists what was acknowledged) when one cannot be
    sent or the PUBACKs do not all come within `ack_within` seconds (default: the client's timeout).
    """
    paho: mqtt.Client = client._client
    pending: dict[int, Any] = client._pending_publishes
    group = _Group(asyncio.get_running_loop().create_future())
    mids: list[int] = []
    try:
        for index, (topic, payload, retain) in enumerate(messages):
            info = paho.publish(topic, payload, QOS, retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishFailed(
                    group.acked_at, f"could not publish: {mqtt.error_string(info.rc)}"
                )
            if info.is_published():  # cannot happen at QoS 1 before the loop reads; kept safe
                group.acked_at.append(index)
                continue
            pending[info.mid] = _Ack(group, index)
            mids.append(info.mid)
            group.left += 1
        if group.left:
            wait = client.timeout if ack_within is None else ack_within
            try:
                async with asyncio.timeout(wait):
                    await group.done
            except TimeoutError:
                raise PublishFailed(group.acked_at, "PUBACKs did not come in time") from None
    finally:
        for mid in mids:
            pending.pop(mid, None)
    return sorted(group.acked_at)


def publish_now(client: aiomqtt.Client, messages: Sequence[tuple[str, bytes]]) -> None:
    """Queue QoS 0 (topic, payload) messages after everything queued before; write them now.

    The write skips paho's `on_publish`: for each QoS 0 message it builds a ReasonCode and a
    Properties, then aiomqtt looks for a waiter only its own `publish` makes. So every QoS 0
    message of `client` must go through here (QoS 1 is untouched: its callback comes with the
    PUBACK). What the socket does not take at once stays queued for the loop's writer callback.
    Raises PublishFailed when paho refuses a message (no connection) or the write fails: what
    is lost is lost, as QoS 0 allows; whoever reads the client's messages sees the link drop.
    """
    paho: mqtt.Client = client._client
    for topic, payload in messages:
        info = paho.publish(topic, payload, 0, False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishFailed([], f"could not publish: {mqtt.error_string(info.rc)}")
    on_publish = paho.on_publish
    paho.on_publish = None
    try:
        paho.loop_write()  # a lost connection reaches aiomqtt (on_disconnect) as usual
    except Exception as exc:  # never into the caller's hot path
        raise PublishFailed([], f"could not write: {exc}") from exc
    finally:
        paho.on_publish = on_publish
    sock = paho.socket()
    if sock is not None and not paho.want_write():
        # paho asked aiomqtt for a writer when the first message was queued; aiomqtt adds it on
        # the loop's next pass (call_soon_threadsafe), after paho took it back (the write above,
        # at once): take it back once more after that, or the loop spins on a writable socket.
        loop = asyncio.get_running_loop()
        loop.call_soon(_drop_unwanted_writer, loop, paho, sock.fileno())


def _drop_unwanted_writer(loop: asyncio.AbstractEventLoop, paho: mqtt.Client, fd: int) -> None:
    if not paho._registered_write:  # paho wants no writer now (it asks again when it does)
        loop.remove_writer(fd)


class PublishFailed(aiomqtt.MqttError):
    """Not every message was acknowledged; `acked` holds the indexes that were."""

    def __init__(self, acked: list[int], message: str) -> None:
        super().__init__(message)
        self.acked = sorted(acked)
