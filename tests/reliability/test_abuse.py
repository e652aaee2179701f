"""Abuse: one jig floods the host with junk and a log storm; the host stays bounded and fair.

The host is the real `linehost run` in its own process (its memory is measured from /proc);
the jigs are simulated in this process so one of them can be given an exact plan of abuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from linehost.sim.devices import DeviceFactory, DeviceRecord
from linehost.sim.harness import load_paa
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from tests.e2e.harness import HostRun, jsonl, linehost, write_config
from tests.waiting import eventually_blocking

GOOD_JIGS = 6
GOOD_DEVICES = 30
#: A log storm: lines per burst, bursts per second (5,000 lines/s).
STORM_LINES = 100
STORM_PERIOD = 0.02
#: The host's peak RSS may grow by at most this much over the same line without the abuser.
MEMORY_BOUND_MB = 25.0
#: Good jigs may take at most this factor longer than without the abuser (a shared 2-core box).
SLOWDOWN_BOUND = 1.5
#: Baseline/abused pairs run at most this often. Other tests' processes only ever add to a
#: run's wall time, so the fastest run of each kind is the one to compare; a host that lets
#: the abuser starve the line is slow in every pair and still fails.
MAX_PAIRS = 3


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def run_line(work: Path, pki: Path, *, abuser: bool) -> dict[str, Any]:
    """Run GOOD_JIGS good jigs (and the abuser); return timings, records and host memory."""
    (work / "jigs").mkdir(parents=True)
    factory = DeviceFactory(paa=load_paa(pki / "paa.pem"), seed=11)
    records: list[DeviceRecord] = []
    good = get_personality("good")
    plans = {f"j{i}": [good] * GOOD_DEVICES for i in range(1, GOOD_JIGS + 1)}
    if abuser:
        plans["j99"] = [get_personality(n) for n in ("flood", "finish_junk", "garbage")] + [
            good
        ] * 3
    jigs = [
        SimulatedJig(name, work / "jigs", plan, swap_seconds=0.02, factory=factory,
                     on_record=records.append)
        for name, plan in plans.items()
    ]  # fmt: skip
    for jig in jigs:
        jig.open()
    # A short probe interval, so the good jigs' time is the host's work: at 0.2 s the probe's
    # phase against the 0.02 s swaps alone spread the same run over 3.5-6.4 s.
    config = write_config(
        work / "line.toml",
        pki=pki,
        ports={jig.name: str(jig.path) for jig in jigs},
        protocol="sync_interval = 0.05\ncsr_timeout = 2\nresult_timeout = 3\n",
    )
    host = HostRun(config).start()
    assert host.proc is not None
    storm: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(wait_log, host, "line_started")
        started = time.monotonic()
        tasks = {jig.name: asyncio.create_task(jig.run()) for jig in jigs}
        if abuser:
            storm = asyncio.create_task(log_storm(jigs[-1]))
        done_at: dict[str, float] = {}
        for name, task in tasks.items():
            await asyncio.wait_for(task, 120)
            done_at[name] = time.monotonic() - started
        await asyncio.sleep(1.0)  # the host reads the last finish before the jigs go
        rss = peak_rss_mb(host.proc.pid)
    finally:
        if storm is not None:
            storm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await storm
        for jig in jigs:
            jig.close()
        code = await asyncio.to_thread(host.stop)
    assert code == 0, host.output()[-3000:]
    assert "Traceback" not in host.output()
    good_time = max(t for name, t in done_at.items() if name != "j99")
    return {"config": config, "records": records, "rss": rss, "good_time": good_time}


def within_slowdown_bound(baseline_time: float, abused_time: float) -> bool:
    return abused_time <= baseline_time * SLOWDOWN_BOUND + 1.0


def wait_log(host: HostRun, text: str, timeout: float = 30) -> None:
    eventually_blocking(
        lambda: text in host.output(), within=timeout, what=lambda: host.output()[-3000:]
    )


async def log_storm(jig: SimulatedJig) -> None:
    """Thousands of firmware log lines per second, whatever the device is doing."""
    n = 0
    while True:
        burst = b"".join(
            b"I (%d) app: heap free %d, \xff\xfe not utf-8\n" % (n + i, 12345) for i in range(100)
        )
        jig.inject(burst)
        n += STORM_LINES
        await asyncio.sleep(STORM_PERIOD)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_an_abusive_jig_neither_bloats_nor_slows_the_line(
    tmp_path: Path, dev_pki: Path
) -> None:
    baselines: list[dict[str, Any]] = []
    abuses: list[dict[str, Any]] = []
    for pair in range(MAX_PAIRS):
        baselines.append(await run_line(tmp_path / f"baseline{pair}", dev_pki, abuser=False))
        abuses.append(await run_line(tmp_path / f"abused{pair}", dev_pki, abuser=True))
        baseline_time = min(r["good_time"] for r in baselines)
        abused_time = min(r["good_time"] for r in abuses)
        if within_slowdown_bound(baseline_time, abused_time):
            break
    baseline, abused = baselines[0], abuses[0]

    # Memory stays bounded: the framer holds at most one 1 KiB line, transcripts are capped.
    for base_run, abused_run in zip(baselines, abuses, strict=True):
        growth = abused_run["rss"] - base_run["rss"]
        assert growth <= MEMORY_BOUND_MB, (base_run["rss"], abused_run["rss"])
    # The other jigs did not slow down measurably.
    assert within_slowdown_bound(baseline_time, abused_time), (
        [r["good_time"] for r in baselines],
        [r["good_time"] for r in abuses],
    )
    good_ok = [r for r in abused["records"] if r.jig != "j99" and r.stored_dac_serial]
    assert len(good_ok) == GOOD_JIGS * GOOD_DEVICES

    # The abusive jig's faults were recorded as such, and it went on to provision good devices.
    attempts = jsonl(
        linehost("audit", "--config", abused["config"], "attempts", "--format", "jsonl").stdout
    )
    mine = sorted((a for a in attempts if a["jig"] == "j99"), key=lambda a: a["started_at"])
    outcomes = [(a["outcome"], a["detail"]) for a in mine]
    assert outcomes[0] == ("protocol_error", "CSR PEM block never closed"), outcomes
    assert outcomes[1][0] == "protocol_error", outcomes
    assert "malformed finish line" in outcomes[1][1], outcomes
    assert [o for o, _ in outcomes[2:]] == ["provisioned"] * 4, outcomes
    abuser_ok = [r for r in abused["records"] if r.jig == "j99" and r.stored_dac_serial]
    assert len(abuser_ok) == 4
    print(
        f"abuse: peak RSS {baseline['rss']:.1f} -> {abused['rss']:.1f} MB, "
        f"good jigs {baseline_time:.2f} -> {abused_time:.2f} s (fastest of {len(abuses)} pairs)"
    )
