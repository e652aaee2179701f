"""JigPort and open_port on real pseudo-terminals: lines in, lines out, failures classified."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from pathlib import Path

import pytest
import serial

from linehost.backoff import Backoff
from linehost.errors import PortBusy, PortGone, PortMissing
from linehost.protocol.framing import LineTooLong
from linehost.transport.serial import PortLost, classify_open_error, open_port


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


async def read_available(fd: int, want: int, timeout: float = 5.0) -> bytes:
    """Read from the device side without blocking the loop the host runs on."""
    os.set_blocking(fd, False)
    data = b""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(data) < want and asyncio.get_running_loop().time() < deadline:
        try:
            data += os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return data


async def next_event(port, timeout: float = 5.0):
    return await asyncio.wait_for(port.events.get(), timeout)


async def test_lines_flow_both_ways_over_a_pty(pty_pair) -> None:
    master, path = pty_pair
    port = await open_port(path, 115200)
    try:
        port.send(["Abort", "Init"])
        assert await read_available(master, 11) == b"Abort\nInit\n"
        os.write(master, b"Start_provisioning\r\nUID:00112233\n")
        frames = []
        while len(frames) < 2:
            frames += await next_event(port)
        assert frames == ["Start_provisioning", "UID:00112233"]
        os.write(master, b"x" * 3000 + b"\n")
        event = await next_event(port)
        assert isinstance(event, list)
        assert isinstance(event[0], LineTooLong)
    finally:
        port.close()


async def test_closing_the_other_side_reports_the_port_lost(pty_pair) -> None:
    master, path = pty_pair
    port = await open_port(path, 115200)
    os.close(master)
    event = await next_event(port)
    while isinstance(event, list):  # a read may still drain before the error
        event = await next_event(port)
    assert isinstance(event, PortLost)
    assert port.is_open is False
    port.send(["Init"])  # writing to a lost port is silently dropped, never raises
    port.close()


async def test_missing_port_is_port_missing(tmp_path: Path) -> None:
    with pytest.raises(PortMissing, match="port not found"):
        await open_port(str(tmp_path / "no-such-jig"), 115200)


async def test_a_port_another_host_holds_is_busy(pty_pair) -> None:
    _master, path = pty_pair
    holder = serial.Serial(path, exclusive=True)
    try:
        with pytest.raises(PortBusy, match="busy"):
            await open_port(path, 115200)
    finally:
        holder.close()


async def test_unreachable_serial_server_is_missing() -> None:
    with pytest.raises(PortMissing):
        await open_port("socket://127.0.0.1:9", 115200)  # discard port: nothing listens


def test_error_classification() -> None:
    def err(code: int, text: str = "x") -> serial.SerialException:
        exc = serial.SerialException(code, text)
        exc.errno = code
        return exc

    assert isinstance(classify_open_error("p", err(errno.ENOENT)), PortMissing)
    assert isinstance(classify_open_error("p", err(errno.EACCES)), PortBusy)
    assert "permission denied" in str(classify_open_error("p", err(errno.EACCES)))
    assert isinstance(classify_open_error("p", err(errno.EBUSY)), PortBusy)
    assert isinstance(classify_open_error("p", err(errno.EIO)), PortGone)


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(low=0.5, high=4.0, jitter=0.2)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.4 <= delays[0] <= 0.6
    assert 0.8 <= delays[1] <= 1.2
    assert all(d <= 4.0 * 1.2 for d in delays)
    assert all(d >= 4.0 * 0.8 for d in delays[4:])
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jitter spreads a line of jigs
    backoff.reset()
    assert backoff.next_delay() <= 0.6
