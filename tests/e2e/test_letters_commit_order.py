"""ECC608 letter jigs: no DAC reaches a port before its assignment is committed, checked at the
moment the bytes after `v` are written (the DAC of the letter dialect travels alone)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509

from linehost.line.provisioning import Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.supervisor import LineSupervisor
from linehost.mqtt.payloads import result_payload
from linehost.pki.devpki import init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.session import Timing
from linehost.sim.harness import SimulatedLine
from linehost.store.store import Store
from linehost.transport.serial import JigPort, open_port


@pytest.mark.timeout(90)
async def test_no_letter_dac_reaches_the_port_before_its_assignment_is_committed(
    tmp_path: Path,
) -> None:
    pki = init_dev(tmp_path / "pki")
    db = tmp_path / "order.db"
    sightings: list[tuple[str, str | None, str | None]] = []

    class WatchedPort(JigPort):
        """Before the DAC leaves, ask a separate connection what the database holds."""

        last = b""

        def send(self, data: bytes) -> None:
            if self.last == b"v" and data.startswith(b"-----BEGIN CERTIFICATE-----"):
                dac = x509.load_pem_x509_certificate(data)
                serial = format(dac.serial_number, "X")
                with sqlite3.connect(db) as other:  # sees only committed rows
                    row = other.execute(
                        "SELECT status, key_proof FROM assignments WHERE dac_serial = ?",
                        (serial,),
                    ).fetchone()
                sightings.append((serial, *(row or (None, None))))
            self.last = data
            super().send(data)

    async def opener(url: str, baudrate: int) -> JigPort:
        return await open_port(url, baudrate, factory=WatchedPort)

    store = await Store.open(
        f"sqlite+aiosqlite:///{db}", line="order-line", result_payload=result_payload
    )
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    timing = Timing(sync_interval=0.1, csr_timeout=5, result_timeout=3, letter_gap=0.05)
    async with SimulatedLine(
        4,
        devices_per_jig=4,
        mix="good:3,noisy,readback_corrupt",
        directory=tmp_path / "jigs",
        paa=pki.paa_cert,
        swap_seconds=0.05,
        seed=3,
        protocol="ecc608-letters",
    ) as sim:
        context = LineContext(Provisioner(issuer, store), timing, open_port=opener)
        runners = [
            JigRunner(JigSpec("order-line", "st1", name, path, protocol="ecc608-letters"), context)
            for name, path in sim.ports.items()
        ]
        stop = asyncio.Event()
        line = asyncio.create_task(LineSupervisor(runners, shutdown_grace=3).run(stop))
        await asyncio.wait_for(sim.wait(), 60)
        await asyncio.sleep(0.3)
        stop.set()
        await line
        records = sim.records
    await store.close()

    stored = {r.stored_dac_serial for r in records if r.stored_dac_serial}
    assert len(stored) >= 12
    assert stored <= {serial for serial, _, _ in sightings}  # each watched on its way out
    assert [serial for serial, status, _ in sightings if status is None] == []
    assert {proof for _, _, proof in sightings} == {"none"}
