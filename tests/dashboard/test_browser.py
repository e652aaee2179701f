"""The dashboard in a real headless Chromium: tiles appear and follow a line of simulated jigs."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from linehost.config import MqttSection
from linehost.dashboard.app import Dashboard
from tests.mqtt.broker import no_broker
from tests.mqtt.line import running_line

pytestmark = pytest.mark.mqtt

CHROMIUM = os.environ.get("LINEHOST_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: Set to a path (e.g. docs/dashboard.png) to keep the screenshot taken mid-run.
SCREENSHOT_TO = os.environ.get("LINEHOST_DASHBOARD_SCREENSHOT")

# Every tile's states, as the browser saw them (the page itself knows nothing of tests).
RECORD_STATES = """
window.seen = {};
new MutationObserver(() => {
  for (const t of document.querySelectorAll('.tile')) {
    const counts = [".ok", ".failed"].map((c) => t.querySelector(c).textContent).join(" ");
    (window.seen[t.dataset.key] ||= new Set()).add(t.dataset.state + " " + counts);
  }
}).observe(document.body, {subtree: true, childList: true, attributes: true});
"""


def _browser_or_skip() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        no_broker("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        no_broker(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return async_playwright


@pytest.mark.timeout(120)
async def test_tiles_appear_and_change_state_as_devices_are_provisioned(
    broker_url: str, prefix: str, tmp_path: Path
) -> None:
    async_playwright = _browser_or_skip()
    dashboard = Dashboard(MqttSection(url=broker_url, topic_prefix=prefix))
    url = await dashboard.start("127.0.0.1", 0)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1600, "height": 900})
            await page.goto(url + "#/line/line-7")  # the line view
            await page.evaluate(RECORD_STATES)
            mix = "slow:4,good:2,finish_003:1,bad_csr_signature:1"
            async with running_line(
                tmp_path, broker_url, prefix, line="line-7", jigs=6, devices_per_jig=5,
                mix=mix, swap_seconds=0.6,
            ) as run:  # fmt: skip
                await page.wait_for_function(
                    "document.querySelectorAll('.tile').length === 6", timeout=20_000
                )
                stations = await page.locator(".station h3").all_inner_texts()
                assert stations == ["st1", "st2", "st3"]
                some_ok = (
                    "[...document.querySelectorAll('.tile .ok')].some(e => e.textContent !== '✔ 0')"
                )
                await page.wait_for_function(some_ok, timeout=30_000)
                badge = await page.locator("section.line .badge.host").inner_text()
                assert badge.startswith("host online")
                await asyncio.sleep(1.5)
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                if SCREENSHOT_TO:
                    shutil.copyfile(shot, SCREENSHOT_TO)
                await asyncio.wait_for(run.sim.wait(), 60)
                await asyncio.sleep(0.5)
            seen = await page.evaluate(
                "Object.fromEntries(Object.entries(window.seen).map(([k, v]) => [k, [...v]]))"
            )
            assert len(seen) == 6
            # Updates are coalesced per jig (the latest state in each 0.1 s wins), so a short
            # state may never reach the page; every tile still changed several times.
            for key, views in seen.items():
                assert len(views) >= 3, (key, views)  # state and counts moved, live
            shown = {view.split()[0] for views in seen.values() for view in views}
            assert {"waiting_for_device", "provisioning"} <= shown, seen
            # the staged stop: every tile ends stopped, the host offline, without a reload
            await page.wait_for_function(
                "[...document.querySelectorAll('.tile')].every(t => t.dataset.state === 'stopped')",
                timeout=15_000,
            )
            await page.wait_for_function(
                "document.querySelector('.badge.host').textContent === 'host offline'",
                timeout=10_000,
            )
            oks = await page.locator(".tile .ok").all_inner_texts()
            fails = await page.locator(".tile .failed").all_inner_texts()
            done = sum(int(t.split()[1]) for t in oks + fails)
            assert done == 30
            rate = await page.locator(".figure.rate b").inner_text()
            assert rate.replace(",", "").isdigit()
            fpy = await page.locator(".figure.fpy b").inner_text()
            assert fpy.endswith("%")
            await browser.close()
    finally:
        await dashboard.close()
