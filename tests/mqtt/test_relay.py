"""MqttRelay against the real Mosquitto: status, state, results at least once, outages."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linehost.config import MqttSection
from linehost.mqtt import relay as relay_module
from linehost.mqtt.relay import MqttRelay
from linehost.mqtt.topics import subscriptions
from linehost.protocol.outcomes import JigState
from linehost.records import CrlState, JigStatus
from tests.mqtt.broker import PrivateBroker
from tests.mqtt.subscriber import Subscriber
from tests.waiting import eventually

pytestmark = pytest.mark.mqtt


class MemoryOutbox:
    """The Store's outbox calls, in memory, recording what was marked when."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.sent: dict[int, datetime] = {}
        self.marks: list[list[int]] = []
        self.reads = 0
        self._next = 1

    def add(self, attempt_id: str) -> None:
        self.rows[self._next] = json.dumps({"attempt_id": attempt_id, "seq": self._next})
        self._next += 1

    async def pending_results(self, limit: int) -> list[tuple[int, str]]:
        self.reads += 1
        pending = sorted(i for i in self.rows if i not in self.sent)
        return [(i, self.rows[i]) for i in pending[:limit]]

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None:
        self.marks.append(list(ids))
        for i in ids:
            self.sent.setdefault(i, at)


def settings(url: str, prefix: str, **extra: object) -> MqttSection:
    # A client id of this test alone: with the default one (`linehost-host-{hostname}-l1`)
    # relays of tests running at once (pytest-xdist) take each other's session over.
    return MqttSection.model_validate(
        {"url": url, "topic_prefix": prefix, "drain_timeout": 5, "client_id": f"{prefix}-host",
         **extra}
    )  # fmt: skip


def results_of(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.snapshot() if m.topic.endswith("/results")]


async def test_status_state_and_results_reach_a_subscriber(broker_url: str, prefix: str) -> None:
    outbox = MemoryOutbox()
    for n in range(600):
        outbox.add(f"a{n}")
    sub = Subscriber(broker_url, subscriptions(prefix), f"t-{secrets.token_hex(4)}").start()
    relay = MqttRelay(settings(broker_url, prefix), outbox, line="l1", jigs=1, version="9.9")
    try:
        relay.start()
        status = JigStatus("l1", "st1", "j1", state=JigState.WAITING_FOR_DEVICE)
        relay.jig_changed(status)
        status.state, status.uid = JigState.PROVISIONING, "AB12"
        relay.jig_changed(status)  # coalesced: the latest state is what counts
        await asyncio.to_thread(
            sub.wait_for, lambda _: len(results_of(sub)) == 600, 15, "600 results"
        )
        assert results_of(sub) == list(range(1, 601)), "results out of order"
        # marked once every PUBACK of the batch is in
        await eventually(lambda: len(outbox.sent) == 600, within=5, what="600 rows marked")
        assert set(outbox.sent) == set(outbox.rows)
        assert max(len(m) for m in outbox.marks) > 1, "rows are marked in batches"
        await asyncio.to_thread(
            sub.wait_for,
            lambda ms: any(m.topic.endswith("/j1/state") and m.json()["uid"] == "AB12" for m in ms),
            5,
            "provisioning state",
        )
    finally:
        await relay.close()
        sub.stop()
    msgs = sub.snapshot()
    host = [m.json() for m in msgs if m.topic == f"{prefix}/l1/host/status"]
    assert host[0]["online"] is True
    assert host[0]["version"] == "9.9"
    assert host[-1] == {"online": False}, "a clean close publishes offline itself"
    # retained: a late subscriber still sees the last jig state and the offline status
    late = Subscriber(
        broker_url, subscriptions(prefix), f"t-{secrets.token_hex(4)}", persistent=False
    )
    late.start()
    try:
        late.wait_for(lambda ms: len(ms) >= 2, 5, "retained messages")
        retained = {m.topic: m.json() for m in late.snapshot() if m.retain}
        assert retained[f"{prefix}/l1/host/status"] == {"online": False}
        assert retained[f"{prefix}/l1/jigs/st1/j1/state"]["state"] == "provisioning"
    finally:
        late.stop()


