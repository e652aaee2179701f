"""A held jig finishes its device, then sends nothing and starts no attempt until resumed
(the real runner and the simulated firmware over pseudo-terminals)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from linehost.line.hold import JigHolds
from linehost.line.provisioning import Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.supervisor import LineSupervisor
from linehost.mqtt.payloads import result_payload
from linehost.observers import Observer
from linehost.pki.devpki import init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.host import Timing
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus
from linehost.sim.devices import DeviceFactory
from linehost.sim.harness import load_paa
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from linehost.store.models import attempts
from linehost.store.store import Store
from linehost.transport.serial import JigPort, open_port
from tests.waiting import eventually

TIMING = Timing(sync_interval=0.1, csr_timeout=3, result_timeout=3)
GOOD = get_personality("good")


class RecordingPort(JigPort):
    """A real port that keeps what the host wrote, with the loop time."""

    sent: list[tuple[float, bytes]] = []

    def send(self, data: bytes) -> None:
        RecordingPort.sent.append((time.monotonic(), data))
        super().send(data)


class States(Observer):
    def __init__(self) -> None:
        self.seen: list[JigState] = []

    def jig_changed(self, status: JigStatus) -> None:
        self.seen.append(status.state)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'hold.db'}",
        line="hold-line",
        result_payload=result_payload,
    )
    yield s
    await s.close()


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    await eventually(predicate, within=within, what=what)


async def attempt_count(store: Store) -> tuple[int, int]:
    """(attempts recorded, attempts still running)."""
    async with store.engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(attempts))
        running = await conn.scalar(
            select(func.count()).select_from(attempts).where(attempts.c.outcome.is_(None))
        )
    return int(total or 0), int(running or 0)


@pytest.mark.timeout(90)
async def test_a_held_jig_takes_no_device_until_resumed(tmp_path: Path, store: Store) -> None:
    (tmp_path / "jigs").mkdir()
    pki = init_dev(tmp_path / "pki")
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    holds, states = JigHolds(), States()
    RecordingPort.sent = []
    runner = JigRunner(
        JigSpec("hold-line", "st1", "j1", str(tmp_path / "jigs" / "j1")),
        LineContext(
            Provisioner(issuer, store), TIMING, states,
            open_port=functools.partial(open_port, factory=RecordingPort), holds=holds,
        ),
    )  # fmt: skip
    factory = DeviceFactory(paa=load_paa(pki.paa_cert))
    stop = asyncio.Event()
    try:
        async with SimulatedJig(
            "j1", tmp_path / "jigs", [GOOD] * 200, factory=factory, swap_seconds=0.05
        ) as jig:
            sim = asyncio.create_task(jig.run())
            line = asyncio.create_task(LineSupervisor([runner], shutdown_grace=2).run(stop))
            await until(lambda: runner.status.ok >= 2, 30, "two devices provisioned")

            assert holds.hold("st1", "j1") is True
            await until(lambda: runner.status.state is JigState.HELD, 10, "the jig to be held")
            done = runner.status.ok + runner.status.failed
            recorded, running = await attempt_count(store)
            assert running == 0  # the device in progress was finished, not cut off
            assert recorded == done
            held_at = time.monotonic()
            await asyncio.sleep(1.5)  # 15 sync intervals: a free jig would take several devices
            assert runner.status.state is JigState.HELD
            assert await attempt_count(store) == (recorded, 0)
            assert runner.status.ok + runner.status.failed == done
            assert [data for at, data in RecordingPort.sent if at > held_at] == []
            assert holds.hold("st1", "j1") is False  # held already

            assert holds.resume("st1", "j1") is True
            await until(lambda: runner.status.ok >= done + 2, 30, "devices again after resume")
            assert runner.status.failed == 0
            stop.set()
            await asyncio.wait_for(line, 15)
            sim.cancel()
    finally:
        stop.set()
        await issuer.aclose()
    assert JigState.HELD in states.seen
    after = states.seen[states.seen.index(JigState.HELD) + 1 :]
    assert JigState.PROVISIONING in after  # it took devices again
    assert states.seen[-1] is JigState.STOPPED


@pytest.mark.timeout(60)
async def test_a_jig_held_before_its_port_opens_sends_no_init_until_resumed(
    tmp_path: Path, store: Store
) -> None:
    (tmp_path / "jigs").mkdir()
    pki = init_dev(tmp_path / "pki")
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    holds = JigHolds()
    RecordingPort.sent = []
    runner = JigRunner(
        JigSpec("hold-line", "st1", "j2", str(tmp_path / "jigs" / "j2")),
        LineContext(
            Provisioner(issuer, store), TIMING,
            open_port=functools.partial(open_port, factory=RecordingPort), holds=holds,
        ),
    )  # fmt: skip
    holds.hold("st1", "j2")
    stop = asyncio.Event()
    line = asyncio.create_task(LineSupervisor([runner], shutdown_grace=2).run(stop))
    try:
        async with SimulatedJig(
            "j2", tmp_path / "jigs", [GOOD] * 3, factory=DeviceFactory(paa=load_paa(pki.paa_cert)),
            swap_seconds=0.05,
        ) as jig:  # fmt: skip
            sim = asyncio.create_task(jig.run())
            await until(lambda: runner.status.state is JigState.HELD, 20, "the port to open")
            await asyncio.sleep(1.0)
            # Only the Abort that leaves a device clean: no Init, so no device starts.
            assert [data for _, data in RecordingPort.sent] == [b"Abort\n"]
            assert await attempt_count(store) == (0, 0)
            holds.resume("st1", "j2")
            await asyncio.wait_for(sim, 30)
            await until(lambda: runner.status.ok == 3, 10, "the three devices")
    finally:
        stop.set()
        await asyncio.wait_for(line, 15)
        await issuer.aclose()
