"""Work orders and metrics end to end: quotas across hosts, `workorder status`, Prometheus."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from linehost.metrics import METRIC_NAMES
from tests.conftest import _postgres_database
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config

WO = "WO-2026-0042"
FAST = "sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\n"


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (skipped loudly, or failed under CI=true, when absent)."""
    gen = _postgres_database()
    url = asyncio.run(gen.__anext__())
    try:
        yield url
    finally:
        with pytest.raises(StopAsyncIteration):
            asyncio.run(gen.__anext__())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, list[Any]]:
    """Samples by metric family name, parsed with prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(body)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_work_order_stops_at_quantity_with_metrics_scraped_during_the_run(
    tmp_path: Path, dev_pki: Path
) -> None:
    port = free_port()
    extra = (
        f'[work_order]\nid = "{WO}"\nquantity = 5\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\nwork_order_poll = 0.5\n'
    )
    # linger: the jigs stay connected (and complete) after the last device, until we stop
    sim = SimRun(tmp_path, jigs=2, devices=5, mix="good", paa=dev_pki / "paa.pem", linger=120)
    sim.start()
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports, protocol=FAST,
                          extra=extra)  # fmt: skip
    host = HostRun(config).start()
    scraped: dict[str, list[Any]] = {}
    try:
        # every device offered (5 provisioned, the rest refused), the jigs empty again
        wait_for(lambda: len(sim.devices_seen()) == 10, 120, "every simulated device offered")

        def settled() -> bool:
            nonlocal scraped
            try:
                scraped = scrape(port)
            except OSError:
                return False
            states = scraped.get("linehost_jig_state", [])
            devices = scraped.get("linehost_work_order_devices", [])
            return (
                value(states, "linehost_jig_state", state="work_order_complete") == 2
                and value(devices, "linehost_work_order_devices", status="confirmed") == 5
            )

        wait_for(settled, 30, "both jigs showing work_order_complete on /metrics")
        snapshot = json.loads(linehost("status", "--config", config, "--json").stdout)
        assert {j["state"] for j in snapshot["jigs"]} == {"work_order_complete"}
        assert snapshot["work_order"]["done"] == 5
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]

    # metrics of a real run, parsed from the exposition format
    assert set(scraped) >= {name.removesuffix("_total") for name in METRIC_NAMES}
    attempts = scraped["linehost_attempts"]
    assert value(attempts, "linehost_attempts_total", outcome="provisioned") == 5
    assert value(attempts, "linehost_attempts_total", outcome="issuer_error") >= 1
    confirmed = scraped["linehost_devices_confirmed"]
    assert value(confirmed, "linehost_devices_confirmed_total") == 5
    latency = scraped["linehost_host_latency_seconds"]
    assert value(latency, "linehost_host_latency_seconds_count") >= 5
    waits = scraped["linehost_host_wait_seconds"]  # one per CSR taken up
    assert value(waits, "linehost_host_wait_seconds_count") >= 5
    assert value(scraped["linehost_issuer_latency_seconds"],
                 "linehost_issuer_latency_seconds_count") >= 5  # fmt: skip
    commits = scraped["linehost_db_commit_seconds"]
    assert value(commits, "linehost_db_commit_seconds_count", operation="assign") >= 5
    assert value(commits, "linehost_db_commit_seconds_count", operation="end_attempt") >= 5
    durations = scraped["linehost_attempt_duration_seconds"]
    assert value(durations, "linehost_attempt_duration_seconds_count") >= 6
    wo = {"work_order": WO}
    assert value(scraped["linehost_work_order_quantity"], "linehost_work_order_quantity", **wo) == 5
    assert value(scraped["linehost_work_order_devices"], "linehost_work_order_devices",
                 status="confirmed", **wo) == 5  # fmt: skip
    assert value(scraped["linehost_outbox_depth"], "linehost_outbox_depth") >= 0

    # every attempt and assignment carries the work order; the rest were refused
    assignments = jsonl(linehost("audit", "--config", config, "export", "--work-order", WO).stdout)
    attempts_rec = jsonl(linehost("audit", "--config", config, "attempts").stdout)
    assert len(assignments) == 5
    assert {a["status"] for a in assignments} == {"confirmed"}
    assert {a["work_order"] for a in attempts_rec} == {WO}
    outcomes = Counter(a["outcome"] for a in attempts_rec)
    assert outcomes["provisioned"] == 5
    refused = [a for a in attempts_rec if a["outcome"] == "issuer_error"]
    assert refused
    assert all(a["detail"].startswith("work order complete") for a in refused)
    assert (
        jsonl(linehost("audit", "--config", config, "export", "--work-order", "WO-other").stdout)
        == []
    )

    summary = json.loads(linehost("workorder", "status", "--config", config, "--json").stdout)
    assert (summary["quantity"], summary["done"], summary["remaining"]) == (5, 5, 0)
    assert summary["failed"] == len(refused)
    text = linehost("workorder", "status", "--config", config).stdout
    assert f"work order {WO}: quantity 5" in text
    assert "remaining         0" in text


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_two_hosts_on_one_work_order_never_exceed_quantity(
    tmp_path: Path, dev_pki: Path, pg_url: str
) -> None:
    quantity = 9
    runs = []
    for i in (1, 2):
        folder = tmp_path / f"host{i}"
        folder.mkdir()
        sim = SimRun(folder, jigs=3, devices=4, mix="good", paa=dev_pki / "paa.pem", seed=i)
        sim.start()
        work_order = f'[work_order]\nid = "{WO}"\nquantity = {quantity}\n'
        config = write_config(
            folder / "line.toml", pki=dev_pki, ports=sim.ports, database_url=pg_url,
            line=f"line-{i}", protocol=FAST, extra=work_order,
        )  # fmt: skip
        runs.append((sim, config))
    hosts = [HostRun(config).start() for _, config in runs]
    try:
        for sim, _ in runs:
            sim.wait(timeout=180)
    finally:
        for sim, _ in runs:
            sim.stop()
        codes = [host.stop() for host in hosts]
    assert codes == [0, 0], [h.output()[-2000:] for h in hosts]

    config = runs[0][1]
    assignments = jsonl(linehost("audit", "--config", config, "export", "--work-order", WO).stdout)
    live = [a for a in assignments if a["status"] in ("issued", "confirmed", "unknown")]
    assert len(live) == quantity  # exactly: 24 devices offered, 9 wanted
    assert {a["line"] for a in live} == {"line-1", "line-2"}  # both hosts took part
    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--work-order", WO).stdout)
    assert len(attempts) >= 24  # every device offered was attempted
    summary = json.loads(linehost("workorder", "status", "--config", config, "--json").stdout)
    assert summary["done"] + summary["in_flight"] == quantity
    assert summary["remaining"] == quantity - summary["done"]
