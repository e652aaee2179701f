"""`linehost gateway` stops mid-run while `linehost run` (issuer = "est") provisions simulated jigs:
the jigs show `waiting_for_issuer` and keep their devices, nothing is lost or issued twice, and
the line resumes by itself once the gateway is back (issue 15, item 4)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from linehost.gateway.tls import init_tls, make_client_cert, write_client_files
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for
from tests.gateway.test_gateway_cli import _free_port, _start, _stop
from tests.pki.builders import write
from tests.pki.softhsm import PIN, TOKEN, SoftHsm

pytestmark = [pytest.mark.hsm, pytest.mark.slow]

JIGS = 2
DEVICES = 4  # per jig
LINE = "line-a"


def _done(sim: SimRun) -> int:
    return sim.record.read_text().count("\n") if sim.record.exists() else 0


def _states(config: Path) -> list[str | None]:
    proc = linehost("status", "--config", config, "--json", check=False)
    if proc.returncode != 0:
        return []
    snapshot: dict[str, Any] = json.loads(proc.stdout)
    return [jig["state"] for jig in snapshot["jigs"]]


def _outcomes(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT outcome FROM attempts")]


@pytest.mark.timeout(300)
def test_jigs_wait_for_a_stopped_gateway_and_resume_when_it_is_back(
    tmp_path: Path,
    softhsm: SoftHsm,
) -> None:
    pki = softhsm.pki
    tls = init_tls(tmp_path / "tls", ["127.0.0.1"])
    cert, key = make_client_cert(LINE, tls.client_ca, tls.client_ca_key, 30)
    write_client_files(tmp_path / "clients", LINE, cert, key)
    port = _free_port()
    gw_db = tmp_path / "gateway.db"
    gw_config = write(
        tmp_path / "gateway.toml",
        f"""
[gateway]
name = "gw-outage"
listen = "127.0.0.1:{port}"
tls_cert = "{tls.server_cert}"
tls_key = "{tls.server_key}"
client_ca = "{tls.client_ca}"
[database]
url = "sqlite+aiosqlite:///{gw_db}"
[pki]
pai_cert = "{pki.pai_cert}"
paa_cert = "{pki.paa_cert}"
pai_key = "pkcs11:token={TOKEN};object=pai"
pkcs11_module = "{softhsm.module}"
pkcs11_pin_env = "E2E_HSM_PIN"
vid = "FFF1"
pid = "8000"
[[clients]]
name = "{LINE}"
products = ["FFF1:8000"]
""",
    )
    gw_env = {**os.environ, "E2E_HSM_PIN": PIN}
    gateway = _start(gw_config, port, gw_env)
    work = tmp_path / LINE
    work.mkdir()
    sim = SimRun(work, jigs=JIGS, devices=DEVICES, mix="good", paa=pki.paa_cert, swap_seconds=0.5)
    sim.start()
    jigs = "".join(
        f'[[jigs]]\nname = "{jig}"\nstation = "st1"\nport = "{path}"\n'
        for jig, path in sorted(sim.ports.items())
    )
    line_db = work / "line.db"
    config = write(
        work / "line.toml",
        f"""
[line]
name = "{LINE}"
shutdown_grace = 5
[database]
url = "sqlite+aiosqlite:///{line_db}"
[pki]
issuer = "est"
pai_cert = "{pki.pai_cert}"
paa_cert = "{pki.paa_cert}"
vid = "FFF1"
pid = "8000"
[pki.est]
url = "https://127.0.0.1:{port}"
client_cert = "{tmp_path / "clients" / f"{LINE}.pem"}"
client_key = "{tmp_path / "clients" / f"{LINE}.key"}"
server_ca = "{tls.server_ca}"
[protocol]
sync_interval = 0.2
csr_timeout = 10
result_timeout = 5
{jigs}""",
    )
    host = HostRun(config).start()
    try:
        wait_for(lambda: _done(sim) >= 2, 90, "two devices provisioned through the gateway")
        _stop(gateway)
        before = _done(sim)
        wait_for(lambda: "waiting_for_issuer" in _states(config), 60, "a jig in waiting_for_issuer")
        assert _done(sim) <= before + JIGS  # at most the DACs already in flight got through
        assert "issuer_error" not in _outcomes(line_db)  # waiting, not failing
        gateway = _start(gw_config, port, gw_env)
        wait_for(lambda: _done(sim) >= JIGS * DEVICES, 150, "every device")
    finally:
        code = host.stop()
        sim.stop()
        _stop(gateway)
    log = host.output()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert "issuer_unavailable" in log
    assert "issuer_back" in log

    assert set(_outcomes(line_db)) == {"provisioned"}  # no issuer_error storm, nothing else
    records = jsonl(linehost("audit", "--config", config, "export").stdout)
    uids = [r["uid"] for r in records]
    assert len(records) == JIGS * DEVICES == len(set(uids))  # nothing lost, nothing twice
    assert {r["status"] for r in records} == {"confirmed"}
    assert len({r["dac_sha256"] for r in records}) == len(records)
    seen = {d["uid"] for d in sim.devices_seen()}
    assert seen == set(uids)
    with sqlite3.connect(gw_db) as conn:
        issued = {row[0] for row in conn.execute("SELECT dac_sha256 FROM issuances")}
    assert {r["dac_sha256"] for r in records} <= issued
    assert linehost("audit", "--config", config, "verify").returncode == 0
