"""The broker link: client options from `[mqtt]`, protocol choice, reconnect backoff."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from typing import Final

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from linehost.backoff import Backoff
from linehost.config import MqttSection
from linehost.errors import ConfigError

RECONNECT_MIN: Final = 0.5  # seconds, first retry after a lost or refused connection
RECONNECT_MAX: Final = 30.0  # seconds, the cap
RECONNECT_JITTER: Final = 0.25  # +-25 % so a line of hosts does not reconnect in lockstep
OPERATION_TIMEOUT: Final = 10.0  # seconds for CONNACK / PUBACK / SUBACK
MAX_INFLIGHT: Final = 256  # QoS 1 messages awaiting PUBACK at once (pipelining)

#: CONNACK codes meaning "I don't speak this protocol version" (3.1.1: 1, v5: 0x84).
_UNSUPPORTED_PROTOCOL: Final = frozenset({1, 0x84})
_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def reconnect_backoff() -> Backoff:
    """The pacing of reconnects to the broker."""
    return Backoff(low=RECONNECT_MIN, high=RECONNECT_MAX, jitter=RECONNECT_JITTER)


def default_client_id(purpose: str, line: str) -> str:
    """A client id stable across restarts of this host (`linehost-{host}-{line}`)."""
    host = _CLIENT_ID_UNSAFE.sub("-", socket.gethostname().split(".")[0]) or "host"
    return f"linehost-{purpose}-{host}-{_CLIENT_ID_UNSAFE.sub('-', line)}"


def companion_link(settings: MqttSection, purpose: str, line: str) -> BrokerLink:
    """A link for one of the line host's other clients (audit checkpoints, doctor).

    `[mqtt] client_id` names the relay: a second connection under the same id would take its
    session over (and be taken over in turn), so the others derive theirs from it
    (`{client_id}-{purpose}`), or use their own default when it is not set.
    """
    client_id = f"{settings.client_id}-{purpose}" if settings.client_id else None
    return BrokerLink(
        settings.model_copy(update={"client_id": client_id}), default_client_id(purpose, line)
    )


class BrokerLink:
    """Makes aiomqtt clients for one `[mqtt]` section; remembers whether the broker speaks v5."""

    def __init__(self, settings: MqttSection, client_id: str) -> None:
        self.settings = settings
        self.client_id = settings.client_id or client_id
        self.protocol = (
            aiomqtt.ProtocolVersion.V311
            if settings.protocol == "3.1.1"
            else aiomqtt.ProtocolVersion.V5
        )
        self._v5_worked = False
        self._password = settings.password()  # read once: a missing secret is fatal at start
        self._tls = _tls_context(settings) if settings.tls else None

    def client(
        self,
        *,
        will: aiomqtt.Will | None = None,
        persistent: bool = False,
        session_expiry: int = 3600,
    ) -> aiomqtt.Client:
        """A new, unconnected client; `persistent` keeps the session (and queued QoS 1) across
        reconnects."""
        v5 = self.protocol is aiomqtt.ProtocolVersion.V5
        properties = None
        if v5 and persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = session_expiry
        client = aiomqtt.Client(
            self.settings.host,
            self.settings.port,
            identifier=self.client_id,
            username=self.settings.username,
            password=self._password,
            protocol=self.protocol,
            will=will,
            clean_session=None if v5 else not persistent,
            clean_start=(not persistent) if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=self.settings.keepalive,
            timeout=OPERATION_TIMEOUT,
            max_inflight_messages=MAX_INFLIGHT,
            tls_context=self._tls,
        )
        # Many QoS 1 publishes awaiting PUBACK at once is the design (pipelining), not a leak.
        client.pending_calls_threshold = MAX_INFLIGHT * 4
        return client

    def connected(self) -> None:
        """Note a successful CONNECT (a v5 broker is never downgraded afterwards)."""
        if self.protocol is aiomqtt.ProtocolVersion.V5:
            self._v5_worked = True

    def downgrade(self, exc: aiomqtt.MqttError) -> bool:
        """After a failed CONNECT: switch to 3.1.1 if the broker lacks v5; True if switched."""
        if self.settings.protocol != "auto" or self._v5_worked:
            return False
        if self.protocol is not aiomqtt.ProtocolVersion.V5:
            return False
        refused = isinstance(exc, aiomqtt.MqttCodeError) and _code(exc) in _UNSUPPORTED_PROTOCOL
        # Some 3.1.1-only brokers (amqtt) misparse a v5 CONNECT and never answer it.
        silent = "timed out" in str(exc)
        if refused or silent:
            self.protocol = aiomqtt.ProtocolVersion.V311
            return True
        return False

    @property
    def where(self) -> str:
        """The broker URL, for logs."""
        return self.settings.url


def describe(exc: BaseException) -> str:
    """A one-line reason for logs."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _code(exc: aiomqtt.MqttCodeError) -> int:
    rc = exc.rc
    return int(rc.value) if isinstance(rc, ReasonCode) else int(rc or 0)


def _tls_context(settings: MqttSection) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        if settings.client_cert is not None:
            context.load_cert_chain(
                str(settings.client_cert),
                str(settings.client_key) if settings.client_key else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt: cannot load TLS files: {describe(exc)}") from None
    return context


async def either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Return once either event is set."""
    if first.is_set() or second.is_set():
        return
    waiters = {asyncio.create_task(first.wait()), asyncio.create_task(second.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def nap(event: asyncio.Event, seconds: float, also: asyncio.Event | None = None) -> None:
    """Sleep up to `seconds`, less if `event` (or `also`) is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            if also is None:
                await event.wait()
            else:
                await either(event, also)
