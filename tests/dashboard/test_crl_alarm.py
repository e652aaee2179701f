"""The CRL alarm on the real Mosquitto: a line host with `[pki] crl_dir` publishes its CRL on
`host/crl`; the dashboard raises `crl_next_update` (retained on `alarms`, on the page) when its
nextUpdate is within `crl_margin`, and clears it when the host publishes a fresher CRL."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from linehost.app import run_line
from linehost.config import DashboardSection, MqttSection, load_config
from linehost.config.outputs import DashboardAlarmsSection
from linehost.dashboard.alarms import CRL_NEXT_UPDATE
from linehost.dashboard.app import Dashboard
from linehost.pki.devpki import init_dev
from linehost.sim.devices import DeviceFactory
from linehost.sim.harness import load_paa
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from tests.dashboard.test_browser import CHROMIUM_ARGS, _browser_or_skip
from tests.dashboard.test_plant_browser import CHROMIUM
from tests.e2e.harness import write_config
from tests.mqtt.subscriber import Received, Subscriber
from tests.mqtt.test_asyncapi import DOC_PATH, validator

pytestmark = pytest.mark.mqtt

LINE = "line-c"
CRL_ALARM = f'#alarms .alarm[data-line="{LINE}"][data-kind="crl_next_update"][data-subject="host"]'


@contextlib.asynccontextmanager
async def crl_host(
    root: Path, pki: Path, broker_url: str, prefix: str, *, next_update: str, margin: str
) -> AsyncIterator[None]:
    """`run_line` with one simulated jig (two good devices) and `[pki] crl_dir`."""
    folder = root / f"run-{secrets.token_hex(2)}"
    (folder / "jigs").mkdir(parents=True)
    factory = DeviceFactory(paa=load_paa(pki / "paa.pem"), seed=3)
    jig = SimulatedJig("j1", folder / "jigs", [get_personality("good")] * 2, swap_seconds=0.5,
                       factory=factory)  # fmt: skip
    jig.open()
    extra = (
        f'\n[mqtt]\nurl = "{broker_url}"\ntopic_prefix = "{prefix}"\ndrain_timeout = 5\n'
        f'client_id = "{prefix}-host"\n'  # never shared with a test running at once (xdist)
    )
    path = write_config(root / "line.toml", pki=pki, ports={"j1": str(jig.path)}, line=LINE,
                        database_url=f"sqlite+aiosqlite:///{root / 'line.db'}",
                        extra=extra)  # fmt: skip
    path.write_text(path.read_text().replace(
        'pid = "8000"\n',
        f'pid = "8000"\ncrl_dir = "{root / "crl"}"\ncrl_next_update = "{next_update}"\n'
        f'crl_refresh_margin = "{margin}"\n', 1,
    ))  # fmt: skip
    stop = asyncio.Event()
    host = asyncio.create_task(run_line(load_config(path), stop))
    device = asyncio.create_task(jig.run())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(host, 30)
        device.cancel()
        jig.close()


def alarms_of(received: list[Received], topic: str) -> list[list[str]]:
    return [[a["kind"] for a in m.json()["active"]] for m in received if m.topic == topic]


@pytest.mark.timeout(240)
async def test_a_crl_near_its_next_update_raises_and_a_fresh_crl_clears(
    broker_url: str, prefix: str, tmp_path: Path
) -> None:
    async_playwright = _browser_or_skip()
    pki = tmp_path / "pki"
    await asyncio.to_thread(init_dev, pki)
    crl_topic, alarms_topic = f"{prefix}/{LINE}/host/crl", f"{prefix}/{LINE}/alarms"
    sub = Subscriber(broker_url, [crl_topic, alarms_topic], f"t-{secrets.token_hex(4)}").start()
    settings = DashboardSection(alarms=DashboardAlarmsSection(crl_margin=86400.0))
    dashboard = Dashboard(MqttSection(url=broker_url, topic_prefix=prefix), dashboard=settings)
    url = await dashboard.start("127.0.0.1", 0)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(url)
            # a CRL valid for 2 hours, and a dashboard that wants a day's notice: the alarm
            async with crl_host(tmp_path, pki, broker_url, prefix,
                                next_update="PT2H", margin="PT1H"):  # fmt: skip
                await page.wait_for_selector(CRL_ALARM, timeout=60_000)
                text = await page.locator(CRL_ALARM).inner_text()
                assert "CRL 1 nextUpdate" in text, text
                assert "no fresher CRL yet" in text, text
                assert await page.locator(f'tr.row.alarmed[data-line="{LINE}"]').count() == 1
                # the line view shows the CRL itself
                await page.goto(f"{url}#/line/{LINE}")
                crl = page.locator(f'section.line[data-line="{LINE}"] .figure.crl')
                await crl.wait_for(state="visible", timeout=10_000)
                assert (await crl.inner_text()).startswith("CRL 1 next update"), crl
                assert await page.locator(CRL_ALARM).is_visible()  # on the line's own view too
            # the host stopped: its CRL still expires, so the alarm stays
            await asyncio.sleep(2.5)
            assert await page.locator(CRL_ALARM).count() == 1
            # restarted with 10 days of validity: a fresh CRL (number 2) clears the alarm
            async with crl_host(tmp_path, pki, broker_url, prefix,
                                next_update="P10D", margin="P7D"):  # fmt: skip
                await page.wait_for_selector(CRL_ALARM, state="detached", timeout=60_000)
                await page.wait_for_function(
                    "document.querySelector('.figure.crl').dataset.crlNumber === '2'",
                    timeout=10_000,
                )
            await browser.close()
        await asyncio.to_thread(
            sub.wait_for,
            lambda ms: alarms_of(ms, alarms_topic)[-1:] == [[]] and len(ms) >= 4,
            10,
            "the alarm cleared on the broker",
        )
    finally:
        sub.stop()
        await dashboard.close()
    received = sub.snapshot()
    doc = yaml.safe_load(DOC_PATH.read_text())
    for m in received:
        validator(doc, "HostCrl" if m.topic == crl_topic else "LineAlarms").validate(m.json())
    crls = [m.json() for m in received if m.topic == crl_topic]
    assert [c["crl_number"] for c in crls] == [1, 2], crls
    first_next = datetime.fromisoformat(crls[0]["next_update"])
    assert first_next - datetime.fromisoformat(crls[0]["this_update"]) == timedelta(hours=2)
    assert 7100 < crls[0]["seconds_left"] <= 7200
    assert datetime.fromisoformat(crls[1]["next_update"]) > datetime.now(UTC) + timedelta(days=9)
    kinds = alarms_of(received, alarms_topic)
    assert [CRL_NEXT_UPDATE] in kinds, kinds
    assert kinds[-1] == [], kinds
    raised = next(m.json() for m in received if m.topic == alarms_topic and m.json()["active"])
    # raised "since" nextUpdate minus the margin: a day before the CRL's nextUpdate
    since = datetime.fromisoformat(raised["active"][0]["since"])
    assert abs(since - (first_next - timedelta(days=1))) < timedelta(milliseconds=1)
    late = Subscriber(broker_url, [crl_topic, alarms_topic], f"t-{secrets.token_hex(4)}").start()
    try:
        await asyncio.to_thread(late.wait_for, lambda ms: len(ms) == 2, 5, "retained messages")
    finally:
        late.stop()
    retained = {m.topic: m.json() for m in late.snapshot() if m.retain}
    assert retained[crl_topic]["crl_number"] == 2
    assert retained[alarms_topic]["active"] == []
