"""An MQTT 3.1.1 broker inside the process (amqtt), for `linehost demo` when none is configured."""

from __future__ import annotations

import logging
import socket
from typing import Any

from linehost.errors import LinehostError


class EmbeddedBroker:
    """amqtt on a loopback port; anonymous, in memory, gone when the demo ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        """mqtt://host:port for the `[mqtt]` section."""
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> str:
        """Listen; returns the URL."""
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # a trimmed install: say what is missing
            raise LinehostError(f"the embedded MQTT broker needs amqtt ({exc})") from None
        # amqtt warns about every refused MQTT v5 CONNECT (we try v5 first, then 3.1.1).
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await self._broker.start()
        return self.url

    async def stop(self) -> None:
        """Disconnect everyone and stop listening."""
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
