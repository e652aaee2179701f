"""JigPort and open_port on real pseudo-terminals: bytes in, bytes out, failures classified."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import time
import tty
from pathlib import Path

import pytest
import serial

from linehost.backoff import Backoff
from linehost.errors import PortBusy, PortGone, PortMissing
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


async def read_port(port, want: int, timeout: float = 5.0) -> bytes:
    """Collect raw chunks from the port's events until `want` bytes arrived."""
    data = b""
    while len(data) < want:
        event = await next_event(port, timeout)
        assert isinstance(event, bytes), event
        data += event
    return data


async def test_bytes_flow_both_ways_over_a_pty(pty_pair) -> None:
    master, path = pty_pair
    port = await open_port(path, 115200)
    try:
        assert port.is_open
        port.send(b"Abort\nInit\n")
        assert await read_available(master, 11) == b"Abort\nInit\n"
        before = time.monotonic()
        chunk = b"Start_provisioning\r\nUID:0011"  # a line and a half, passed through as is
        os.write(master, chunk)
        assert await read_port(port, len(chunk)) == chunk
        assert port.received_at >= before  # the loop clock of the last read
        blob = bytes(range(256)) * 12  # raw: no framing, no decoding, no length bound here
        os.write(master, blob)
        assert await read_port(port, len(blob)) == blob
    finally:
        port.close()
        await port.wait_closed()
    assert port.is_open is False


async def test_closing_the_other_side_reports_the_port_lost(pty_pair) -> None:
    master, path = pty_pair
    port = await open_port(path, 115200)
    os.close(master)
    event = await next_event(port)
    while isinstance(event, bytes):  # a read may still drain before the error
        event = await next_event(port)
    assert isinstance(event, PortLost)
    assert port.is_open is False
    port.send(b"Init\n")  # writing to a lost port is silently dropped, never raises
    port.close()
    port.close()  # idempotent
    await port.wait_closed()
    assert port.events.empty()  # PortLost came once


async def test_close_releases_the_descriptor_and_the_lock(pty_pair) -> None:
    _master, path = pty_pair
    before = set(os.listdir("/proc/self/fd"))
    port = await open_port(path, 115200)
    port.send(b"Abort\n")
    port.close()
    await asyncio.wait_for(port.wait_closed(), 5)
    assert set(os.listdir("/proc/self/fd")) <= before  # no descriptor leaked
    assert port.events.empty()  # a close we asked for is not reported as a loss
    again = await open_port(path, 115200)  # the exclusive lock went with it
    again.close()
    await again.wait_closed()


async def test_two_hosts_on_one_jig_the_second_is_busy(pty_pair) -> None:
    _master, path = pty_pair
    first = await open_port(path, 115200)
    try:
        with pytest.raises(PortBusy, match="busy"):
            await open_port(path, 115200)
    finally:
        first.close()
        await first.wait_closed()


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


async def test_a_port_on_a_descriptor_above_1024_reads_and_writes(pty_pair) -> None:
    """select() cannot watch fd >= 1024; a thousand jigs need ports up there."""
    master, path = pty_pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        before = set(os.listdir("/proc/self/fd"))
        port = await open_port(path, 115200)
        opened = {int(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
        assert opened
        assert min(opened) > 1024
        try:
            os.write(master, b"UID:00112233\n")
            assert await read_port(port, 13) == b"UID:00112233\n"
            port.send(b"Init\n")
            assert await read_available(master, 5) == b"Init\n"
        finally:
            port.close()
            await port.wait_closed()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
