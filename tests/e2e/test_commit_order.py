"""No DAC reaches a port before its assignment is committed: checked at the moment of writing."""

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
from linehost.protocol.host import Timing
from linehost.sim.harness import SimulatedLine
from linehost.store.store import Store
from linehost.transport.serial import JigPort, open_port


@pytest.mark.timeout(90)
async def test_no_dac_reaches_the_port_before_its_assignment_is_committed(
    tmp_path: Path,
) -> None:
    pki = init_dev(tmp_path / "pki")
    db = tmp_path / "order.db"
    sightings: list[tuple[str, str | None]] = []

    class WatchedPort(JigPort):
        """Before the bytes leave, ask a separate connection what the database holds."""

        def send(self, data: bytes) -> None:
            lines = data.decode("ascii").split("\n")
            if "-----BEGIN CERTIFICATE-----" in lines:
                end = lines.index("-----END CERTIFICATE-----")
                start = lines.index("-----BEGIN CERTIFICATE-----")
                dac = x509.load_pem_x509_certificate("\n".join(lines[start : end + 1]).encode())
                serial = format(dac.serial_number, "X")
                # A second connection sees only committed rows.
                with sqlite3.connect(db) as other:
                    row = other.execute(
                        "SELECT status FROM assignments WHERE dac_serial = ?", (serial,)
                    ).fetchone()
                sightings.append((serial, None if row is None else row[0]))
            super().send(data)

    async def opener(url: str, baudrate: int) -> JigPort:
        return await open_port(url, baudrate, factory=WatchedPort)

    store = await Store.open(
        f"sqlite+aiosqlite:///{db}", line="order-line", result_payload=result_payload
    )
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    timing = Timing(sync_interval=0.1, csr_timeout=5, result_timeout=3)
    async with SimulatedLine(
        6,
        devices_per_jig=5,
        mix="good:4,noisy,crlf,slow,finish_003",
        directory=tmp_path / "jigs",
        paa=pki.paa_cert,
        swap_seconds=0.05,
        seed=3,
    ) as sim:
        context = LineContext(Provisioner(issuer, store), timing, open_port=opener)
        runners = [
            JigRunner(JigSpec("order-line", "st1", name, path), context)
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
    assert len(stored) >= 20
    seen = {serial for serial, _ in sightings}
    assert stored <= seen  # every DAC a device stored was watched on its way out
    uncommitted = [serial for serial, status in sightings if status is None]
    assert uncommitted == []
    assert {status for _, status in sightings} <= {"issued", "unknown", "confirmed"}
