"""Fixtures for tests against a real Mosquitto (skipped loudly without one; fail when CI=true)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt.broker import (
    SHARED_HOST,
    SHARED_PORT,
    PrivateBroker,
    clear_retained,
    private_broker,
    reachable,
    shared_broker_url,
)


@pytest.fixture
def broker_url() -> str:
    """The shared Mosquitto on 127.0.0.1:1883."""
    return shared_broker_url()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private Mosquitto the test may stop and start again."""
    broker = private_broker(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A topic prefix of this test alone; its retained messages are cleared afterwards."""
    value = f"lhtest-{secrets.token_hex(4)}"
    yield value
    if reachable(SHARED_HOST, SHARED_PORT):
        clear_retained(f"mqtt://{SHARED_HOST}:{SHARED_PORT}", value)
