"""Two `linehost run` line hosts with `issuer = "est"` on simulated jigs, one `linehost gateway`
with the PAI key in SoftHSM2: every DAC verifies with openssl, the gateway's and the lines'
databases agree one-to-one, and `audit verify` / `gateway verify` pass on both sides."""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

import pytest

from linehost.gateway.tls import init_tls, make_client_cert, write_client_files
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for
from tests.gateway.test_gateway_cli import _free_port, _start, _stop
from tests.pki.builders import openssl_verify, write
from tests.pki.softhsm import PIN, TOKEN, SoftHsm

pytestmark = [pytest.mark.hsm, pytest.mark.slow]

JIGS = 2
DEVICES = 3  # per jig


def _all_done(sim: SimRun) -> bool:
    done = sim.record.read_text().count("\n") if sim.record.exists() else 0
    return done >= sim.jigs * (sim.devices or 0)


@pytest.mark.timeout(300)
def test_two_lines_provision_through_the_gateway(
    tmp_path: Path,
    softhsm: SoftHsm,
) -> None:
    pki = softhsm.pki
    tls = init_tls(tmp_path / "tls", ["127.0.0.1"])
    lines = ["line-a", "line-b"]
    for name in lines:
        cert, key = make_client_cert(name, tls.client_ca, tls.client_ca_key, 30)
        write_client_files(tmp_path / "clients", name, cert, key)
    port = _free_port()
    gw_db = tmp_path / "gateway.db"
    gw_config = write(
        tmp_path / "gateway.toml",
        f"""
[gateway]
name = "gw-e2e"
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
"""
        + "".join(f'[[clients]]\nname = "{n}"\nproducts = ["FFF1:8000"]\n' for n in lines),
    )
    gateway = _start(gw_config, port, {**os.environ, "E2E_HSM_PIN": PIN})
    sims: list[SimRun] = []
    hosts: list[HostRun] = []
    try:
        for name in lines:
            work = tmp_path / name
            work.mkdir()
            sim = SimRun(work, jigs=JIGS, devices=DEVICES, mix="good", paa=pki.paa_cert)
            sim.seed = 11 if name == "line-a" else 23
            sims.append(sim.start())
            jigs = "".join(
                f'[[jigs]]\nname = "{jig}"\nstation = "st1"\nport = "{path}"\n'
                for jig, path in sorted(sim.ports.items())
            )
            config = write(
                work / "line.toml",
                f"""
[line]
name = "{name}"
shutdown_grace = 5
[database]
url = "sqlite+aiosqlite:///{work / "line.db"}"
[pki]
issuer = "est"
pai_cert = "{pki.pai_cert}"
paa_cert = "{pki.paa_cert}"
vid = "FFF1"
pid = "8000"
[pki.est]
url = "https://127.0.0.1:{port}"
client_cert = "{tmp_path / "clients" / f"{name}.pem"}"
client_key = "{tmp_path / "clients" / f"{name}.key"}"
server_ca = "{tls.server_ca}"
[protocol]
sync_interval = 0.2
csr_timeout = 10
result_timeout = 5
{jigs}""",
            )
            hosts.append(HostRun(config).start())
        for sim in sims:
            wait_for(functools.partial(_all_done, sim), 180, "every simulated device")
    finally:
        codes = [host.stop() for host in hosts]
        for sim in sims:
            sim.stop()
        _stop(gateway)
    for host, code in zip(hosts, codes, strict=True):
        assert code == 0, host.output()[-3000:]
        assert "Traceback" not in host.output()

    line_dacs: dict[str, str] = {}
    for name, host in zip(lines, hosts, strict=True):
        records = jsonl(linehost("audit", "--config", host.config, "export").stdout)
        assert len(records) == JIGS * DEVICES
        for record in records:
            assert record["status"] == "confirmed"
            pem = write(tmp_path / f"{record['dac_serial']}.pem", record["dac_pem"])
            verified = openssl_verify("openssl", pki.paa_cert, pki.pai_cert, pem)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            line_dacs[record["dac_sha256"]] = f"{name}:{record['uid']}"
        assert linehost("audit", "--config", host.config, "verify").returncode == 0

    with sqlite3.connect(gw_db) as conn:
        rows = conn.execute("SELECT dac_sha256, client, uid, status FROM issuances").fetchall()
    gateway_dacs = {sha: f"{client}:{uid}" for sha, client, uid, status in rows}
    assert {status for *_, status in rows} == {"issued"}
    assert len(rows) == len(gateway_dacs) == 2 * JIGS * DEVICES
    assert gateway_dacs == line_dacs  # one-to-one: same DACs, same clients, same UIDs
    assert linehost("gateway", "--config", gw_config, "verify").returncode == 0
