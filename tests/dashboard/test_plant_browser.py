"""The plant view in a real headless Chromium: two line hosts publishing to the real Mosquitto,
their rows live, the shift chart drawn, an alarm raised by a jig failing three in a row and
cleared when it recovers, the work-order bars moving, and a click into one line's view."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from linehost.app import run_line
from linehost.config import MqttSection, load_config
from linehost.dashboard import board
from linehost.dashboard.app import Dashboard
from linehost.pki.devpki import init_dev
from linehost.sim.devices import DeviceFactory
from linehost.sim.harness import load_paa
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from tests.dashboard.test_browser import CHROMIUM_ARGS, _browser_or_skip
from tests.e2e.harness import write_config
from tests.mqtt.subscriber import Subscriber
from tests.mqtt.test_asyncapi import DOC_PATH, validator

pytestmark = pytest.mark.mqtt

CHROMIUM = os.environ.get("LINEHOST_TEST_CHROMIUM", "/usr/bin/chromium")
#: Set to a folder (e.g. docs) to keep plant.png, line.png and alarm.png.
SCREENSHOTS_TO = os.environ.get("LINEHOST_PLANT_SCREENSHOTS")
BUCKET = 5.0  # seconds per chart point, so a one-minute run draws a curve

# What the page showed over time (the page itself knows nothing of tests).
RECORD = """
window.woSeen = {}; window.alarmsSeen = [];
new MutationObserver(() => {
  for (const cell of document.querySelectorAll('#plant-table tr.row .wo')) {
    if (cell.dataset.done === undefined) continue;
    const line = cell.closest('tr').dataset.line;
    const seen = (window.woSeen[line] ||= []);
    const done = Number(cell.dataset.done);
    if (seen[seen.length - 1] !== done) seen.push(done);
  }
  for (const a of document.querySelectorAll('#alarms .alarm')) {
    const text = [a.dataset.line, a.dataset.kind, a.dataset.subject].join(' ');
    if (!window.alarmsSeen.includes(text)) window.alarmsSeen.push(text);
  }
}).observe(document.body, {subtree: true, childList: true, attributes: true});
"""
FAILING_ALARM = '#alarms .alarm[data-line="line-a"][data-kind="jig_failing"][data-subject="st1/j1"]'
CANVAS_INKED = """() => {
  const canvas = document.querySelector('#chart canvas');
  if (!canvas) return 0;
  const {width, height} = canvas;
  const pixels = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  let inked = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked++;
  return inked;
}"""


@contextlib.asynccontextmanager
async def line_host(
    root: Path,
    pki: Path,
    broker_url: str,
    prefix: str,
    name: str,
    plans: dict[str, tuple[list[str], float]],  # jig -> (personalities, swap seconds)
    work_order: tuple[str, int],
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Simulated jigs with a fixed device plan each, and `run_line` for them (staged stop)."""
    folder = root / name
    factory = DeviceFactory(paa=load_paa(pki / "paa.pem"), seed=len(name))
    jigs = [
        SimulatedJig(jig, folder / "jigs", [get_personality(p) for p in plan], swap_seconds=swap,
                     factory=factory)
        for jig, (plan, swap) in plans.items()
    ]  # fmt: skip
    (folder / "jigs").mkdir(parents=True)
    for jig in jigs:
        jig.open()
    extra = (
        f'\n[mqtt]\nurl = "{broker_url}"\ntopic_prefix = "{prefix}"\ndrain_timeout = 5\n'
        f'client_id = "{prefix}-{name}"\n'  # never shared with a test running at once (xdist)
        f'[work_order]\nid = "{work_order[0]}"\nquantity = {work_order[1]}\n'
    )
    ports = {jig.name: str(jig.path) for jig in jigs}
    config = load_config(write_config(folder / "line.toml", pki=pki, ports=ports, line=name,
                                      extra=extra))  # fmt: skip
    stop = asyncio.Event()
    host = asyncio.create_task(run_line(config, stop))
    devices = [asyncio.create_task(jig.run(), name=f"{name}-{jig.name}") for jig in jigs]
    try:
        yield devices
    finally:
        stop.set()
        await asyncio.wait_for(host, 30)
        for task in devices:
            task.cancel()
        for jig in jigs:
            jig.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_plant_view_with_two_line_hosts_alarm_chart_and_work_orders(
    broker_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async_playwright = _browser_or_skip()
    monkeypatch.setattr(board, "BUCKET", BUCKET)
    pki = tmp_path / "pki"
    await asyncio.to_thread(init_dev, pki)
    alarms_topic = f"{prefix}/line-a/alarms"
    facts = [f"{prefix}/+/workorder", f"{prefix}/+/host/outbox"]
    sub = Subscriber(broker_url, [alarms_topic, *facts], f"t-{secrets.token_hex(4)}").start()
    dashboard = Dashboard(MqttSection(url=broker_url, topic_prefix=prefix))
    url = await dashboard.start("127.0.0.1", 0)
    shots = tmp_path / "shots"
    shots.mkdir()
    good = ["good"] * 10
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            await page.goto(url)
            await page.evaluate(RECORD)
            # line-a j1: one good device, three that fail, then it recovers; a slow swap keeps
            # the alarm up for a few seconds
            failing = ["good", "finish_003", "finish_003", "finish_003", "good", "good"]
            async with contextlib.AsyncExitStack() as lines:
                a_jigs = await lines.enter_async_context(
                    line_host(tmp_path, pki, broker_url, prefix, "line-a",
                              {"j1": (failing, 3.0), "j2": (good, 1.2)}, ("WO-A", 40))
                )  # fmt: skip
                # one host at a time: Alembic's migration context is global to the process
                await page.wait_for_selector(
                    'tr.row[data-line="line-a"] .hoststate.online', timeout=30_000
                )
                b_jigs = await lines.enter_async_context(
                    line_host(tmp_path, pki, broker_url, prefix, "line-b",
                              {"j1": (good, 1.0), "j2": (good, 1.4)}, ("WO-B", 30))
                )  # fmt: skip
                # both rows live
                await page.wait_for_function(
                    "[...document.querySelectorAll('#plant-table tr.row .hoststate')]"
                    ".filter(e => e.textContent === 'online').length === 2",
                    timeout=30_000,
                )
                rows = await page.locator("#plant-table tr.row").evaluate_all(
                    "rows => rows.map(r => r.dataset.line)"
                )
                assert rows == ["line-a", "line-b"]
                # the alarm, on the page and retained on the broker
                await page.wait_for_selector(FAILING_ALARM, timeout=60_000)
                text = await page.locator(FAILING_ALARM).inner_text()
                assert "3 failures in a row" in text, text
                assert await page.locator('tr.row.alarmed[data-line="line-a"]').count() == 1
                await page.screenshot(path=str(shots / "alarm.png"), full_page=True)
                # ... cleared when the jig provisions again
                await page.wait_for_selector(FAILING_ALARM, state="detached", timeout=30_000)
                # the chart, drawn from the results of both lines
                await page.wait_for_function(
                    "Number(document.getElementById('chart').dataset.points) >= 3",
                    timeout=30_000,
                )
                await page.wait_for_function(
                    "document.getElementById('chart').dataset.lines === 'line-a,line-b'",
                    timeout=10_000,
                )
                assert await page.evaluate(CANVAS_INKED) > 500
                # a click into today's line view
                await page.locator('#plant-table tr.row[data-line="line-a"] td.rate').click()
                await page.wait_for_function("location.hash === '#/line/line-a'")
                assert await page.locator('section.line[data-line="line-a"]').is_visible()
                assert not await page.locator('section.line[data-line="line-b"]').is_visible()
                assert not await page.locator("#plant").is_visible()
                assert await page.locator('section.line[data-line="line-a"] .tile').count() == 2
                await asyncio.sleep(1.0)
                await page.screenshot(path=str(shots / "line.png"), full_page=True)
                await page.go_back()
                await page.wait_for_selector("#plant", state="visible")
                await asyncio.wait_for(asyncio.gather(*a_jigs, *b_jigs), 90)
                await asyncio.sleep(5.5)  # one more chart refresh
                await page.screenshot(path=str(shots / "plant.png"), full_page=True)
            # the last work-order figures are published as the hosts stop
            await page.wait_for_function(
                "document.querySelector('tr.row[data-line=\"line-a\"] .wo').dataset.done"
                " === '13' && document.querySelector('tr.row[data-line=\"line-b\"] .wo')"
                ".dataset.done === '20'",
                timeout=15_000,
            )
            seen = await page.evaluate("window.woSeen")
            for line, done in (("line-a", 13), ("line-b", 20)):
                values = seen[line]
                assert len(values) >= 3, (line, values)  # the bar moved, live
                assert values == sorted(values), (line, values)
                assert values[-1] == done, (line, values)
            width = await page.locator('tr.row[data-line="line-b"] .wo .fill').evaluate(
                "e => e.style.width"
            )
            assert width == f"{100 * 20 / 30:.1f}%"
            remaining = await page.locator('tr.row[data-line="line-b"] .wo .text').inner_text()
            assert remaining == "WO-B: 20 / 30 · 10 remaining"
            alarms_seen = await page.evaluate("window.alarmsSeen")
            assert alarms_seen == ["line-a jig_failing st1/j1"], alarms_seen
            worst = await page.locator('tr.row[data-line="line-a"] .worst').inner_text()
            assert worst.startswith("st1/j1 ✘3/6"), worst
            await browser.close()
        received = sub.snapshot()
        doc = yaml.safe_load(DOC_PATH.read_text())
        schemas = {"workorder": "WorkOrderProgress", "outbox": "OutboxDepth"}
        schemas["alarms"] = "LineAlarms"
        for m in received:
            validator(doc, schemas[m.topic.rsplit("/", 1)[1]]).validate(m.json())
        last_wo = {m.json()["line"]: m.json() for m in received if m.topic.endswith("workorder")}
        assert (last_wo["line-a"]["done"], last_wo["line-a"]["remaining"]) == (13, 27)
        assert (last_wo["line-b"]["done"], last_wo["line-b"]["quantity"]) == (20, 30)
        assert {m.topic for m in received if m.topic.endswith("/outbox")} == {
            f"{prefix}/line-a/host/outbox",
            f"{prefix}/line-b/host/outbox",
        }
        received = [m for m in received if m.topic == alarms_topic]
        published = [m.json() for m in received]
        raised = [p for p in published if p["active"]]
        assert raised, published
        assert raised[0]["active"][0]["kind"] == "jig_failing"
        assert raised[0]["active"][0]["subject"] == "st1/j1"
        assert raised[0]["active"][0]["count"] == 3
        assert published[-1]["active"] == []  # cleared, and retained as such
    finally:
        sub.stop()
        await dashboard.close()
    if SCREENSHOTS_TO:
        for name in ("plant.png", "line.png", "alarm.png"):
            shutil.copyfile(shots / name, Path(SCREENSHOTS_TO) / name)
