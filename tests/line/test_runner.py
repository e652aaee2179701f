"""JigRunner with simulated jigs on real ptys: what its observer hears, device by device."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from linehost.line.provisioning import Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.steps import JigSteps, StepCommand
from linehost.line.supervisor import LineSupervisor
from linehost.mqtt.payloads import result_payload
from linehost.observers import DB_ASSIGN, DB_END_ATTEMPT, Observer, fan_out
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.host import Timing
from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome
from linehost.records import AttemptEnd, AttemptStart, JigStatus
from linehost.sim.devices import DeviceRecord
from linehost.sim.harness import SimulatedLine
from linehost.store.store import Store

TIMING = Timing(sync_interval=0.1, csr_timeout=5, result_timeout=5)


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev(tmp_path_factory.mktemp("devpki") / "pki")


class Recorder(Observer):
    """Keeps every event, per attempt, as the runner and the provisioner tell them."""

    def __init__(self) -> None:
        self.events: dict[str, list[str]] = defaultdict(list)
        self.ends: dict[str, AttemptEnd] = {}
        self.latencies: list[float] = []
        self.states: list[JigState] = []

    def jig_changed(self, status: JigStatus) -> None:
        self.states.append(status.state)

    def attempt_started(self, start: AttemptStart) -> None:
        self.events[start.attempt_id].append("started")

    def key_taken_up(self, start: AttemptStart, seconds: float) -> None:
        self.events[start.attempt_id].append("key_taken_up")
        self.latencies.append(seconds)

    def issuer_answered(self, start: AttemptStart, seconds: float) -> None:
        self.events[start.attempt_id].append("issuer")
        self.latencies.append(seconds)

    def database_committed(self, start: AttemptStart, operation: str, seconds: float) -> None:
        self.events[start.attempt_id].append(operation)
        self.latencies.append(seconds)

    def dac_written(self, start: AttemptStart, seconds: float) -> None:
        self.events[start.attempt_id].append("dac_written")
        self.latencies.append(seconds)

    def result_committed(self, start: AttemptStart, seconds: float) -> None:
        self.events[start.attempt_id].append("result_committed")
        self.latencies.append(seconds)

    def attempt_ended(self, start: AttemptStart, end: AttemptEnd) -> None:
        self.events[start.attempt_id].append("ended")
        self.ends[start.attempt_id] = end


async def run_line(
    tmp_path: Path, dev_pki: DevPki, observer: Observer, *, mix: str, devices: int
) -> JigRunner:
    """One jig with `devices` simulated devices of `mix`, driven until the simulator is done."""
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'line.db'}", line="l1", result_payload=result_payload
    )
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    try:
        async with SimulatedLine(
            1,
            devices_per_jig=devices,
            mix=mix,
            directory=tmp_path / "jigs",
            paa=dev_pki.paa_cert,
            swap_seconds=0.05,
            seed=3,
        ) as sim:
            (name, path), *_ = sim.ports.items()
            context = LineContext(Provisioner(issuer, store), TIMING, observer)
            runner = JigRunner(JigSpec("l1", "st1", name, path), context)
            stop = asyncio.Event()
            line = asyncio.create_task(LineSupervisor([runner], shutdown_grace=3).run(stop))
            await asyncio.wait_for(sim.wait(), 60)
            await asyncio.sleep(0.3)
            stop.set()
            await line
    finally:
        await issuer.aclose()
        await store.close()
    return runner


@pytest.mark.timeout(90)
async def test_each_provisioned_device_is_told_to_every_observer_in_order(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    first, second = Recorder(), Recorder()
    runner = await run_line(
        tmp_path, dev_pki, fan_out([first, None, second]), mix="good", devices=3
    )
    assert first.events == second.events  # the fan-out tells both, in the same order
    assert len(first.events) == 3
    for attempt_id, events in first.events.items():
        assert events == [
            "started",
            "key_taken_up",  # the CSR read, before it is checked
            "issuer",
            DB_ASSIGN,  # committed before the DAC is written
            "dac_written",
            DB_END_ATTEMPT,
            "result_committed",
            "ended",
        ], attempt_id
        end = first.ends[attempt_id]
        assert end.outcome is Outcome.PROVISIONED
        assert end.assignment_status is AssignmentStatus.CONFIRMED
    assert all(0 <= seconds < 10 for seconds in first.latencies)
    assert JigState.PROVISIONING in first.states
    assert first.states[-1] is JigState.STOPPED
    assert (runner.status.ok, runner.status.failed) == (3, 0)
    assert not runner.busy


@pytest.mark.timeout(90)
async def test_a_refused_key_ends_the_attempt_without_a_dac_written(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    seen = Recorder()
    runner = await run_line(tmp_path, dev_pki, seen, mix="p384", devices=1)
    [(attempt_id, events)] = seen.events.items()
    # Taken up and refused: no issuer, no assignment, no DAC.
    assert events == ["started", "key_taken_up", DB_END_ATTEMPT, "ended"]
    end = seen.ends[attempt_id]
    assert end.outcome is Outcome.CSR_REJECTED
    assert end.assignment_id is None
    assert (runner.status.ok, runner.status.failed) == (0, 1)
    assert runner.status.last_outcome is Outcome.CSR_REJECTED


#: How long each attempt's end record takes in the tests below (a slow database).
SLOW_END = 0.6


async def swap_timeline(
    tmp_path: Path, dev_pki: DevPki, steps: JigSteps | None
) -> tuple[list[float], list[DeviceRecord]]:
    """Two devices on one jig with an instant swap and a slow end record: the wall times at
    which each end was committed, and the devices' records."""
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'line.db'}", line="l1", result_payload=result_payload
    )
    committed: list[float] = []
    both_recorded = asyncio.Event()
    end_attempt = store.end_attempt

    async def slow_end(start: AttemptStart, end: AttemptEnd) -> None:
        await asyncio.sleep(SLOW_END)
        await end_attempt(start, end)
        committed.append(time.time())
        if len(committed) == 2:
            both_recorded.set()

    store.end_attempt = slow_end  # type: ignore[method-assign]
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    try:
        async with SimulatedLine(
            1, devices_per_jig=2, directory=tmp_path / "jigs", paa=dev_pki.paa_cert,
            swap_seconds=0.0, seed=5,
        ) as sim:  # fmt: skip
            (name, path), *_ = sim.ports.items()
            context = LineContext(Provisioner(issuer, store), TIMING, Observer())
            runner = JigRunner(JigSpec("l1", "st1", name, path), context, steps=steps)
            stop = asyncio.Event()
            line = asyncio.create_task(LineSupervisor([runner], shutdown_grace=3).run(stop))
            await asyncio.wait_for(sim.wait(), 60)
            await asyncio.wait_for(both_recorded.wait(), 30)
            stop.set()
            await line
            records = sorted(sim.records, key=lambda r: r.index)
    finally:
        await issuer.aclose()
        await store.close()
    assert [r.stored_dac_serial is not None for r in records] == [True, True]
    return committed, records


def _wall(iso: str | None) -> float:
    assert iso is not None
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.timeout(90)
async def test_the_next_device_syncs_while_the_last_ones_end_is_recorded(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    """The finished device needs nothing more: its record (a commit) does not stand between
    two devices when the swap is instant."""
    committed, (_, second) = await swap_timeline(tmp_path, dev_pki, None)
    assert _wall(second.first_sync_at) < committed[0]
    assert committed[0] - _wall(second.first_sync_at) > SLOW_END / 2


@pytest.mark.timeout(90)
async def test_with_a_post_step_the_next_device_waits_for_the_record(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    """A post step may still work on the device in the jig: nothing is sent before it and the
    record are done."""
    post = StepCommand("post", (sys.executable, "-c", "pass"), timeout=10)
    committed, (_, second) = await swap_timeline(tmp_path, dev_pki, JigSteps(post=post))
    assert _wall(second.first_sync_at) > committed[0] - 0.001  # the record has whole ms
