"""Onboarding data allocated in the assign transaction, with the database enforcing uniqueness."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from linehost.errors import OnboardingError
from linehost.mqtt.payloads import result_payload
from linehost.onboarding.spake2p import compute_verifier, is_valid_passcode
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AttemptEnd
from linehost.store.models import onboarding
from linehost.store.store import Store
from tests.onboarding.conftest import LINE, Devices, make_onboarding


async def test_assign_records_onboarding_with_the_dac(store: Store, devices: Devices) -> None:
    ob = make_onboarding(serial_template="{line}-{yyyymmdd}-{seq:06d}", rotating_id=True,
                         hw_ver=3, hw_ver_str="rev C")  # fmt: skip
    req = await devices.request(ob)
    # not the attempt's date:
    store.writer.clock = lambda: datetime(2027, 3, 4, 23, 59, 59, tzinfo=UTC)
    result = await store.assign(req)
    assert result.kind == "issued"
    record = result.onboarding
    assert record is not None
    assert record.serial_num == f"{LINE}-20270304-000000"  # batch date from the store clock
    assert record.discriminator == 0
    assert (record.hw_ver, record.hw_ver_str) == (3, "rev C")
    assert record.rd_uid is not None
    assert len(bytes.fromhex(record.rd_uid)) == 16
    passcode = ob.passcode(record)
    assert is_valid_passcode(passcode)
    salt = base64.b64decode(record.spake2p_salt)
    assert len(salt) == 32
    assert base64.b64decode(record.spake2p_verifier) == compute_verifier(passcode, salt, 1000)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(onboarding))).mappings().all()
    assert len(rows) == 1
    assert rows[0]["assignment_id"] == result.assignment_id
    assert str(passcode) not in str(dict(rows[0]))  # sealed at rest
    fields = dict(ob.factory_data(record))
    assert "passcode" not in fields  # not sent unless the config says so
    assert fields["serial_num"] == record.serial_num
    assert fields["discriminator"] == "0"
    assert fields["rd_uid"] == record.rd_uid


async def test_sequential_discriminators_and_serials(store: Store, devices: Devices) -> None:
    ob = make_onboarding()
    results = await asyncio.gather(*[store.assign(await devices.request(ob)) for _ in range(20)])
    records = [r.onboarding for r in results if r.onboarding is not None]
    assert sorted(r.discriminator for r in records) == list(range(20))
    assert sorted(r.serial_num for r in records) == [f"{LINE}-{i:06d}" for i in range(20)]
    other = await store.assign(await devices.request(ob, vid="FFF2"))
    assert other.onboarding is not None
    assert other.onboarding.discriminator == 0  # a sequence per VID/PID
    assert other.onboarding.serial_num == f"{LINE}-000020"  # one serial sequence


async def test_redelivery_and_reprovisioning_keep_the_device_data(
    store: Store, devices: Devices
) -> None:
    ob = make_onboarding(send_passcode=True)
    first = await devices.request(ob, allow_reprovision=True)
    issued = await store.assign(first)
    assert issued.onboarding is not None
    uid = first.attempt.uid
    again = await devices.request(ob, uid, key=first.public_key_sha256)
    redelivered = await store.assign(again)
    assert redelivered.kind == "redelivered"
    assert redelivered.onboarding == issued.onboarding
    await store.end_attempt(
        again.attempt,
        AttemptEnd(
            outcome=Outcome.PROVISIONED,
            detail="",
            ended_at=devices.clock,
            assignment_id=redelivered.assignment_id,
            assignment_status=AssignmentStatus.CONFIRMED,
        ),
    )
    new_key = await store.assign(await devices.request(ob, uid, allow_reprovision=True))
    assert new_key.kind == "issued"
    assert new_key.assignment_id != issued.assignment_id
    assert new_key.onboarding == issued.onboarding  # the label on the device stays right
    assert dict(ob.factory_data(new_key.onboarding))["passcode"] == str(
        ob.passcode(issued.onboarding)
    )


async def test_retry_of_a_committed_assign_returns_the_same_data(
    store: Store, devices: Devices
) -> None:
    ob = make_onboarding()
    req = await devices.request(ob)
    first = await store.assign(req)
    assert await store.assign(req) == first


async def test_unrenderable_serial_refuses_without_recording(
    store: Store, devices: Devices
) -> None:
    ob = make_onboarding(serial_template="{uid}{uid}{uid}")
    req = await devices.request(ob)
    with pytest.raises(OnboardingError, match=r"1\.\.32 characters"):
        await store.assign(req)
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM assignments"))).scalar() == 0
        assert (await conn.execute(text("SELECT count(*) FROM attempts"))).scalar() == 0


async def test_database_refuses_a_repeated_serial_or_passcode_pair(
    store: Store, devices: Devices
) -> None:
    ob = make_onboarding()
    result = await store.assign(await devices.request(ob))
    async with store.engine.connect() as conn:
        row = dict((await conn.execute(select(onboarding))).mappings().one())
    base = {k: v for k, v in row.items() if k != "id"} | {"assignment_id": None, "rd_uid": None}
    clashes = [
        base | {"uid": "OTHER1"},  # same serial
        base | {"uid": "OTHER2", "serial_num": "x-2"},  # same passcode + discriminator + VID/PID
        base | {"serial_num": "x-3", "passcode_tag": "f" * 32},  # same device twice
        base | {"uid": "OTHER3", "serial_num": "x-4", "discriminator": 4096},
    ]
    for clash in clashes:
        with pytest.raises(IntegrityError):
            async with store.engine.begin() as conn:
                await conn.execute(insert(onboarding).values(**clash))
    async with store.engine.begin() as conn:  # another discriminator is fine
        await conn.execute(
            insert(onboarding).values(
                **base | {"uid": "OK", "serial_num": "x-5", "discriminator": 1}
            )
        )
    assert result.onboarding is not None


async def test_passcode_pair_collision_makes_the_line_draw_again(
    store: Store, devices: Devices
) -> None:
    """A clash on the pair (astronomically rare) surfaces as a retryable OnboardingCollision."""
    from linehost.errors import OnboardingCollision

    ob = make_onboarding()
    first = await devices.request(ob)
    await store.assign(first)
    second = await devices.request(ob)
    assert first.onboarding is not None and second.onboarding is not None  # noqa: PT018
    # Force the same passcode tag; the sequential discriminator is 1 here, so wrap it to 0.
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE onboarding_counters SET value = 4096 WHERE name LIKE 'disc%'")
        )
    clone = type(second)(
        attempt=second.attempt,
        public_key_sha256=second.public_key_sha256,
        candidate=second.candidate,
        onboarding=first.onboarding,
    )
    with pytest.raises(OnboardingCollision):
        await store.assign(clone)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["sequential", "random"])
@pytest.mark.timeout(300)
async def test_ten_thousand_devices(store: Store, devices: Devices, policy: str) -> None:
    """The fast path (allocation + store, no serial ports): spread and validity."""
    ob = make_onboarding(discriminator=policy, serial_template="{line}-{yyyymmdd}-{seq:06d}")
    total, chunk = 10_000, 500
    started = time.monotonic()
    records = []
    for _ in range(total // chunk):
        requests = await asyncio.gather(*[devices.request(ob) for _ in range(chunk)])
        results = await asyncio.gather(*[store.assign(r) for r in requests])
        records.extend(r.onboarding for r in results)
    elapsed = time.monotonic() - started
    assert all(r is not None for r in records)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(onboarding).order_by(onboarding.c.id))).mappings().all()
    assert len(rows) == total
    serials = [r["serial_num"] for r in rows]
    assert len(set(serials)) == total
    discriminators = [r["discriminator"] for r in rows]
    for i in range(total - 4095):  # no collision inside any window of 4096 devices
        assert len(set(discriminators[i : i + 4096])) == 4096, f"window at device {i}"
    counts = Counter(discriminators)
    assert set(counts) == set(range(4096))  # the whole 12-bit space is used
    passcodes = [ob.passcode(r) for r in records if r is not None]
    assert all(is_valid_passcode(p) for p in passcodes)
    pairs = {(r.discriminator, p) for r, p in zip(records, passcodes, strict=True) if r}
    assert len(pairs) == total
    print(f"{total} devices ({policy}) in {elapsed:.1f} s")


async def test_two_hosts_on_one_database_never_share_values(db_url: str, devices: Devices) -> None:
    """Two stores (two hosts, one line each) allocating at once from the same sequences."""
    a = await Store.open(db_url, line="line-a", result_payload=result_payload)
    b = await Store.open(db_url, line="line-b", result_payload=result_payload)
    try:
        ob = make_onboarding(discriminator="random", serial_template="SN{seq:08d}")
        requests = [await devices.request(ob) for _ in range(400)]
        for i, req in enumerate(requests):
            line = "line-a" if i % 2 == 0 else "line-b"
            requests[i] = type(req)(
                attempt=type(req.attempt)(**{**_fields(req.attempt), "line": line}),
                public_key_sha256=req.public_key_sha256,
                candidate=req.candidate,
                onboarding=req.onboarding,
            )
        results = await asyncio.gather(
            *[(a if r.attempt.line == "line-a" else b).assign(r) for r in requests]
        )
    finally:
        await a.close()
        await b.close()
    records = [r.onboarding for r in results]
    assert all(r is not None for r in records)
    assert len({r.serial_num for r in records if r}) == 400
    assert len({r.discriminator for r in records if r}) == 400  # inside one window


def _fields(obj: object) -> dict[str, object]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}  # type: ignore[attr-defined]
