"""A signer that fails mid-run (HSM unplugged): issuer_error for the attempt, with the signer's
detail, on the jig status and in the log; no DAC recorded or delivered; the line carries on."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import IssuerError
from linehost.line.provisioning import Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.supervisor import LineSupervisor
from linehost.mqtt.payloads import result_payload
from linehost.pki.devpki import DevPki
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.host import Timing
from linehost.protocol.outcomes import Outcome
from linehost.sim.harness import SimulatedLine
from linehost.store.store import Store

UNPLUGGED = "PKCS#11 key 'pai' on token 'line-hsm': HSM failed (DeviceRemoved)"


class UnpluggedAfter:
    """Signs `works` times, then fails the way Pkcs11Signer reports a vanished token."""

    def __init__(self, inner: FileKeySigner, works: int) -> None:
        self._inner = inner
        self._left = works

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    async def sign(self, data: bytes) -> bytes:
        if self._left <= 0:
            raise IssuerError(UNPLUGGED)
        self._left -= 1
        return await self._inner.sign(data)

    async def aclose(self) -> None:
        pass


@pytest.mark.timeout(90)
async def test_unplugged_hsm_fails_attempts_without_recording_a_dac(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    db = tmp_path / "line.db"
    store = await Store.open(
        f"sqlite+aiosqlite:///{db}", line="hsm-line", result_payload=result_payload
    )
    signer = UnpluggedAfter(FileKeySigner.load(dev_pki.pai_key), works=2)
    issuer = LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8000")
    timing = Timing(sync_interval=0.1, csr_timeout=5, result_timeout=3)
    async with SimulatedLine(
        2,
        devices_per_jig=3,
        directory=tmp_path / "jigs",
        paa=dev_pki.paa_cert,
        swap_seconds=0.05,
        seed=5,
    ) as sim:
        runners = [
            JigRunner(
                JigSpec("hsm-line", "st1", name, path),
                LineContext(Provisioner(issuer, store), timing),
            )
            for name, path in sim.ports.items()
        ]
        stop = asyncio.Event()
        line = asyncio.create_task(LineSupervisor(runners, shutdown_grace=3).run(stop))
        await asyncio.wait_for(sim.wait(), 60)
        await asyncio.sleep(0.3)
        stop.set()
        await line
        records = list(sim.records)
    await store.close()

    with sqlite3.connect(db) as conn:
        outcomes = conn.execute(
            "SELECT uid, outcome, detail, assignment_id FROM attempts"
        ).fetchall()
        assigned = conn.execute("SELECT uid FROM assignments").fetchall()
    by_outcome = {o for _, o, _, _ in outcomes}
    assert by_outcome == {"provisioned", "issuer_error"}
    failed = [row for row in outcomes if row[1] == "issuer_error"]
    assert len(failed) == 4
    for _, _, detail, assignment_id in failed:
        assert detail == UNPLUGGED
        assert assignment_id is None
    assert len(assigned) == 2  # only the DACs signed before the unplug were recorded
    stored = {r.uid for r in records if r.stored_dac_serial}
    assert stored == {uid for (uid,) in assigned}
    assert {r.uid for r in records if r.stored_dac_serial is None} == {u for u, *_ in failed}
    # the jig status shows why its last device failed
    last = [r.status for r in runners if r.status.last_outcome is Outcome.ISSUER_ERROR]
    assert last
    assert UNPLUGGED in (last[0].last_detail or "")
