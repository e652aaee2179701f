"""The dashboard subscribes like any MES: it uses the MQTT tests' broker fixtures."""

from tests.mqtt.conftest import broker_url, own_broker, prefix

__all__ = ["broker_url", "own_broker", "prefix"]
