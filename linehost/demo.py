"""`linehost demo`: the whole line on this machine with no hardware and no set-up."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final, TextIO

from linehost.app import install_stop_signals, run_line
from linehost.config import load_config, parse_listen
from linehost.dashboard.app import Dashboard
from linehost.logs import configure_logging
from linehost.mqtt.embedded import EmbeddedBroker
from linehost.observers import Observer
from linehost.pki.devpki import init_dev
from linehost.protocol.outcomes import JigState, Outcome
from linehost.records import JigStatus
from linehost.sim.harness import SimulatedLine
from linehost.store.audit import Audit

DEVICES_PER_JIG: Final = 6
SWAP_SECONDS: Final = 0.8
TABLE_EVERY: Final = 3.0
DASHBOARD_LISTEN: Final = "127.0.0.1:8080"
#: Well-behaved firmware with the usual quirks of real boards.
EVERYDAY_MIX: Final = "good:8,noisy:1,crlf:1"
#: ...plus the faults a line meets: device errors, bad CSRs, silence, unplugs, clones.
FAULT_MIX: Final = (
    "good:6,noisy:2,crlf:1,slow:1,late_sync:1,finish_003:1,finish_FFFE:1,bad_csr_signature:1,"
    "p384:1,silent_after_delivery:1,unplug:1,cloned_key:1,stays:1"
)

CONFIG_TEMPLATE: Final = """\
# Written by `linehost demo`: a line of simulated jigs. Safe to edit and reuse with
#   linehost run --config {config}
[line]
name = "demo-line"
shutdown_grace = 5

[database]
url = "sqlite+aiosqlite:///linehost.db"

[pki]
pai_cert = "pki/pai.pem"
pai_key = "pki/pai.key"
paa_cert = "pki/paa.pem"
vid = "FFF1"
pid = "8000"

[protocol]
sync_interval = 0.25
csr_timeout = 10
result_timeout = 5

[mqtt]
url = "{mqtt_url}"{mqtt_note}
topic_prefix = "linehost"{mqtt_protocol}
drain_timeout = 3
{jigs}"""


class DemoDisplay(Observer):
    """Prints each finished attempt as it happens and a table of every jig now and then."""

    def __init__(self, out: TextIO = sys.stdout, expected: int | None = None) -> None:
        """Print on `out`; `expected` devices make each line show how far the run is."""
        self.out = out
        self.expected = expected
        self.jigs: dict[tuple[str, str], JigStatus] = {}
        self.outcomes: Counter[str] = Counter()
        self._seen: dict[tuple[str, str], int] = {}
        self._devices: set[str] = set()  # UIDs with a finished attempt (a retry is not progress)
        self._no_uid = 0  # attempts that ended before the device said its UID

    def jig_changed(self, status: JigStatus) -> None:
        """Called by every runner on every change."""
        key = (status.station, status.jig)
        self.jigs[key] = status
        done = status.ok + status.failed
        if done > self._seen.get(key, 0):
            self._seen[key] = done
            outcome = status.last_outcome.value if status.last_outcome else "?"
            self.outcomes[outcome] += 1
            if status.last_uid:
                self._devices.add(status.last_uid)
            else:
                self._no_uid += 1
            mark = "OK  " if status.last_outcome is Outcome.PROVISIONED else "FAIL"
            where = f"{status.station}/{status.jig:<4}"
            self._print(
                f"  {self._count()} {mark} {where} {status.last_uid or '-':<18}"
                f" {outcome:<20} {status.last_detail or ''}"
            )

    def _count(self) -> str:
        done = len(self._devices) + self._no_uid
        if self.expected is None:
            return f"[{done}]"
        return f"[{done:>{len(str(self.expected))}}/{self.expected}]"

    def table(self) -> None:
        """Every jig's state and counts."""
        self._print(f"  {'jig':<10} {'state':<20} {'uid':<18} {'ok':>4} {'failed':>6}")
        for (station, jig), s in sorted(self.jigs.items()):
            self._print(
                f"  {station + '/' + jig:<10} {s.state.value:<20} {s.uid or '-':<18}"
                f" {s.ok:>4} {s.failed:>6}"
            )

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


async def run_demo(
    *,
    workdir: Path,
    jigs: int = 4,
    devices: int | None = None,
    duration: float | None = None,
    faults: bool = False,
    out: TextIO = sys.stdout,
    mqtt_url: str | None = None,
    dashboard_listen: str = DASHBOARD_LISTEN,
    hold: bool = False,
) -> int:
    """Run the demo in `workdir` (absolute); return 0 when the audit verifies afterwards.

    Without `mqtt_url` an embedded broker runs for the demo; `hold` keeps the broker and the
    dashboard up after the line has finished, until Ctrl-C.
    """
    say = _Say(out)
    async with contextlib.AsyncExitStack() as stack:
        broker_url = mqtt_url
        if broker_url is None:
            broker = EmbeddedBroker()
            broker_url = await broker.start()
            stack.push_async_callback(broker.stop)
            say(f"embedded MQTT broker (amqtt, MQTT 3.1.1) on {broker_url}")
        else:
            say(f"MQTT broker {broker_url}")
        return await _run_demo(
            say, stack, workdir, jigs, devices, duration, faults, out, broker_url,
            embedded=mqtt_url is None, dashboard_listen=dashboard_listen, hold=hold,
        )  # fmt: skip
    raise AssertionError("unreachable")  # mypy: the async with above always returns


