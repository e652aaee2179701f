"""Onboarding fixtures: a passcode key, the line's Onboarding service, store inputs."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from linehost.config import LabelsSection, OnboardingSection
from linehost.mqtt.payloads import result_payload
from linehost.onboarding.sealing import PasscodeSeal
from linehost.onboarding.service import Onboarding
from linehost.records import AssignRequest, AttemptStart, IssuedDac
from linehost.store.store import Store

LINE = "line-1"
KEY = bytes(range(32))


def make_onboarding(*, labels: LabelsSection | None = None, **section: object) -> Onboarding:
    """An Onboarding service with a fixed key and fast PBKDF2 unless told otherwise."""
    fields: dict[str, object] = {"passcode_key_env": "UNUSED", "spake2p_iterations": 1000}
    fields.update(section)
    return Onboarding(OnboardingSection.model_validate(fields), PasscodeSeal(KEY), labels)


class Devices:
    """Well-formed store inputs for made-up devices."""

    def __init__(self) -> None:
        self.clock = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)

    def start(self, uid: str | None = None, *, jig: str = "j1") -> AttemptStart:
        self.clock += timedelta(milliseconds=1)
        return AttemptStart(
            attempt_id=str(uuid.uuid4()),
            line=LINE,
            station="st1",
            jig=jig,
            uid=uid or secrets.token_hex(8).upper(),
            started_at=self.clock,
        )

    @staticmethod
    def dac(key: str, vid: str = "FFF1", pid: str = "8000") -> IssuedDac:
        serial = secrets.token_hex(10).upper().lstrip("0") or "1"
        return IssuedDac(
            pem=f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n",
            der=secrets.token_bytes(16),
            serial_hex=serial,
            sha256=secrets.token_hex(32),
            public_key_sha256=key,
            pai_sha256="ab" * 32,
            vid=vid,
            pid=pid,
        )

    async def request(
        self,
        onboarding: Onboarding,
        uid: str | None = None,
        *,
        key: str | None = None,
        vid: str = "FFF1",
        pid: str = "8000",
        allow_reprovision: bool = False,
    ) -> AssignRequest:
        start = self.start(uid)
        assert start.uid is not None
        key = key or secrets.token_hex(32)
        return AssignRequest(
            attempt=start,
            public_key_sha256=key,
            candidate=self.dac(key, vid, pid),
            allow_reprovision=allow_reprovision,
            onboarding=await onboarding.draw(start.uid, vid, pid),
        )


@pytest.fixture
def devices() -> Devices:
    return Devices()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url, line=LINE, result_payload=result_payload)
    try:
        yield s
    finally:
        await s.close()