async def test_one_outbox_read_per_ended_attempt_unless_a_batch_was_full(
    broker_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each read is a database round trip after every ended attempt: a batch that was not full
    # held everything committed before it, and a later commit wakes the relay anyway.
    monkeypatch.setattr(relay_module, "RESULTS_BATCH", 4)
    outbox = MemoryOutbox()
    sub = Subscriber(broker_url, subscriptions(prefix), f"t-{secrets.token_hex(4)}").start()
    relay = MqttRelay(settings(broker_url, prefix), outbox, line="l1", jigs=1)
    relay.start()
    try:
        await asyncio.wait_for(relay.wait_connected(), 10)
        await eventually(lambda: outbox.reads >= 1, within=5, what="the first read")
        before = outbox.reads
        for n in range(3):
            outbox.add(f"a{n}")
        relay.wake()
        await asyncio.to_thread(sub.wait_for, lambda _: len(results_of(sub)) == 3, 10, "3")
        await eventually(lambda: len(outbox.sent) == 3, within=5, what="3 rows marked")
        await asyncio.sleep(0.3)
        assert outbox.reads - before == 1, "a partial batch is not read again"

        before = outbox.reads
        for n in range(9):  # 4 + 4 + 1: two full batches, each read again at once
            outbox.add(f"b{n}")
        relay.wake()
        await asyncio.to_thread(sub.wait_for, lambda _: len(results_of(sub)) == 12, 10, "12")
        await eventually(lambda: len(outbox.sent) == 12, within=5, what="12 rows marked")
        await asyncio.sleep(0.3)
        assert outbox.reads - before == 3
    finally:
        await relay.close()
        sub.stop()


async def test_results_wait_for_the_broker_and_are_marked_only_after_puback(
    own_broker: PrivateBroker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "RESULTS_POLL", 0.2)
    outbox = MemoryOutbox()
    sub = Subscriber(own_broker.url, subscriptions(prefix), f"t-{secrets.token_hex(4)}").start()
    relay = MqttRelay(settings(own_broker.url, prefix), outbox, line="l1", jigs=1)
    relay.start()
    try:
        await asyncio.wait_for(relay.wait_connected(), 10)
        for n in range(5):
            outbox.add(f"before{n}")
        relay.wake()
        await asyncio.to_thread(sub.wait_for, lambda _: len(results_of(sub)) == 5, 10, "5")

        own_broker.stop()
        for n in range(50):
            outbox.add(f"during{n}")
        relay.wake()
        await asyncio.sleep(1.0)
        assert not relay.connected
        assert len(outbox.sent) == 5, "nothing is marked sent while the broker is away"

        own_broker.start()
        await asyncio.to_thread(
            sub.wait_for, lambda _: len(set(results_of(sub))) == 55, 30, "the backlog"
        )
        # marked once every PUBACK of the batch is in
        await eventually(lambda: len(outbox.sent) == 55, within=5, what="55 rows marked")
        assert len(outbox.sent) == 55
        received = results_of(sub)
        assert sorted(set(received)) == list(range(1, 56))
        first_seen = list(dict.fromkeys(received))
        assert first_seen == sorted(first_seen), "the backlog arrives in order"
    finally:
        await relay.close()
        sub.stop()


async def test_close_without_a_broker_returns_within_the_drain_timeout(tmp_path: Path) -> None:
    from tests.mqtt.broker import free_port

    outbox = MemoryOutbox()
    outbox.add("x")
    relay = MqttRelay(
        settings(f"mqtt://127.0.0.1:{free_port()}", "p", drain_timeout=1), outbox, line="l", jigs=0
    )
    relay.start()
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await relay.close()
    assert loop.time() - started < 3
    assert outbox.sent == {}


async def test_jig_state_is_published_at_once_then_coalesced(broker_url: str, prefix: str) -> None:
    """A burst of changes: the first is published at once, the rest as one, the latest."""
    sub = Subscriber(broker_url, subscriptions(prefix), f"t-{secrets.token_hex(4)}").start()
    relay = MqttRelay(
        settings(broker_url, prefix, state_interval=0.5), MemoryOutbox(), line="l1", jigs=1
    )
    topic = f"{prefix}/l1/jigs/st1/j1/state"

    def states() -> list[tuple[str, str | None]]:
        return [(m.json()["state"], m.json()["uid"]) for m in sub.snapshot() if m.topic == topic]

    try:
        relay.start()
        await relay.wait_connected()
        status = JigStatus("l1", "st1", "j1", state=JigState.WAITING_FOR_DEVICE)
        relay.jig_changed(status)
        await asyncio.to_thread(sub.wait_for, lambda _: len(states()) == 1, 5, "first state")
        burst = [JigState.PROVISIONING, JigState.WAITING_FOR_SWAP, JigState.WAITING_FOR_DEVICE]
        for n, state in enumerate(burst * 4):  # twelve changes within the interval
            status.state, status.uid = state, f"{n:04X}"
            relay.jig_changed(status)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(sub.wait_for, lambda _: len(states()) >= 2, 5, "coalesced state")
        await asyncio.sleep(0.8)  # nothing more is coming: the burst was one publish
    finally:
        await relay.close()
        sub.stop()
    assert states() == [("waiting_for_device", None), ("waiting_for_device", "000B")]


class ScriptedFacts:
    """LineFacts whose figures the test changes."""

    def __init__(self) -> None:
        self.depth = 0
        self.done = 0
        self.reads = 0
        self.crl_state: CrlState | None = None

    async def outbox_depth(self) -> int:
        self.reads += 1
        return self.depth

    async def work_order(self) -> dict[str, object] | None:
        return {"work_order": "WO-1", "quantity": 10, "done": self.done,
                "remaining": 10 - self.done}  # fmt: skip

    def crl(self) -> CrlState | None:
        return self.crl_state


async def test_work_order_and_outbox_depth_are_published_retained_when_they_change(
    broker_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "FACTS_EVERY", 0.05)
    facts = ScriptedFacts()
    topics = [f"{prefix}/l1/workorder", f"{prefix}/l1/host/outbox"]
    sub = Subscriber(broker_url, topics, f"t-{secrets.token_hex(4)}").start()
    relay = MqttRelay(settings(broker_url, prefix), MemoryOutbox(), line="l1", jigs=1,
                      facts=facts)  # fmt: skip
    try:
        relay.start()
        await relay.wait_connected()
        await asyncio.sleep(0.4)
        assert facts.reads >= 3  # several reads of the same figures: published once
        facts.depth, facts.done = 4, 3
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 4, 5, "the changed figures")
        facts.done = 4  # changed just before the stop: the final read publishes it
    finally:
        await relay.close()
    await asyncio.sleep(0.3)
    sub.stop()
    got = [(m.topic.rsplit("/", 1)[1], m.json()) for m in sub.snapshot()]
    assert [(t, p.get("depth", p.get("done"))) for t, p in got] == [
        ("outbox", 0), ("workorder", 0), ("outbox", 4), ("workorder", 3), ("workorder", 4)
    ]  # fmt: skip
    assert all(p["line"] == "l1" and p["at"].endswith("Z") for _, p in got)
    late = Subscriber(broker_url, topics, f"t-{secrets.token_hex(4)}").start()
    try:
        await asyncio.to_thread(late.wait_for, lambda ms: len(ms) == 2, 5, "retained figures")
    finally:
        late.stop()
    assert all(m.retain for m in late.snapshot())