async def _run_demo(
    say: _Say,
    stack: contextlib.AsyncExitStack,
    workdir: Path,
    jigs: int,
    devices: int | None,
    duration: float | None,
    faults: bool,
    out: TextIO,
    broker_url: str,
    *,
    embedded: bool,
    dashboard_listen: str,
    hold: bool,
) -> int:
    total = devices if devices is not None else jigs * DEVICES_PER_JIG
    per_jig = math.ceil(total / jigs)
    pki_dir = workdir / "pki"
    names = [f"j{i}" for i in range(1, jigs + 1)]
    config_path = await asyncio.to_thread(_prepare, workdir, names, say, broker_url, embedded)
    sim = SimulatedLine(
        jigs,
        devices_per_jig=per_jig,
        mix=FAULT_MIX if faults else EVERYDAY_MIX,
        directory=workdir / "jigs",
        record=workdir / "devices.jsonl",
        paa=pki_dir / "paa.pem",
        swap_seconds=SWAP_SECONDS,
        jig_prefix="j",
    )
    config = load_config(config_path)
    say(
        f"simulated firmware on {jigs} pseudo-terminal jig(s) in {workdir / 'jigs'}, "
        f"{per_jig * jigs} device(s){' with faults' if faults else ''}"
    )
    say(f"line config {config_path}; database {workdir / 'linehost.db'} (SQLite)")
    say(f"log {workdir / 'linehost.log'}; Ctrl-C stops")
    assert config.mqtt is not None
    dashboard = Dashboard(config.mqtt)
    stack.push_async_callback(dashboard.close)
    dashboard_url = await _start_dashboard(dashboard, dashboard_listen)
    say(f"dashboard {dashboard_url}  <- open it in a browser")
    display = DemoDisplay(out, expected=per_jig * jigs)
    stop = asyncio.Event()
    install_stop_signals(stop)
    started = time.monotonic()
    async with sim:
        line = asyncio.create_task(run_line(config, stop, observer=display), name="demo-line")
        table = asyncio.create_task(_tables(display), name="demo-table")
        sim_done = asyncio.create_task(sim.wait(), name="demo-sim")
        stop_wait = asyncio.create_task(stop.wait(), name="demo-stop")
        waiters: set[asyncio.Future[Any]] = {line, sim_done, stop_wait}
        try:
            await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            if line.done():
                line.result()  # a start-up failure (bad PKI, database) surfaces here
            await asyncio.sleep(0.5)  # let the host record the last device's answer
            stop.set()
            await line
        finally:
            for task in (table, sim_done, stop_wait, line):
                task.cancel()
            await asyncio.gather(table, sim_done, stop_wait, line, return_exceptions=True)
    elapsed = time.monotonic() - started
    display.table()
    code = await _summary(say, display, config_path, config.database.url, elapsed)
    if hold:
        say(f"the dashboard stays up at {dashboard_url}; Ctrl-C quits")
        held = asyncio.Event()
        install_stop_signals(held)
        await held.wait()
    return code


def _prepare(workdir: Path, jig_names: list[str], say: _Say, mqtt_url: str, embedded: bool) -> Path:
    """Files the demo needs: folder, log, development PKI (first run only), line config."""
    workdir.mkdir(parents=True, exist_ok=True)
    configure_logging("info", "logfmt", file=workdir / "linehost.log")
    pki_dir = workdir / "pki"
    if not (pki_dir / "pai.pem").exists():
        init_dev(pki_dir)
        say(f"made a development PKI (PAA + PAI, VID FFF1 PID 8000) in {pki_dir}")
    else:
        say(f"using the development PKI in {pki_dir}")
    config_path = workdir / "line.toml"
    jig_tables = "".join(
        f'\n[[jigs]]\nname = "{name}"\nstation = "st{(i // 2) + 1}"\nport = "jigs/{name}"\n'
        for i, name in enumerate(jig_names)
    )
    note = "  # the demo's embedded broker: gone after the demo" if embedded else ""
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            config=config_path,
            jigs=jig_tables,
            mqtt_url=mqtt_url,
            mqtt_note=note,
            mqtt_protocol='\nprotocol = "3.1.1"' if embedded else "",
        )
    )
    return config_path


async def _start_dashboard(dashboard: Dashboard, listen: str) -> str:
    """Serve on `listen`; on a busy port, on any free one."""
    host, port = parse_listen(listen)
    try:
        return await dashboard.start(host, port)
    except OSError:
        return await dashboard.start(host, 0)


async def _tables(display: DemoDisplay) -> None:
    while True:
        await asyncio.sleep(TABLE_EVERY)
        display.table()


async def _summary(
    say: _Say, display: DemoDisplay, config_path: Path, url: str, elapsed: float
) -> int:
    ok = display.outcomes.get(Outcome.PROVISIONED.value, 0)
    total = sum(display.outcomes.values())
    rate = ok / elapsed * 3600 if elapsed > 0 else 0.0
    say(
        f"done in {elapsed:.1f} s: {ok} of {total} attempt(s) provisioned ({rate:.0f} devices/hour)"
    )
    for outcome, count in sorted(display.outcomes.items()):
        say(f"  {outcome:<20} {count}")
    offline = [s for s in display.jigs.values() if s.state is JigState.OFFLINE]
    if offline:
        say(f"  {len(offline)} jig(s) ended offline")
    audit = await Audit.open(url)
    try:
        problems = await audit.verify_audit_chain()
    finally:
        await audit.close()
    if problems:
        say(f"audit chain: {len(problems)} problem(s): {problems[0]}")
        return 1
    say(f"audit chain intact; try: linehost audit --config {config_path} export --format jsonl")
    return 0


class _Say:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, text: str) -> None:
        with contextlib.suppress(BrokenPipeError):
            print(f"linehost demo: {text}", file=self.out, flush=True)
