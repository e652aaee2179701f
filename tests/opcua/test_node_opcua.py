"""A `linehost run` with `[opcua]`, driven by node-opcua (an independent client) during the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import HostRun, SimRun, linehost, wait_for, write_config
from tests.mqtt.broker import free_port

pytestmark = pytest.mark.slow

NPM_CACHE = Path(os.environ.get("LINEHOST_NPM_CACHE", Path.home() / ".cache" / "linehost-npm"))
NODE_OPCUA = "node-opcua@2"
CLIENT = Path(__file__).with_name("client.js")


def _missing(what: str) -> None:
    text = f"{what}: the node-opcua test did NOT run"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(text + " (CI=true makes this an error)", pytrace=False)
    pytest.skip(text)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """node-opcua installed (once) into the npm cache folder, from the npm registry."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("node and npm are not installed")
    modules = NPM_CACHE / "node_modules"
    if not (modules / "node-opcua").is_dir():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(NPM_CACHE), "--no-audit", "--no-fund", NODE_OPCUA],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            _missing(f"npm install {NODE_OPCUA} failed: {proc.stderr[-500:]}")
    return modules


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


@pytest.mark.timeout(180)
def test_node_opcua_browses_subscribes_and_opens_a_work_order(
    tmp_path: Path, dev_pki: Path, node_modules: Path
) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/linehost/"
    sim = SimRun(
        tmp_path, jigs=2, devices=400, mix="good", paa=dev_pki / "paa.pem", swap_seconds=0.2
    ).start()
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports,
                          extra=f'\n[opcua]\nendpoint = "{url}"\n')  # fmt: skip
    host = HostRun(config).start()
    try:
        wait_for(lambda: "opcua_listening" in host.output(), 30, "the OPC UA server")
        proc = subprocess.run(
            ["node", str(CLIENT), url, "4"],
            capture_output=True, text=True, timeout=90,
            env={**os.environ, "NODE_PATH": str(node_modules)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        code = host.stop()  # devices still arriving: the line stops mid-run, as on the floor
        sim.stop()
    assert code == 0, host.output()[-3000:]
    assert seen["stations"] == ["st1"]
    assert seen["jigs"] == ["j1", "j2"]
    states = seen["states"]
    assert states.count("provisioning") >= 2, states
    assert states.count("waiting_for_device") >= 2, states
    assert seen["call"] == {"status": "Good", "output": [True]}
    assert seen["work_order_id"] == "WO-NODE-1"
    log = host.output()
    assert "opcua_method_called" in log
    assert "WO-NODE-1" in log
    assert "anonymous" in log
    assert "Traceback" not in log
