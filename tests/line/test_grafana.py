"""The Grafana dashboard in deploy/grafana/ loads and only queries series linehost exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from linehost.metrics import METRIC_NAMES, LineMetrics
from linehost.protocol.outcomes import JigState, Outcome

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "linehost-line.json"
SERIES = re.compile(r"\b(linehost_[a-z_]+)\b")
HISTOGRAM_PARTS = ("_bucket", "_count", "_sum")


def exported() -> set[str]:
    """Every sample name a line host exposes (histogram parts included)."""
    metrics = LineMetrics("line-1")
    jig = metrics.jig("st1", "j1")
    jig.step("pre", True, 0.1)
    jig.host_latency(0.001)
    jig.issuer_latency(0.001)
    metrics.host_wait.observe(0.0005)
    jig.attempt_ended(Outcome.PROVISIONED, 3.0, confirmed=True)
    jig.set_state(JigState.PROVISIONING)
    jig.db_assign.observe(0.002)
    metrics.info.labels("line-1", "0").set(1)
    metrics.work_order(
        {"work_order": "WO-1", "quantity": 5, "claimed": 1, "assignments": {"confirmed": 1}}
    )
    text = generate_latest(metrics.registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    return {n for n in names if n}


def test_dashboard_is_valid_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "linehost-line"
    assert len(dashboard["panels"]) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


def test_dashboard_queries_only_existing_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported()
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(SERIES.findall(target["expr"]))
    for template in dashboard["templating"]["list"]:
        used |= set(SERIES.findall(str(template.get("query", ""))))
    assert used, "the dashboard queries nothing"
    unknown = used - names
    assert not unknown, f"dashboard queries series linehost does not export: {sorted(unknown)}"
    # and it shows every family linehost exports
    families = {n.removesuffix(p) for n in used for p in HISTOGRAM_PARTS if n.endswith(p)}
    families |= {n.removesuffix("_total") for n in used}
    assert {n.removesuffix("_total") for n in METRIC_NAMES} <= families


def test_metric_names_list_matches_the_registry() -> None:
    names = exported()
    for name in METRIC_NAMES:
        base = name.removesuffix("_total")
        assert any(n == name or n.startswith(base) for n in names), name
