"""The newest checkpoint, retained on `{prefix}/{line}/audit/checkpoint` (its own connection)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiomqtt
import structlog

from linehost.config import MqttSection
from linehost.evidence.checkpoint import Checkpoint
from linehost.mqtt.link import companion_link, describe, reconnect_backoff
from linehost.tasks import cancel_and_wait

CHECKPOINT_TOPIC: Final = "audit/checkpoint"

_log = structlog.get_logger("linehost.evidence")


def checkpoint_topic(prefix: str, line: str) -> str:
    """Retained, QoS 1: the line's newest signed checkpoint."""
    return f"{prefix}/{line}/{CHECKPOINT_TOPIC}"


class MqttCheckpoints:
    """A CheckpointSink: publishes the newest checkpoint, retained; the latest one wins."""

    def __init__(self, settings: MqttSection, line: str) -> None:
        """Publish for `line` on the `[mqtt]` broker."""
        self.topic = checkpoint_topic(settings.topic_prefix, line)
        self.published = 0
        self._settings = settings
        self._link = companion_link(settings, "audit", line)
        self._latest: bytes | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def checkpoint_made(self, checkpoint: Checkpoint) -> None:
        """Publish `checkpoint` soon (replacing one not yet sent)."""
        self._latest = checkpoint.encode().rstrip(b"\n")
        self._wake.set()

    def start(self) -> None:
        """Run in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.topic}")

    async def close(self) -> None:
        """Send what is pending (for up to `drain_timeout`), then disconnect."""
        if self._task is None:
            return
        self._closing.set()
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=self._settings.drain_timeout)
        if not done:
            _log.warning("checkpoint_not_published", topic=self.topic, reason="drain_timeout")
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        backoff = reconnect_backoff()
        while True:
            try:
                async with self._link.client() as client:
                    backoff.reset()
                    while True:
                        payload = self._latest
                        if payload is not None:
                            await client.publish(self.topic, payload, qos=1, retain=True)
                            if self._latest is payload:
                                self._latest = None
                            self.published += 1
                            continue
                        if self._closing.is_set():
                            return
                        self._wake.clear()
                        await self._wake.wait()
            except aiomqtt.MqttError as exc:
                _log.warning("checkpoint_publish_failed", topic=self.topic, detail=describe(exc))
                if self._closing.is_set() and self._latest is None:
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff.next_delay()):
                    await self._closing.wait()
            if self._closing.is_set() and self._latest is None:
                return
