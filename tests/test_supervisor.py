"""LineSupervisor: a crashing jig restarts alone; shutdown is staged."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from linehost.line import supervisor as supervisor_module
from linehost.line.supervisor import LineSupervisor
from linehost.records import JigStatus
from tests.waiting import eventually


@dataclass
class Spec:
    station: str
    name: str


@dataclass
class FakeRunner:
    """Stands in for JigRunner: the supervisor only uses this surface."""

    name: str
    crashes: int = 0
    busy_for: float = 0.0  # an attempt that takes this long after stop was requested
    runs: int = 0
    ticks: int = 0
    aborted: str | None = None
    spec: Spec = field(init=False)
    status: JigStatus = field(init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _abort: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.spec = Spec("st1", self.name)
        self.status = JigStatus("l", "st1", self.name)

    @property
    def busy(self) -> bool:
        return self.busy_for > 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"{self.name} crashed")
        while not self._stop.is_set():
            self.ticks += 1
            await asyncio.sleep(0.01)
        if self.busy_for:
            try:
                async with asyncio.timeout(self.busy_for):
                    await self._abort.wait()
            except TimeoutError:
                pass
            self.busy_for = 0

    def request_stop(self) -> None:
        self._stop.set()

    def request_abort(self, detail: str) -> None:
        if self.busy:
            self.aborted = detail
        self._abort.set()


@pytest.fixture(autouse=True)
def fast_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "RESTART_MIN", 0.01)


async def test_a_crashing_jig_restarts_and_its_siblings_carry_on() -> None:
    flaky = FakeRunner("flaky", crashes=2)
    steady = FakeRunner("steady")
    stop = asyncio.Event()
    task = asyncio.create_task(LineSupervisor([flaky, steady], shutdown_grace=1).run(stop))
    # Restarts log a rich traceback each: on a loaded machine that takes a while.
    await eventually(lambda: flaky.runs >= 3, within=10, what="two restarts")
    ticks_before = steady.ticks
    await asyncio.sleep(0.1)
    assert steady.ticks > ticks_before  # never disturbed
    assert steady.runs == 1
    assert flaky.runs == 3  # two crashes, then running
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_shutdown_waits_for_running_attempts_within_the_grace() -> None:
    quick = FakeRunner("quick", busy_for=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(LineSupervisor([quick], shutdown_grace=2).run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert quick.aborted is None  # finished inside the grace period


async def test_attempts_still_running_after_the_grace_are_aborted() -> None:
    slow = FakeRunner("slow", busy_for=30)
    idle = FakeRunner("idle")
    stop = asyncio.Event()
    task = asyncio.create_task(LineSupervisor([slow, idle], shutdown_grace=0.2).run(stop))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert slow.aborted == "host shutdown: grace period over"
    assert idle.aborted is None
    assert loop.time() - started < 2


class VirtualClock:
    """The supervisor's injected sleep: records each delay and advances virtual time at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let the siblings run, as a real wait would


async def test_restarts_back_off_doubling_with_jitter_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor_module, "RESTART_MIN", 1.0)
    monkeypatch.setattr(supervisor_module, "RESTART_MAX", 8.0)
    flaky = FakeRunner("flaky", crashes=7)
    steady = FakeRunner("steady")
    clock = VirtualClock()
    stop = asyncio.Event()
    supervisor = LineSupervisor([flaky, steady], shutdown_grace=1, sleep=clock.sleep)
    task = asyncio.create_task(supervisor.run(stop))
    await eventually(lambda: flaky.runs >= 8, within=10, what="seven restarts")
    stop.set()
    await asyncio.wait_for(task, 5)
    expected = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert len(clock.delays) == len(expected)  # one wait per crash, none for the sibling
    for delay, base in zip(clock.delays, expected, strict=True):
        assert base * 0.8 <= delay <= base * 1.2, clock.delays
    assert clock.now >= 0.8 * sum(expected)  # 39 s of restarts took no real time
    assert steady.runs == 1
