"""deploy/prometheus/alerts.yaml: valid rules, over metrics the host exports, firing as tested."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from linehost.metrics import METRIC_NAMES

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        text = "promtool is not installed (apt-get install prometheus): the rules were NOT checked"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(text, pytrace=False)
        pytest.skip(text)
    return found


def test_every_metric_in_the_rules_is_exported() -> None:
    doc = yaml.safe_load((RULES / "alerts.yaml").read_text())
    exprs = [rule["expr"] for group in doc["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\blinehost_[a-z_]+", expr)}
    assert used, exprs
    assert used <= METRIC_NAMES, used - METRIC_NAMES


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "alerts.yaml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=RULES,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
