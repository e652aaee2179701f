"""Port faults end in the documented jig state and recover without a restart.

missing port -> offline; port busy (locked by another process) or unopenable -> offline;
unplug / re-plug under load -> offline, then back; a port that never answers ->
waiting_for_device with no attempt recorded. Every case then provisions a device.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from linehost.line.provisioning import Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.supervisor import LineSupervisor
from linehost.mqtt.payloads import result_payload
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.host import Timing
from linehost.protocol.outcomes import JigState
from linehost.sim.devices import DeviceFactory, DeviceRecord
from linehost.sim.harness import load_paa
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from linehost.store.store import Store
from tests.waiting import eventually

TIMING = Timing(sync_interval=0.1, csr_timeout=3, result_timeout=3)
GOOD = get_personality("good")


@dataclass
class Line:
    tmp: Path
    pki: DevPki
    store: Store
    issuer: LocalIssuer
    factory: DeviceFactory
    records: list[DeviceRecord]

    def jig(self, name: str, devices: int, **kwargs: object) -> SimulatedJig:
        return SimulatedJig(
            name,
            self.tmp / "jigs",
            [GOOD] * devices,
            factory=self.factory,
            on_record=self.records.append,
            swap_seconds=0.05,
            **kwargs,  # type: ignore[arg-type]
        )

    def runner(self, name: str) -> JigRunner:
        return JigRunner(
            JigSpec("fault-line", "st1", name, str(self.tmp / "jigs" / name)),
            LineContext(Provisioner(self.issuer, self.store), TIMING),
        )

    def provisioned(self, jig: str) -> int:
        return sum(1 for r in self.records if r.jig == jig and r.stored_dac_serial)


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[Line]:
    (tmp_path / "jigs").mkdir()
    pki = init_dev(tmp_path / "pki")
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'faults.db'}",
        line="fault-line",
        result_payload=result_payload,
    )
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    yield Line(tmp_path, pki, store, issuer, DeviceFactory(paa=load_paa(pki.paa_cert)), [])
    await issuer.aclose()
    await store.close()


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    await eventually(predicate, within=within, what=what)


async def running(runners: list[JigRunner]) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(LineSupervisor(runners, shutdown_grace=2).run(stop))
    await asyncio.sleep(0)
    return stop, task


async def attempts(store: Store, jig: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from linehost.store.models import attempts as table

    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(table.c.outcome, table.c.detail)
            .where(table.c.jig == jig)
            .order_by(table.c.started_at)
        )
        return [(r.outcome, r.detail) for r in rows]


@pytest.mark.timeout(60)
async def test_missing_port_is_offline_until_it_appears(line: Line) -> None:
    runner = line.runner("j1")
    stop, task = await running([runner])
    await until(lambda: runner.status.last_detail is not None, 5, "the first open to fail")
    assert runner.status.state is JigState.OFFLINE
    assert "port not found" in (runner.status.last_detail or "")
    await asyncio.sleep(1.0)
    assert runner.status.state is JigState.OFFLINE  # retried with backoff, still honest
    async with line.jig("j1", 2) as jig:
        await asyncio.wait_for(jig.run(), 30)
        await until(lambda: runner.status.ok == 2, 5, "both results recorded")
    assert line.provisioned("j1") == 2
    stop.set()
    await task


@pytest.mark.timeout(60)
async def test_busy_port_is_offline_until_the_other_process_lets_go(line: Line) -> None:
    async with line.jig("j1", 1) as jig:
        assert jig.device_path is not None
        # Another process holds the port's exclusive lock (as a second line host would):
        # the same refusal a root-owned host gets where a non-root one would see EACCES.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys, time\n"
             f"fd = os.open({jig.device_path!r}, os.O_RDWR | os.O_NOCTTY)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            runner = line.runner("j1")
            stop, task = await running([runner])
            await until(lambda: runner.status.last_detail is not None, 5, "the open to fail")
            assert runner.status.state is JigState.OFFLINE
            assert "port is busy" in (runner.status.last_detail or "")
        finally:
            holder.kill()
            holder.wait()
        await asyncio.wait_for(jig.run(), 30)
        await until(lambda: runner.status.ok == 1, 5, "the result recorded")
    stop.set()
    await task
    assert line.provisioned("j1") == 1


@pytest.mark.timeout(60)
async def test_unopenable_path_is_offline_then_recovers(line: Line) -> None:
    path = line.tmp / "jigs" / "j1"
    path.mkdir()  # a directory where the port should be: open() fails even for root
    runner = line.runner("j1")
    stop, task = await running([runner])
    await until(lambda: runner.status.last_detail is not None, 5, "the open to fail")
    assert runner.status.state is JigState.OFFLINE
    path.rmdir()
    async with line.jig("j1", 1) as jig:
        await asyncio.wait_for(jig.run(), 30)
        await until(lambda: runner.status.ok == 1, 5, "the result recorded")
    stop.set()
    await task


@pytest.mark.timeout(90)
async def test_unplug_and_replug_under_load(line: Line) -> None:
    jigs = [line.jig(f"j{i}", 25) for i in range(1, 5)]
    for jig in jigs:
        jig.open()
    runners = [line.runner(jig.name) for jig in jigs]
    stop, task = await running(runners)
    runs = [asyncio.create_task(jig.run()) for jig in jigs]
    try:
        victim, runner = jigs[0], runners[0]
        await until(lambda: line.provisioned("j1") >= 3, 20, "j1 under way")
        seen: list[JigState] = []
        for _ in range(3):  # unplug, stay out, re-plug (a new pty behind the same link)
            victim.unplug()
            assert not victim.path.exists()
            await until(lambda: runner.status.state is JigState.OFFLINE, 5, "j1 offline")
            seen.append(runner.status.state)
            await asyncio.sleep(0.3)
            victim.replug()
            await until(lambda: runner.status.state is not JigState.OFFLINE, 15, "j1 back")
            before = line.provisioned("j1")
            await until(
                lambda n=before: line.provisioned("j1") > n,  # type: ignore[misc]
                15,
                "j1 provisioning again",
            )
        await asyncio.wait_for(asyncio.gather(*runs), 60)
    finally:
        for jig in jigs:
            jig.close()
        stop.set()
        await task
    assert seen == [JigState.OFFLINE] * 3
    for jig in jigs[1:]:
        assert line.provisioned(jig.name) == 25  # the siblings never noticed
    outcomes = {o for o, _ in await attempts(line.store, "j1")}
    assert outcomes <= {"provisioned", "disconnected"}


@pytest.mark.timeout(60)
async def test_port_that_never_answers_waits_for_a_device(line: Line) -> None:
    async with line.jig("j1", 1) as jig:  # the port is there, nobody in the jig
        runner = line.runner("j1")
        stop, task = await running([runner])
        await until(lambda: runner.status.state is JigState.WAITING_FOR_DEVICE, 5, "syncing")
        await asyncio.sleep(1.0)  # ten unanswered Init rounds
        assert runner.status.state is JigState.WAITING_FOR_DEVICE
        assert await attempts(line.store, "j1") == []  # an empty jig is not an attempt
        await asyncio.wait_for(jig.run(), 30)  # a device arrives
        await until(lambda: runner.status.ok == 1, 5, "the result recorded")
    stop.set()
    await task
    assert await attempts(line.store, "j1") == [("provisioned", "finish:000 provisioning done")]
