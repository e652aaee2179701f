"""MqttRelay: host status, every jig's state, the results outbox, work-order progress, outbox
depth and the host's CRL, published to the broker.

Provisioning never waits on MQTT: runners only touch a dict and set an event (`jig_changed`);
results reach the broker from the outbox table, so a broker outage or a host restart only delays
them. A results row is marked sent after the broker's PUBACK, never before (at least once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiomqtt
import structlog

from linehost import __version__
from linehost.config import MqttSection
from linehost.errors import LinehostError, StoreError
from linehost.mqtt.link import (
    BrokerLink,
    default_client_id,
    describe,
    either,
    nap,
    reconnect_backoff,
)
from linehost.mqtt.payloads import HOST_OFFLINE, encode, host_crl, host_online
from linehost.mqtt.publish import PublishFailed, publish_all
from linehost.mqtt.topics import LineTopics
from linehost.observers import Observer
from linehost.records import JigStatus, iso_utc, utcnow
from linehost.tasks import cancel_and_wait

if TYPE_CHECKING:
    from linehost.mqtt.progress import LineFacts
    from linehost.records import CrlState

RESULTS_BATCH: Final = 256  # outbox rows per query, published pipelined, marked in one statement
RESULTS_POLL: Final = 2.0  # seconds; a fallback: an attempt that ends wakes the relay at once
# Seconds to gather more ended attempts after a read that did not fill a batch: one query, one
# publish burst and one sent-mark per batch instead of per attempt (the reads and marks share
# the database and the event loop with the jigs).
RESULTS_LINGER: Final = 0.1
STORE_RETRY: Final = 1.0  # seconds between tries while the database is away
CLOSE_MARGIN: Final = 5.0  # seconds beyond drain_timeout before close() cancels outright
FACTS_EVERY: Final = 2.0  # seconds between two reads of work-order progress and outbox depth

_log = structlog.get_logger("linehost.mqtt")

JigKey = tuple[str, str]


class ResultsOutbox(Protocol):
    """The part of the Store the relay uses."""

    async def pending_results(self, limit: int) -> list[tuple[int, str]]: ...

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None: ...


class MqttRelay(Observer):
    """Keeps the broker up to date for one line; an observer of its jigs."""

    def __init__(
        self,
        settings: MqttSection,
        outbox: ResultsOutbox,
        *,
        line: str,
        jigs: int,
        version: str = __version__,
        facts: LineFacts | None = None,
    ) -> None:
        self.topics = LineTopics(settings.topic_prefix, line)
        self.results_published = 0
        self._settings = settings
        self._link = BrokerLink(settings, default_client_id("host", line))
        self._outbox = outbox
        self._facts = facts
        self._facts_sent: dict[str, Any] = {}
        self._crl_sent: CrlState | bool | None = False  # False: nothing yet on this connection
        self._online = host_online(version, utcnow(), line, jigs)
        self._states: dict[JigKey, JigStatus] = {}
        self._done: dict[JigKey, int] = {}
        self._dirty: set[JigKey] = set()
        self._state_wake = asyncio.Event()
        self._results_wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._drain_deadline = 0.0
        self._connected = asyncio.Event()
        self._backoff = reconnect_backoff()
        self._task: asyncio.Task[None] | None = None

    # --- AttemptObserver -------------------------------------------------------------------

    def jig_changed(self, status: JigStatus) -> None:
        """Note the jig's latest state (coalesced); wake the results pump when an attempt ended."""
        key = (status.station, status.jig)
        self._states[key] = status  # the runner's own object: read when published, so latest
        self._dirty.add(key)
        self._state_wake.set()
        done = status.ok + status.failed
        if done != self._done.get(key, 0):
            self._done[key] = done
            self._results_wake.set()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-relay-{self.topics.line}")

    @property
    def connected(self) -> bool:
        """True while a broker connection is up."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once connected (tests, demo)."""
        await self._connected.wait()

    def wake(self) -> None:
        """Look at the outbox now (an attempt ended, or a test wrote rows)."""
        self._results_wake.set()

    async def close(self) -> None:
        """Staged: publish the last states, drain the outbox for up to `drain_timeout`, publish
        `{"online": false}`, disconnect."""
        task = self._task
        if task is None:
            return
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + self._settings.drain_timeout
        self._closing.set()
        done, _ = await asyncio.wait({task}, timeout=self._settings.drain_timeout + CLOSE_MARGIN)
        if not done:
            _log.warning("mqtt_close_timed_out", broker=self._link.where)
        await cancel_and_wait(task)

    # --- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
                return
            except aiomqtt.MqttError as exc:
                was_connected = self._connected.is_set()
                self._connected.clear()
                if not was_connected and self._link.downgrade(exc):
                    _log.info("mqtt_protocol_downgraded", broker=self._link.where, to="3.1.1")
                    continue
                event = "mqtt_disconnected" if was_connected else "mqtt_connect_failed"
                _log.warning(event, broker=self._link.where, detail=describe(exc))
            if self._closing.is_set():
                _log.warning("mqtt_closed_without_broker", broker=self._link.where)
                return
            await nap(self._closing, self._backoff.next_delay())

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.host_status, HOST_OFFLINE, qos=1, retain=True)
        async with self._link.client(will=will) as client:
            await client.publish(self.topics.host_status, self._online, qos=1, retain=True)
            self._connected.set()
            self._link.connected()
            self._backoff.reset()
            _log.info(
                "mqtt_connected",
                broker=self._link.where,
                client_id=self._link.client_id,
                protocol="5" if self._link.protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1",
            )
            self._dirty.update(self._states)  # whatever changed while we were away
            try:
                async with asyncio.TaskGroup() as tg:
                    watcher = tg.create_task(_watch(client), name="mqtt-watch")
                    states = tg.create_task(self._pump_states(client), name="mqtt-states")
                    results = tg.create_task(self._pump_results(client), name="mqtt-results")
                    facts = tg.create_task(self._pump_facts(client, results), name="mqtt-facts")
                    await states
                    await results
                    await facts
                    await client.publish(self.topics.host_status, HOST_OFFLINE, qos=1, retain=True)
                    _log.info("host_offline_published", topic=self.topics.host_status)
                    await cancel_and_wait(watcher)
            except ExceptionGroup as group:
                raise _unwrap(group) from None
            self._connected.clear()

    # --- jig state ---------------------------------------------------------------------------

    async def _pump_states(self, client: aiomqtt.Client) -> None:
        interval = self._settings.state_interval
        while True:
            self._state_wake.clear()
            if self._dirty:
                keys = list(self._dirty)
                self._dirty.clear()
                try:
                    await publish_all(
                        client,
                        [
                            (self.topics.jig_state(*key), encode(self._states[key].payload()), True)
                            for key in keys
                        ],
                    )
                except BaseException:
                    self._dirty.update(keys)
                    raise
                if interval > 0 and not self._closing.is_set():
                    # Changes meanwhile are coalesced: the next publish carries the latest.
                    await nap(self._closing, interval)
                continue
            if self._closing.is_set():
                return
            await either(self._state_wake, self._closing)

    # --- results -----------------------------------------------------------------------------

    async def _pump_results(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._results_wake.clear()
            closing = self._closing.is_set()
            if closing and loop.time() > self._drain_deadline:
                _log.warning("results_left_in_outbox", reason="drain_timeout")
                return
            try:
                rows = await self._outbox.pending_results(RESULTS_BATCH)
            except StoreError as exc:
                _log.warning("results_unreadable", detail=str(exc))
                if closing:
                    return
                await nap(self._closing, STORE_RETRY)
                continue
            if rows:
                await self._publish_results(client, rows)
                if len(rows) == RESULTS_BATCH or closing:
                    continue  # more may be waiting: read again at once
                # Everything committed before the read went out; a commit since has set the
                # wake event (cleared before the read), so the nap below returns at once.
                await nap(self._closing, RESULTS_LINGER)
            elif closing:
                return
            await nap(self._results_wake, RESULTS_POLL, also=self._closing)

    async def _publish_results(self, client: aiomqtt.Client, rows: list[tuple[int, str]]) -> None:
        topic = self.topics.results
        failure: PublishFailed | None = None
        try:
            done = await publish_all(client, [(topic, p.encode(), False) for _, p in rows])
        except PublishFailed as exc:
            failure, done = exc, exc.acked
        acked = [rows[i][0] for i in done]
        if acked:
            try:
                await self._outbox.mark_results_sent(acked, utcnow())
            except StoreError as exc:
                # They go out again later: consumers de-duplicate on attempt_id.
                _log.warning("results_not_marked", count=len(acked), detail=str(exc))
            self.results_published += len(acked)
            _log.debug("results_published", count=len(acked), last_id=acked[-1])
        if failure is not None:
            raise failure

    # --- work order and outbox depth -------------------------------------------------------

    async def _pump_facts(self, client: aiomqtt.Client, drain: asyncio.Task[None]) -> None:
        if self._facts is None:
            return
        self._facts_sent.clear()  # a new connection gets everything once
        self._crl_sent = False
        while True:
            closing = self._closing.is_set()
            if closing:
                await asyncio.wait({drain})  # runners are done, the outbox drained: a final read
            try:
                found = {
                    self.topics.outbox: {"depth": await self._facts.outbox_depth()},
                    self.topics.work_order: await self._facts.work_order(),
                }
            except LinehostError as exc:  # the runners report database trouble
                _log.debug("line_facts_unreadable", detail=str(exc))
                found = {}
            for topic, figures in found.items():
                if figures is None or self._facts_sent.get(topic) == figures:
                    continue
                payload = {**figures, "line": self.topics.line, "at": iso_utc(utcnow())}
                await client.publish(topic, encode(payload), qos=1, retain=True)
                self._facts_sent[topic] = figures
            await self._publish_crl(client, self._facts.crl())
            if closing:
                return
            await nap(self._closing, FACTS_EVERY)

    async def _publish_crl(self, client: aiomqtt.Client, state: CrlState | None) -> None:
        """A newly signed CRL, retained; without one, clear what an earlier run left retained
        (a dashboard would otherwise alarm on a CRL this host no longer keeps)."""
        if state == self._crl_sent:
            return  # published (or cleared) on this connection already
        payload = b"" if state is None else host_crl(state, self.topics.line, utcnow())
        await client.publish(self.topics.host_crl, payload, qos=1, retain=True)
        self._crl_sent = state


async def _watch(client: aiomqtt.Client) -> None:
    """Raise MqttError when the connection drops (aiomqtt reports it to message readers)."""
    async for _ in client.messages:
        pass


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The MqttError behind a failed session; anything else (a bug) is re-raised as it is."""
    leaves = list(_leaves(group))
    for leaf in leaves:
        if not isinstance(leaf, aiomqtt.MqttError):
            return group
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
