"""`linehost demo` brings its own broker and dashboard and prints the dashboard URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.harness import linehost


@pytest.mark.timeout(120)
def test_demo_runs_an_embedded_broker_and_the_dashboard(tmp_path: Path) -> None:
    proc = linehost(
        "demo", "--dir", tmp_path / "demo", "--jigs", "2", "--devices", "4", "--no-hold",
        "--dashboard", "127.0.0.1:0", timeout=100,
    )  # fmt: skip
    out = proc.stdout
    assert "embedded MQTT broker (amqtt, MQTT 3.1.1) on mqtt://127.0.0.1:" in out
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/", out)
    assert "4 of 4 attempt(s) provisioned" in out
    # each finished device moves the run's counter on: [1/4] ... [4/4]
    counters = re.findall(r"^  \[(\d)/4\] OK ", out, re.M)
    assert counters == ["1", "2", "3", "4"], out
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "demo" / "linehost.log").read_text()
    assert "event=mqtt_connected" in log
    assert "protocol=3.1.1" in log
    assert "event=dashboard_subscribed" in log
    assert "event=host_offline_published" in log
    assert "results_left_in_outbox" not in log
