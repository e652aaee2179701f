"""EdgeNode: the line host as a Sparkplug B 3.0 edge node, each jig a device.

Births (NBIRTH, then a DBIRTH per online jig) open every session; a jig's change is a DDATA
at once, its going offline a DDEATH; the NDEATH is the MQTT Will, with the bdSeq of the NBIRTH.
Attempt results come from the results outbox through the edge node's own delivery cursor,
as NDATA at QoS 1, marked delivered after the PUBACK (at least once; historical when they
were recorded before the current birth).

Every message joins one queue in the step that gives it its `seq`, and the MQTT client keeps
one outgoing queue too, so the wire order is the `seq` order. Births, data and deaths (QoS 0)
await nothing: what is queued within `WRITE_GATHER` is written to the socket at once, in one
pass (each change is still its own message, with its own timestamp). Results (QoS 1) follow
what is queued, a group at a time, and one future waits for all their PUBACKs
(linehost.mqtt.publish).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import aiomqtt
import structlog

from linehost import __version__
from linehost.config import MqttSection, SparkplugSection
from linehost.errors import ConfigError, LinehostError, StoreError
from linehost.mqtt.link import BrokerLink, default_client_id, describe, nap, reconnect_backoff
from linehost.mqtt.publish import PublishFailed, publish_all, publish_now
from linehost.observers import Observer
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus, utcnow
from linehost.sparkplug import payloads as spb
from linehost.store.sparkplug import QueuedResult
from linehost.tasks import cancel_and_wait

RESULTS_BATCH: Final = 256  # outbox rows per query
# Results awaiting their PUBACKs at once: paho walks every message in flight on each PUBACK.
RESULTS_GROUP: Final = 64
RESULTS_POLL: Final = 2.0  # seconds; a fallback: an attempt that ends wakes the pump at once
# Seconds to gather more ended attempts before the next read, unless the last read filled a
# batch: one query and one update per batch instead of per attempt or two (the relay's rows
# share the database with the jigs' writes).
RESULTS_LINGER: Final = 0.5
# Seconds QoS 0 messages wait for company before they go to the client: each one handed over
# alone costs the event loop a writer registration and a wake-up of its own.
WRITE_GATHER: Final = 0.005
STORE_RETRY: Final = 1.0  # seconds between tries while the database is away
FACTS_EVERY: Final = 2.0  # seconds between two reads of work-order progress and outbox depth
CLOSE_MARGIN: Final = 5.0  # seconds beyond drain_timeout before close() cancels outright

_log = structlog.get_logger("linehost.sparkplug")

JigKey = tuple[str, str]


class SparkplugOutbox(Protocol):
    """The part of the store the edge node uses."""

    async def next_bd_seq(self, group_id: str, edge_node_id: str, at: datetime) -> int: ...

    async def pending_results(self, limit: int) -> list[QueuedResult]: ...

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None: ...

    async def outbox_depth(self) -> int: ...


WorkOrderFacts = Callable[[], Awaitable[dict[str, Any] | None]]


class _HostOffline(Exception):
    """The primary host application went offline: end the session (NDEATH), wait for it."""


@dataclass
class _Jig:
    device_id: str
    metrics: tuple[spb.MetricDef, ...]
    tally: spb.JigTally = field(default_factory=spb.JigTally)
    status: JigStatus | None = None
    alive: bool = False
    sent: tuple[spb.Value, ...] = ()  # the metric values last sent, in DBIRTH order
    done: int = 0


class EdgeNode(Observer):
    """Publishes one line as a Sparkplug B edge node; an observer of its jigs."""

    def __init__(
        self,
        settings: SparkplugSection,
        broker: MqttSection,
        store: SparkplugOutbox,
        *,
        line: str,
        jigs: Sequence[JigKey],
        version: str = __version__,
        work_order: WorkOrderFacts | None = None,
    ) -> None:
        self.group_id = settings.group_id
        self.edge_node_id = settings.edge_node_id or line
        self.results_published = 0
        self._primary = settings.primary_host_id
        self._settings = broker
        self._link = BrokerLink(broker, default_client_id("sparkplug", line))
        self._store = store
        self._work_order = work_order
        self._node_metrics = spb.node_metrics()
        self._by_name = {m.name: m for m in self._node_metrics}
        self._aliases = {m.alias: m.name for m in self._node_metrics}
        self._node_values: dict[str, spb.Value] = {
            spb.REBIRTH: False,
            "Properties/Host Version": version,
            "Properties/Line": line,
            "Line/Jigs": len(jigs),
            **spb.work_order_values(None),
            "Outbox/Depth": None,
        }
        self._node_sent: dict[str, object] = {}
        self._jigs: dict[JigKey, _Jig] = {}
        for key in jigs:
            self._add_jig(key)
        self._client: aiomqtt.Client | None = None  # set while born
        self._born = asyncio.Event()
        self._born_at = utcnow()
        self._bd_seq = 0
        self._seq = 0
        self._queued: list[tuple[str, bytes]] = []  # QoS 0 messages not yet given to the client
        self._gather: asyncio.TimerHandle | None = None
        self._results_wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._drain_deadline = 0.0
        self._backoff = reconnect_backoff()
        self._task: asyncio.Task[None] | None = None

    # --- AttemptObserver -------------------------------------------------------------------

    def jig_changed(self, status: JigStatus) -> None:
        """Publish the jig's change now (DBIRTH, DDATA or DDEATH) when born; note it anyway."""
        jig = self._jigs.get((status.station, status.jig))
        if jig is None:  # not a jig of this line's config
            return
        jig.tally.note(status)
        jig.status = status
        done = status.ok + status.failed
        if done != jig.done:
            jig.done = done
            self._results_wake.set()
        if self._client is not None:
            self._publish_jig(jig, status, spb.ms(utcnow()))

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background until `close()`."""
        if self._task is None:
            name = f"sparkplug-{self.edge_node_id}"
            self._task = asyncio.create_task(self._run(), name=name)

    @property
    def born(self) -> bool:
        """True while births are out on a live connection."""
        return self._born.is_set()

    async def close(self) -> None:
        """Staged: drain the outbox for up to `drain_timeout`, DDEATH every jig, NDEATH,
        disconnect."""
        task = self._task
        if task is None:
            return
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + self._settings.drain_timeout
        self._closing.set()
        done, _ = await asyncio.wait({task}, timeout=self._settings.drain_timeout + CLOSE_MARGIN)
        if not done:
            _log.warning("sparkplug_close_timed_out", broker=self._link.where)
        await cancel_and_wait(task)

    # --- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
                return
            except _HostOffline:
                _log.info("sparkplug_primary_host_offline", host_id=self._primary)
                continue  # reconnect at once with a new bdSeq, then wait for the host
            except aiomqtt.MqttError as exc:
                _log.warning("sparkplug_disconnected", broker=self._link.where,
                             detail=describe(exc))  # fmt: skip
            finally:
                self._unborn()
            if self._closing.is_set():
                return
            await nap(self._closing, self._backoff.next_delay())

    async def _session(self) -> None:
        self._bd_seq = await self._next_bd_seq()
        death_topic = self._topic("NDEATH")
        death = spb.node_death(self._bd_seq, spb.ms(utcnow()))
        will = aiomqtt.Will(death_topic, death, qos=1, retain=False)
        async with self._link.client(will=will) as client:
            self._backoff.reset()
            _log.info("sparkplug_connected", broker=self._link.where, bd_seq=self._bd_seq,
                      edge_node=f"{self.group_id}/{self.edge_node_id}")  # fmt: skip
            await client.subscribe(self._topic("NCMD"), qos=1)
            if self._primary is not None:
                await client.subscribe(spb.state_topic(self._primary), qos=1)
            else:
                self._birth(client)
            try:
                async with asyncio.TaskGroup() as tg:
                    listener = tg.create_task(self._listen(client), name="sparkplug-listen")
                    results = tg.create_task(self._pump_results(), name="sparkplug-results")
                    facts = tg.create_task(self._pump_facts(results), name="sparkplug-facts")
                    await results
                    await facts
                    await self._die(client)
                    await cancel_and_wait(listener)  # it may be answering a Rebirth
            except BaseExceptionGroup as group:
                raise _unwrap(group) from None

    async def _next_bd_seq(self) -> int:
        try:
            return await self._store.next_bd_seq(self.group_id, self.edge_node_id, utcnow())
        except StoreError as exc:
            # A death certificate must still match its birth: count on in memory.
            _log.warning("sparkplug_bd_seq_not_stored", detail=str(exc))
            return (self._bd_seq + 1) % spb.SEQ_MODULO

    async def _listen(self, client: aiomqtt.Client) -> None:
        """NCMD rebirth requests and the primary host's STATE; raise when the link drops."""
        ncmd = self._topic("NCMD")
        state = spb.state_topic(self._primary) if self._primary else None
        async for message in client.messages:
            topic = message.topic.value
            raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            if topic == ncmd and spb.wants_rebirth(bytes(raw), self._aliases):
                _log.info("sparkplug_rebirth_requested")
                if self._client is not None:
                    self._birth(client)
            elif topic == state:
                online = spb.host_online(bytes(raw))
                if online and self._client is None:
                    _log.info("sparkplug_primary_host_online", host_id=self._primary)
                    self._birth(client)
                elif online is False and self._client is not None:
                    await self._die(client)
                    raise _HostOffline

    # --- births, deaths and jig data --------------------------------------------------------

    def _birth(self, client: aiomqtt.Client) -> None:
        """NBIRTH (seq 0), then DBIRTH for every online jig."""
        self._client = client
        self._seq = 0
        now = utcnow()
        ts = spb.ms(now)
        self._born_at = now
        self._update_line_values()
        values = dict(self._node_values)
        self._send(
            self._topic("NBIRTH"),
            lambda seq: spb.birth(seq, ts, self._node_metrics, values, bd_seq=self._bd_seq),
        )
        for jig in self._jigs.values():
            jig.alive = False
            if jig.status is not None:
                self._publish_jig(jig, jig.status, ts)
        self._born.set()
        self._results_wake.set()
        _log.info("sparkplug_born", bd_seq=self._bd_seq, jigs=len(self._jigs))

    def _publish_jig(self, jig: _Jig, status: JigStatus, ts: int) -> None:
        topic_of = self._device_topic
        if status.state is JigState.OFFLINE:
            if jig.alive:
                jig.alive = False
                self._send(topic_of("DDEATH", jig), lambda seq: spb.device_death(seq, ts))
            return
        row = spb.jig_row(status, jig.tally)
        if not jig.alive:
            jig.alive = True
            jig.sent = row
            metrics, values = jig.metrics, dict(zip(spb.DEVICE_NAMES, row, strict=True))
            self._send(topic_of("DBIRTH", jig), lambda seq: spb.birth(seq, ts, metrics, values))
            return
        changed = [(m, v) for m, v, old in zip(jig.metrics, row, jig.sent, strict=True) if v != old]
        if changed:
            jig.sent = row
            self._send(topic_of("DDATA", jig), lambda seq: spb.data(seq, ts, changed))

    async def _die(self, client: aiomqtt.Client) -> None:
        """DDEATH for every live jig, then the NDEATH itself (a clean stop sends no Will)."""
        if self._client is None:
            return
        ts = spb.ms(utcnow())
        for jig in self._jigs.values():
            if jig.alive:
                jig.alive = False
                self._send(self._device_topic("DDEATH", jig), lambda seq: spb.device_death(seq, ts))
        self._flush()
        self._unborn()
        # Queued after the DDEATHs (and all before them): it goes out last.
        await client.publish(
            self._topic("NDEATH"), spb.node_death(self._bd_seq, ts), qos=1, retain=False
        )
        _log.info("sparkplug_dead", bd_seq=self._bd_seq)

    def _unborn(self) -> None:
        self._client = None
        self._born.clear()
        self._queued.clear()  # their session is over: a new one begins with births
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % spb.SEQ_MODULO
        return seq

    def _send(self, topic: str, build: Callable[[int], bytes]) -> None:
        """Give a QoS 0 message the next seq and queue it (wire order = seq order)."""
        assert self._client is not None
        self._queued.append((topic, build(self._next_seq())))
        if self._gather is None:
            self._gather = asyncio.get_running_loop().call_later(WRITE_GATHER, self._flush)

    def _flush(self) -> None:
        """Hand the queued QoS 0 messages to the client, in seq order."""
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None
        queued, self._queued = self._queued, []
        client = self._client
        if client is None:
            return
        try:
            publish_now(client, queued)
        except PublishFailed as exc:
            # The listener sees the broken connection and ends the session.
            _log.debug("sparkplug_publish_failed", detail=describe(exc))

    # --- results ------------------------------------------------------------------------------

    async def _pump_results(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._results_wake.clear()
            closing = self._closing.is_set()
            if closing and (loop.time() > self._drain_deadline or self._client is None):
                return
            if self._client is None:
                await nap(self._born, RESULTS_POLL, also=self._closing)
                continue
            try:
                rows = await self._store.pending_results(RESULTS_BATCH)
            except StoreError as exc:
                _log.warning("sparkplug_results_unreadable", detail=str(exc))
                if closing:
                    return
                await nap(self._closing, STORE_RETRY)
                continue
            if rows and self._client is not None:
                await self._publish_results(rows)
                if len(rows) == RESULTS_BATCH or closing:
                    continue  # more are waiting: no pause
            elif closing:
                return
            else:
                await nap(self._results_wake, RESULTS_POLL, also=self._closing)
            await nap(self._closing, RESULTS_LINGER)

    async def _publish_results(self, rows: list[QueuedResult]) -> None:
        """One NDATA per row at QoS 1, a group at a time; mark what was acknowledged."""
        topic = self._topic("NDATA")
        ts = spb.ms(utcnow())
        born_at = self._born_at
        acked: list[int] = []
        failure: PublishFailed | None = None
        for start in range(0, len(rows), RESULTS_GROUP):
            client = self._client
            if client is None or failure is not None:
                break
            group = rows[start : start + RESULTS_GROUP]
            self._flush()  # what was queued before goes first
            # Seqs given and messages queued in one step (no await between): wire order = seq.
            messages = [
                (topic, self._result_payload(row, ts, born_at, self._next_seq()), False)
                for row in group
            ]
            try:
                done = await publish_all(client, messages)
            except PublishFailed as exc:
                failure, done = exc, exc.acked
            acked += [group[i].id for i in done]
        if acked:
            try:
                await self._store.mark_results_sent(acked, utcnow())
            except StoreError as exc:
                # They go out again later: consumers de-duplicate on Result/Outbox Id.
                _log.warning("sparkplug_results_not_marked", count=len(acked), detail=str(exc))
            self.results_published += len(acked)
        if failure is not None:
            raise failure

    def _result_payload(self, row: QueuedResult, ts: int, born_at: datetime, seq: int) -> bytes:
        # Recorded before this birth: store-and-forward, historical.
        return spb.result_data(seq, ts, row.id, row.payload, historical=row.created_at < born_at)

    # --- node facts ---------------------------------------------------------------------------

    async def _pump_facts(self, drain: asyncio.Task[None]) -> None:
        while True:
            closing = self._closing.is_set()
            if closing:
                await asyncio.wait({drain})
            try:
                self._node_values["Outbox/Depth"] = await self._store.outbox_depth()
                if self._work_order is not None:
                    found = await self._work_order()
                    self._node_values.update(spb.work_order_values(found))
            except LinehostError as exc:
                _log.debug("sparkplug_facts_unreadable", detail=str(exc))
            self._update_line_values()
            if self._client is not None:
                self._publish_node_changes()
            if closing:
                return
            await nap(self._closing, FACTS_EVERY)

    def _update_line_values(self) -> None:
        statuses = [j.status for j in self._jigs.values() if j.status is not None]
        self._node_values["Line/Jigs Online"] = sum(
            1 for s in statuses if s.state is not JigState.OFFLINE
        )
        self._node_values["Line/Devices OK"] = sum(s.ok for s in statuses)
        self._node_values["Line/Devices Failed"] = sum(s.failed for s in statuses)

    def _publish_node_changes(self) -> None:
        sent = self._node_sent
        changed = [
            (self._by_name[name], value)
            for name, value in self._node_values.items()
            if sent.get(name, _UNSENT) != value
        ]
        if changed:
            ts = spb.ms(utcnow())
            self._send(self._topic("NDATA"), lambda seq: spb.data(seq, ts, changed))
            sent.update(self._node_values)

    # --- names ----------------------------------------------------------------------------------

    def _add_jig(self, key: JigKey) -> _Jig:
        device = spb.device_id(*key)
        if any(j.device_id == device for j in self._jigs.values()):
            raise ConfigError(f"sparkplug: two jigs share the device id {device!r}")
        jig = _Jig(device, spb.device_metrics(len(self._jigs)))
        self._jigs[key] = jig
        return jig

    def _topic(self, kind: str) -> str:
        return spb.node_topic(self.group_id, kind, self.edge_node_id)

    def _device_topic(self, kind: str, jig: _Jig) -> str:
        return spb.node_topic(self.group_id, kind, self.edge_node_id, jig.device_id)


_UNSENT: Final = object()


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The MqttError or _HostOffline behind a failed session; anything else as it is."""
    leaves = list(_leaves(group))
    for leaf in leaves:
        if isinstance(leaf, _HostOffline):
            return leaf
    if all(isinstance(leaf, aiomqtt.MqttError) for leaf in leaves):
        return leaves[0]
    return group


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