async def test_the_crl_is_published_retained_when_signed_and_a_stale_one_cleared(
    broker_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "FACTS_EVERY", 0.05)
    topic = f"{prefix}/l1/host/crl"
    await asyncio.to_thread(publish_retained, broker_url, topic, b'{"crl_number":9}')
    facts = ScriptedFacts()  # a host without crl_dir: an earlier run's retained CRL is cleared
    relay = MqttRelay(settings(broker_url, prefix), MemoryOutbox(), line="l1", jigs=1,
                      facts=facts)  # fmt: skip
    sub = Subscriber(broker_url, [topic], f"t-{secrets.token_hex(4)}").start()
    try:
        relay.start()
        await relay.wait_connected()
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 2, 5, "the clearing")
        await asyncio.sleep(0.3)  # read several times: cleared once
        signed = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
        facts.crl_state = CrlState("AB12", 3, signed, signed + timedelta(days=30), 1)
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 3, 5, "the CRL")
        await asyncio.sleep(0.3)  # the same CRL read again: not published again
        facts.crl_state = CrlState("AB12", 4, signed, signed + timedelta(days=30), 2)
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 4, 5, "the next CRL")
    finally:
        await relay.close()
        sub.stop()
    got = sub.snapshot()
    assert [m.payload for m in got[:2]] == [b'{"crl_number":9}', b""]
    first, second = (m.json() for m in got[2:])
    assert len(got) == 4
    assert {k: v for k, v in first.items() if k not in ("seconds_left", "at")} == {
        "pai_skid": "AB12", "crl_number": 3, "this_update": "2026-12-07T01:00:00.000000Z",
        "next_update": "2027-01-06T01:00:00.000000Z", "revoked": 1, "line": "l1",
    }  # fmt: skip
    at = datetime.fromisoformat(first["at"])
    assert first["seconds_left"] == pytest.approx(
        (signed + timedelta(days=30) - at).total_seconds()
    )
    assert (second["crl_number"], second["revoked"]) == (4, 2)
    late = Subscriber(broker_url, [topic], f"t-{secrets.token_hex(4)}").start()
    try:
        await asyncio.to_thread(late.wait_for, lambda ms: len(ms) == 1, 5, "the retained CRL")
    finally:
        late.stop()
    assert late.snapshot()[0].json()["crl_number"] == 4


def publish_retained(url: str, topic: str, payload: bytes) -> None:
    """What an earlier run of the host left on the broker."""
    import paho.mqtt.publish as publish

    publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1",
                   port=int(url.rsplit(":", 1)[1]))  # fmt: skip
