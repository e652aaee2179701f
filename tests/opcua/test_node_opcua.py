"""A `linehost run` with `[opcua]`, driven by node-opcua (an independent client) during the run."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config
from tests.mqtt.broker import free_port

pytestmark = pytest.mark.slow

NPM_CACHE = Path(os.environ.get("LINEHOST_NPM_CACHE", Path.home() / ".cache" / "linehost-npm"))
NODE_OPCUA = "node-opcua@2"
CLIENT = Path(__file__).with_name("client.js")
LINE_WO = "WO-LINE-1"


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
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    # One install at a time: pytest-xdist workers (or another checkout's test run) sharing this
    # folder would interleave two `npm install`s and leave a broken node_modules behind.
    with (NPM_CACHE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / "node-opcua").is_dir():
            proc = subprocess.run(
                ["npm", "install", "--prefix", str(NPM_CACHE), "--no-audit", "--no-fund",
                 NODE_OPCUA],
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


def _ms(iso: str) -> float:
    """An ISO 8601 UTC time as ms since the epoch (the Node client's clock, same machine)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


@pytest.mark.timeout(240)
def test_node_opcua_drives_a_line_holds_a_jig_and_closes_its_work_order(
    tmp_path: Path, dev_pki: Path, node_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/linehost/"
    monkeypatch.setenv("LH_E2E_OPCUA_MES", "mes pass 1")
    monkeypatch.setenv("LH_E2E_OPCUA_BOARD", "board pass 2")
    sim = SimRun(
        tmp_path, jigs=2, devices=400, mix="good", paa=dev_pki / "paa.pem", swap_seconds=0.2
    ).start()
    extra = (
        f'\n[work_order]\nid = "{LINE_WO}"\nquantity = 5000\n'
        f'\n[opcua]\nendpoint = "{url}"\n'
        '[[opcua.users]]\nname = "mes"\npassword_env = "LH_E2E_OPCUA_MES"\n'
        '[[opcua.users]]\nname = "board"\npassword_env = "LH_E2E_OPCUA_BOARD"\nrole = "viewer"\n'
    )
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports, extra=extra)
    host = HostRun(config).start()
    try:
        wait_for(lambda: "opcua_listening" in host.output(), 30, "the OPC UA server")
        proc = subprocess.run(
            ["node", str(CLIENT), url, "4", LINE_WO, "mes", "mes pass 1", "board", "board pass 2"],
            capture_output=True, text=True, timeout=150,
            env={**os.environ, "NODE_PATH": str(node_modules)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:] + host.output()[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        code = host.stop()  # devices still arriving: the line stops mid-run, as on the floor
        sim.stop()
    assert code == 0, host.output()[-3000:]
    log = host.output()
    assert "Traceback" not in log

    # Browse, subscribe, open (as before).
    assert seen["stations"] == ["st1"]
    assert seen["jigs"] == ["j1", "j2"]
    assert {"Hold", "Resume", "State"} <= set(seen["methods"])
    states = seen["states"]
    assert states.count("provisioning") >= 2, states
    assert states.count("waiting_for_device") >= 2, states
    assert seen["call"] == {"status": "Good", "output": [True]}
    assert seen["work_order_id"] == "WO-NODE-1"

    # Hold: j1 showed `held` and nothing else until Resume; no attempt began on it meanwhile.
    assert seen["hold"] == {"status": "Good", "output": [True]}
    assert seen["still_held"] == [], seen["timeline"]
    assert seen["resume"] == {"status": "Good", "output": [True]}
    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--jig", "j1").stdout)
    started = [_ms(a["started_at"]) for a in attempts]
    assert not [t for t in started if seen["held_at"] < t < seen["resume_at"]], attempts
    assert [t for t in started if seen["resume_at"] < t < seen["close_at"]]  # it took devices again
    before_hold = [a for a in attempts if _ms(a["started_at"]) < seen["held_at"]]
    assert before_hold
    assert all(a["outcome"] == "provisioned" for a in before_hold)  # the last one finished

    # Close: the line's work order takes no more devices; devices that came were refused.
    assert seen["close"] == {"status": "Good", "output": [True]}
    assert seen["close_again"]["status"] == "BadInvalidState"
    status = json.loads(linehost("workorder", "status", "--config", config, "--json").stdout)
    closed_at = _ms(status["closed_at"])  # committed with its audit row, during the call
    assert seen["close_at"] <= closed_at <= seen["complete_at"]
    assignments = jsonl(
        linehost("audit", "--config", config, "export", "--work-order", LINE_WO).stdout
    )
    assert assignments
    assert not [a for a in assignments if _ms(a["issued_at"]) > closed_at]
    every = jsonl(linehost("audit", "--config", config, "attempts", "--work-order", LINE_WO).stdout)
    after = [a for a in every if _ms(a["started_at"]) > seen["complete_at"]]
    assert after, "no device came after the close"
    assert all(a["outcome"] == "issuer_error" for a in after), after
    assert all(a["detail"].startswith("work order closed") for a in after), after

    # The viewer may read, not act.
    assert isinstance(seen["viewer_state"], str)
    assert seen["viewer_hold"] == "BadUserAccessDenied"

    # Every call is in the audit chain with its user; the chain verifies.
    controls = jsonl(linehost("audit", "--config", config, "controls").stdout)
    assert [(c["event"], c["user"], c["operation"], c["result"]) for c in controls] == [
        ("work_order_opened", "mes", "WorkOrder.Open", "done"),
        ("jig_held", "mes", "Jig.Hold", "done"),
        ("jig_resumed", "mes", "Jig.Resume", "done"),
        ("work_order_closed", "mes", "WorkOrder.Close", "done"),
        ("control_refused", "mes", "WorkOrder.Close", "refused"),
        ("control_refused", "board", "Jig.Hold", "refused"),
    ]
    assert controls[1]["target"] == "st1/j1"
    assert controls[3]["target"] == LINE_WO
    assert controls[5]["refusal"] == "denied"
    assert {c["via"] for c in controls} == {"opcua"}
    verified = linehost("audit", "--config", config, "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
