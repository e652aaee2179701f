"""`linehost dashboard`: subscribes to every line's topics, serves a live plant page (SSE) and
publishes the alarms it evaluates."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import time
from importlib import resources
from typing import Any, Final

import aiomqtt
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from linehost.config import DashboardSection, MqttSection
from linehost.dashboard.alarms import AlarmBook, AlarmRules, alarms_payload
from linehost.dashboard.board import Board, Event
from linehost.mqtt.link import BrokerLink, default_client_id, describe, reconnect_backoff
from linehost.mqtt.payloads import decode, encode
from linehost.mqtt.topics import LineTopics, ParsedTopic, parse_topic, plant_subscriptions
from linehost.tasks import cancel_and_wait

FLUSH_EVERY: Final = 0.1  # seconds: browser updates are coalesced per jig and sent in batches
STATS_EVERY: Final = 10.0  # seconds: the one-hour window slides even when nothing happens
HEARTBEAT_EVERY: Final = 15.0  # seconds: an SSE comment keeps proxies from closing the stream
CLIENT_QUEUE: Final = 64  # batches a slow browser may lag before it is dropped (it reconnects)
SESSION_EXPIRY: Final = 3600  # seconds the broker keeps results for a dashboard that restarts
ALARMS_EVERY: Final = 1.0  # seconds between two evaluations of the alarms
ALARMS_SETTLE: Final = 2.0  # seconds after subscribing before the first: retained messages arrive

_log = structlog.get_logger("linehost.dashboard")
_STATIC = resources.files("linehost.dashboard") / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_OPEN_PATHS = frozenset({"/healthz"})  # answered without credentials (load balancers, systemd)


class Dashboard:
    """The MQTT feed, the board it keeps, and the web server that shows it."""

    def __init__(
        self,
        settings: MqttSection,
        *,
        client_id: str | None = None,
        dashboard: DashboardSection | None = None,
    ) -> None:
        # A stable id gets a persistent session (results missed while restarting still come);
        # an ad-hoc dashboard (demo, tests) gets a random id and a clean session.
        # `[mqtt] client_id` names the line host; the dashboard never borrows it.
        self._persistent = client_id is not None
        self._link = BrokerLink(
            settings.model_copy(update={"client_id": None}),
            client_id or f"linehost-dashboard-{secrets.token_hex(4)}",
        )
        self._prefix = settings.topic_prefix
        page = dashboard or DashboardSection()
        rules = page.alarms
        self.alarms = AlarmBook(
            AlarmRules(
                jig_failures=rules.jig_failures,
                jig_offline_after=rules.jig_offline_after,
                host_offline_after=rules.host_offline_after,
                outbox_limit=rules.outbox_limit,
                outbox_window=rules.outbox_window,
                crl_margin=rules.crl_margin,
            )
        )
        self._publish_alarms = rules.publish
        self._unpublished: dict[str, bytes] = {}  # line -> alarms payload not yet on the broker
        self._client: aiomqtt.Client | None = None
        self._subscribed = asyncio.Event()
        # Secrets are read once at start: a missing one is fatal then, not at the first request.
        self._basic = (page.username, page.password()) if page.username is not None else None
        self._token = page.token()
        self.board = Board()
        self.url = ""
        self.mqtt_connected = False
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._pending: dict[tuple[str, str, str], Event] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    @staticmethod
    def stable_client_id(port: int) -> str:
        """The id a long-running dashboard on this host and port uses."""
        return default_client_id("dashboard", str(port))

    async def start(self, host: str, port: int) -> str:
        """Serve on host:port (0 = any free port) and follow the broker; returns the page URL."""
        app = web.Application(middlewares=[self._authorize])
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/static/{name}", self._static),
                web.get("/static/vendor/{name}", self._vendor),
                web.get("/api/history", self._history),
                web.get("/events", self._events),
                web.get("/api/board", self._board),
                web.get("/healthz", self._health),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = self._runner.addresses[0]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound[1]}/"
        self._tasks = [
            asyncio.create_task(self._follow(), name="dashboard-mqtt"),
            asyncio.create_task(self._flush(), name="dashboard-flush"),
            asyncio.create_task(self._watch_alarms(), name="dashboard-alarms"),
        ]
        _log.info("dashboard_started", url=self.url, broker=self._link.where)
        return self.url

    async def close(self) -> None:
        """Stop following the broker, end every browser stream, stop serving."""
        await cancel_and_wait(*self._tasks)
        for queue in list(self._clients):
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- MQTT --------------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = reconnect_backoff()
        while True:
            try:
                async with self._link.client(
                    persistent=self._persistent, session_expiry=SESSION_EXPIRY
                ) as client:
                    for topic_filter in plant_subscriptions(self._prefix):
                        await client.subscribe(topic_filter, qos=1)
                    self._client = client
                    self._subscribed.set()
                    self.mqtt_connected = True
                    self._link.connected()
                    backoff.reset()
                    _log.info("dashboard_subscribed", broker=self._link.where)
                    async for message in client.messages:
                        self._receive(message)
            except aiomqtt.MqttError as exc:
                if not self.mqtt_connected and self._link.downgrade(exc):
                    continue
                _log.warning("dashboard_mqtt_lost", broker=self._link.where, detail=describe(exc))
            self.mqtt_connected = False
            self._client = None
            await asyncio.sleep(backoff.next_delay())

    def _receive(self, message: aiomqtt.Message) -> None:
        topic = parse_topic(self._prefix, message.topic.value)
        if topic is None or not isinstance(message.payload, bytes | bytearray):
            return
        if not message.payload:
            events = self.board.forget(topic)
            if events and topic.kind == "jig":
                self.alarms.jig_removed(topic.line, f"{topic.station}/{topic.jig}")
            if topic.kind == "crl":
                self.alarms.crl(topic.line, None)
        else:
            payload = decode(message.payload)
            if payload is None:
                _log.debug("dashboard_message_ignored", topic=message.topic.value)
                return
            events = self.board.apply(topic, payload)
            self._feed_alarms(topic, payload, fresh=bool(events))
        self._queue(events)

    def _feed_alarms(self, topic: ParsedTopic, payload: dict[str, Any], *, fresh: bool) -> None:
        now = time.time()
        if topic.kind == "host":
            self.alarms.host(topic.line, payload, now)
        elif topic.kind == "jig":
            self.alarms.jig(topic.line, f"{topic.station}/{topic.jig}", payload, now)
        elif topic.kind == "results" and fresh:  # not a redelivery
            self.alarms.result(topic.line, payload)
        elif topic.kind == "outbox" and isinstance(payload.get("depth"), int):
            self.alarms.outbox(topic.line, payload["depth"], now)
        elif topic.kind == "crl":
            self.alarms.crl(topic.line, payload)
        elif topic.kind == "alarms":
            self.alarms.adopt(topic.line, payload)

    def _queue(self, events: list[Event]) -> None:
        for name, data in events:
            self._pending[(name, data.get("line", ""), data.get("key", ""))] = (name, data)
        if events:
            self._changed.set()

    # --- alarms ------------------------------------------------------------------------------

    async def _watch_alarms(self) -> None:
        await self._subscribed.wait()
        await asyncio.sleep(ALARMS_SETTLE)
        while True:
            now = time.time()
            for line, active in self.alarms.evaluate(now):
                self._queue(self.board.set_alarms(line, [a.payload() for a in active]))
                _log.info("alarms_changed", line=line, active=[a.kind for a in active])
                payload = alarms_payload(line, active, now, self._link.client_id)
                self._unpublished[line] = encode(payload)
            if self._publish_alarms and self._client is not None and self._unpublished:
                await self._send_alarms(self._client)
            await asyncio.sleep(ALARMS_EVERY)

    async def _send_alarms(self, client: aiomqtt.Client) -> None:
        for line, payload in list(self._unpublished.items()):
            topic = LineTopics(self._prefix, line).alarms
            try:
                await client.publish(topic, payload, qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                _log.warning("alarms_not_published", line=line, detail=describe(exc))
                return  # kept: sent after the reconnect
            if self._unpublished.get(line) is payload:
                del self._unpublished[line]

    # --- browsers ----------------------------------------------------------------------------

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        next_stats = loop.time() + STATS_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_stats - loop.time())):
                    await self._changed.wait()
            await asyncio.sleep(FLUSH_EVERY)  # gather the burst
            self._changed.clear()
            if loop.time() >= next_stats:
                next_stats = loop.time() + STATS_EVERY
                for name, data in self.board.stats_events():
                    self._pending[(name, data["line"], "")] = (name, data)
            if not self._pending:
                continue
            batch = list(self._pending.values())
            self._pending.clear()
            self._broadcast(_sse("batch", [[name, data] for name, data in batch]))

    def _broadcast(self, chunk: bytes) -> None:
        for queue in list(self._clients):
            try:
                queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self._clients.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)  # too slow: end its stream; EventSource reconnects

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(queue)
        try:
            await response.write(_sse("snapshot", self._snapshot()))
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_EVERY):
                        chunk = await queue.get()
                except TimeoutError:
                    chunk = b": keep-alive\n\n"
                if chunk is None:
                    break
                await response.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(queue)
        return response

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(body=(_STATIC / "index.html").read_bytes(), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _TYPES.get(name[name.rfind(".") :]) if "." in name else None
        item = _STATIC / name
        if kind is None or "/" in name or not item.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=item.read_bytes(), content_type=kind)

    async def _vendor(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _TYPES.get(name[name.rfind(".") :]) if "." in name else None
        item = _STATIC / "vendor" / name
        if kind is None or "/" in name or not item.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=item.read_bytes(), content_type=kind)

    async def _board(self, _request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    async def _history(self, _request: web.Request) -> web.Response:
        return web.json_response(self.board.history())

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (self._basic is None and self._token is None) or request.path in _OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        token = self._token
        bearer = scheme.lower() == "bearer"
        if (
            token is not None
            and bearer
            and secrets.compare_digest(value.strip().encode(), token.encode())
        ):
            return await handler(request)
        if self._basic is not None and scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                user, password = _basic_credentials(value)
                want_user, want_password = self._basic
                user_ok = secrets.compare_digest(user.encode(), (want_user or "").encode())
                pass_ok = secrets.compare_digest(password.encode(), (want_password or "").encode())
                if user_ok and pass_ok:
                    return await handler(request)
        _log.info("dashboard_unauthorized", path=request.path, remote=request.remote)
        headers = {"WWW-Authenticate": 'Basic realm="linehost"'} if self._basic else {}
        raise web.HTTPUnauthorized(headers=headers)

    async def _health(self, _request: web.Request) -> web.Response:
        status = 200 if self.mqtt_connected else 503
        return web.json_response({"mqtt": self.mqtt_connected}, status=status)

    def _snapshot(self) -> dict[str, Any]:
        return {**self.board.snapshot(), "mqtt": self.mqtt_connected}


async def serve_dashboard(
    settings: MqttSection,
    host: str,
    port: int,
    stop: asyncio.Event,
    dashboard_settings: DashboardSection | None = None,
) -> None:
    """`linehost dashboard`: serve until `stop` is set."""
    dashboard = Dashboard(
        settings,
        client_id=Dashboard.stable_client_id(port) if port else None,
        dashboard=dashboard_settings,
    )
    url = await dashboard.start(host, port)
    topics = f"{settings.topic_prefix}/+/..."
    print(f"linehost dashboard: {url} (broker {settings.url}, topics {topics})", flush=True)
    try:
        await stop.wait()
    finally:
        await dashboard.close()


def _basic_credentials(value: str) -> tuple[str, str]:
    """user, password of a basic-auth header value; ValueError when malformed."""
    try:
        text = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("malformed basic credentials") from exc
    user, sep, password = text.partition(":")
    if not sep:
        raise ValueError("malformed basic credentials")
    return user, password


def _sse(event: str, data: Any) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {text}\n\n".encode()
