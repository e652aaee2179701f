"""socket:// and rfc2217:// jigs: a real provisioning through a serial server bridging to a pty."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from serial import rfc2217

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


class _PtyPort(serial.Serial):
    """A pty has no modem lines: report them idle, as a three-wire jig UART does."""

    cts = dsr = ri = cd = property(lambda self: False)

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass


class _Rfc2217Server(rfc2217.PortManager):  # type: ignore[misc]
    """pyserial's RFC 2217 server, plus the mask replies RFC 2217 requires and it omits."""

    def _telnet_process_subnegotiation(self, suboption: bytes) -> None:
        super()._telnet_process_subnegotiation(suboption)
        if suboption[0:1] == rfc2217.COM_PORT_OPTION:
            replies = {
                rfc2217.SET_LINESTATE_MASK: rfc2217.SERVER_SET_LINESTATE_MASK,
                rfc2217.SET_MODEMSTATE_MASK: rfc2217.SERVER_SET_MODEMSTATE_MASK,
            }
            reply = replies.get(suboption[1:2])
            if reply is not None:
                self.rfc2217_send_subnegotiation(reply, suboption[2:3])


class _Wire:
    """What PortManager needs of its connection: a write."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


def _bridge(listener: socket.socket, device: str, telnet: bool, stop: threading.Event) -> None:
    """A serial server: one client at a time, bytes both ways, RFC 2217 options when `telnet`."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(0.01)
        port = _PtyPort(device, timeout=0.01)
        manager = _Rfc2217Server(port, _Wire(conn)) if telnet else None
        try:
            while not stop.is_set():
                data = port.read(4096)
                if data:
                    conn.sendall(b"".join(manager.escape(data)) if manager else data)
                try:
                    got = conn.recv(4096)
                except TimeoutError:
                    continue
                if not got:
                    break
                port.write(b"".join(manager.filter(got)) if manager else got)
        finally:
            port.close()
            conn.close()


@contextlib.contextmanager
def serial_server(device: str, *, telnet: bool) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_bridge, args=(listener, device, telnet, stop), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scheme", ["rfc2217", "socket"])
async def test_a_jig_behind_a_serial_server_provisions(tmp_path: Path, scheme: str) -> None:
    pki = init_dev(tmp_path / "pki")
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'net.db'}", line="net-line", result_payload=result_payload
    )
    issuer = LocalIssuer.load(
        pki.pai_cert, FileKeySigner.load(pki.pai_key), "FFF1", "8000", paa_cert=pki.paa_cert
    )
    timing = Timing(sync_interval=0.2, csr_timeout=10, result_timeout=10)
    async with SimulatedLine(
        1,
        devices_per_jig=3,
        mix="good",
        directory=tmp_path / "jigs",
        paa=pki.paa_cert,
        swap_seconds=0.05,
        seed=7,
    ) as sim:
        ((name, device),) = sim.ports.items()
        with serial_server(str(device), telnet=scheme == "rfc2217") as tcp_port:
            runner = JigRunner(
                JigSpec("net-line", "st1", name, f"{scheme}://127.0.0.1:{tcp_port}"),
                LineContext(Provisioner(issuer, store), timing),
            )
            stop = asyncio.Event()
            line = asyncio.create_task(LineSupervisor([runner], shutdown_grace=3).run(stop))
            await asyncio.wait_for(sim.wait(), 60)
            stop.set()
            await line
        records = list(sim.records)
    await store.close()
    assert len(records) == 3
    assert all(r.stored_dac_serial for r in records), records
