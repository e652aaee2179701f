"""End-to-end runs that publish to MQTT use the MQTT tests' broker fixtures."""

from tests.mqtt.conftest import broker_url, prefix

__all__ = ["broker_url", "prefix"]
