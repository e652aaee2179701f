"""Brokers for MQTT tests: the shared Mosquitto on 1883, and private ones a test may stop."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SHARED_HOST = os.environ.get("LINEHOST_TEST_MQTT_HOST", "127.0.0.1")
SHARED_PORT = int(os.environ.get("LINEHOST_TEST_MQTT_PORT", "1883"))


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def no_broker(message: str) -> None:
    """Skip loudly, or fail when CI=true (CI must never skip the MQTT tests)."""
    text = f"{message}: the MQTT tests did NOT run"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(text + " (CI=true makes this an error)", pytrace=False)
    pytest.skip(text + " — start it with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`")


def shared_broker_url() -> str:
    """mqtt:// URL of the shared broker, or skip/fail loudly."""
    if not reachable(SHARED_HOST, SHARED_PORT):
        no_broker(f"no MQTT broker on {SHARED_HOST}:{SHARED_PORT}")
    return f"mqtt://{SHARED_HOST}:{SHARED_PORT}"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PrivateBroker:
    """A Mosquitto of its own on a free loopback port, with persistence, stoppable mid-test."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""  # more mosquitto.conf lines

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> PrivateBroker:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.directory}/\n"
            "autosave_interval 1\nmax_queued_messages 0\n"
            # Started as root, mosquitto would drop to user `mosquitto`, which cannot write
            # its persistence file into our temporary folder.
            f"user {getpass.getuser()}\n{self.extra_conf}"
        )
        log = (self.directory / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private mosquitto did not start: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence file (sessions, queued messages) and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


def private_broker(directory: Path) -> PrivateBroker:
    """Start a private broker, or skip/fail loudly without the mosquitto binary."""
    if shutil.which("mosquitto") is None:
        no_broker("the mosquitto binary is not installed")
    return PrivateBroker(directory).start()


def clear_retained(url: str, prefix: str, settle: float = 0.5) -> None:
    """Delete every retained message under `prefix/` (leave the shared broker as we found it)."""
    from urllib.parse import urlsplit

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(url)
    seen: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: seen.append(msg.topic) if msg.retain else None
    try:
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=5)
    except OSError:
        return
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/#", qos=0)
        time.sleep(settle)
        for topic in set(seen):
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
