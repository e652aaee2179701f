"""A short line on simulated jigs, run in-process with `[mqtt]` pointing at a test broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from linehost.app import run_line
from linehost.config import LineConfig, load_config
from linehost.pki.devpki import init_dev
from linehost.sim.harness import SimulatedLine
from tests.e2e.harness import write_config


@dataclass
class RunningLine:
    config: LineConfig
    sim: SimulatedLine
    stop: asyncio.Event
    task: asyncio.Task[object]


@contextlib.asynccontextmanager
async def running_line(
    tmp_path: Path,
    mqtt_url: str,
    prefix: str,
    *,
    line: str = "l1",
    jigs: int = 4,
    devices_per_jig: int = 3,
    mix: str = "good",
    swap_seconds: float = 0.3,
) -> AsyncIterator[RunningLine]:
    """Start the simulator and `run_line`; on exit stop the line (staged) and the simulator."""
    pki = tmp_path / "pki"
    if not (pki / "pai.pem").exists():
        await asyncio.to_thread(init_dev, pki)
    sim = SimulatedLine(
        jigs,
        devices_per_jig=devices_per_jig,
        mix=mix,
        directory=tmp_path / "jigs",
        paa=pki / "paa.pem",
        swap_seconds=swap_seconds,
        seed=5,
    )
    async with sim:
        # the client id of this test alone: the default one (`linehost-host-{hostname}-{line}`)
        # is the same in every test of line `l1`, and tests running at once on the shared
        # broker (pytest-xdist workers) would take each other's session over
        mqtt = (
            f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "{prefix}"\ndrain_timeout = 5\n'
            f'client_id = "{prefix}-host"\n'
        )
        path = write_config(tmp_path / "line.toml", pki=pki, ports=sim.ports, line=line,
                            extra="\n" + mqtt)  # fmt: skip
        config = load_config(path)
        stop = asyncio.Event()
        task: asyncio.Task[object] = asyncio.create_task(run_line(config, stop))
        try:
            yield RunningLine(config, sim, stop, task)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
