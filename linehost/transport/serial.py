"""Jig ports: open any pyserial URL, frame what arrives, turn backend errors into ours."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import serial
import serial_asyncio_fast
import structlog

from linehost.backoff import Backoff
from linehost.errors import PortBusy, PortGone, PortMissing, TransportError
from linehost.protocol.framing import Frame, LineFramer

RECONNECT_MIN: Final = 0.5
RECONNECT_MAX: Final = 10.0
RECONNECT_JITTER: Final = 0.2
OPEN_TIMEOUT: Final = 10.0
#: Open files a jig may need (its port, a reopen in flight) and those the rest of the host needs.
FDS_PER_JIG: Final = 4  # the port, pyserial's abort pipe pair, a reopen in flight
FDS_RESERVED: Final = 256

_log = structlog.get_logger("linehost.transport")


def reopen_backoff() -> Backoff:
    """The pacing of reopens of a missing, busy or lost port."""
    return Backoff(low=RECONNECT_MIN, high=RECONNECT_MAX, jitter=RECONNECT_JITTER)


@dataclass(frozen=True, slots=True)
class PortLost:
    """Queue item: the port closed or failed; `reason` is one line for the log."""

    reason: str


PortEvent = list[Frame] | PortLost


class JigPort(asyncio.Protocol):
    """An open jig port: received lines arrive on `events`, lines go out with `send`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: asyncio.Queue[PortEvent] = asyncio.Queue()
        self._framer = LineFramer()
        self._transport: asyncio.Transport | None = None
        self._lost = False
        #: Loop-clock time of the last read that completed lines (host-added latency starts here).
        self.received_at = 0.0
        self._made: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        port = transport.get_extra_info("serial")
        if isinstance(port, serial.Serial) and isinstance(getattr(port, "fd", None), int):
            # pyserial's read select()s twice per call: slow, and fails for fds >= 1024.
            port.read = _direct_reader(port.fd)
        if not self._made.done():
            self._made.set_result(None)

    def data_received(self, data: bytes) -> None:
        frames = self._framer.feed(data)
        if frames:
            self.received_at = time.monotonic()  # asyncio's loop clock
            self.events.put_nowait(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            reason = _one_line(exc) if exc is not None else "port closed"
            self.events.put_nowait(PortLost(reason))

    def eof_received(self) -> bool | None:
        # A socket:// serial server hung up: treat like an unplug.
        self.connection_lost(None)
        return False

    # our side
    @property
    def is_open(self) -> bool:
        """False once the port was lost or closed."""
        return self._transport is not None and not self._lost

    def send(self, lines: list[str]) -> None:
        """Write lines, LF-terminated, in one write; a dead port is reported via `events`."""
        if self._transport is None or self._lost:
            return
        try:
            self._transport.write(("\n".join(lines) + "\n").encode("ascii", "replace"))
        except (OSError, serial.SerialException) as exc:
            self.connection_lost(exc)

    def close(self) -> None:
        """Close the port; idempotent."""
        if self._transport is not None:
            self._transport.close()
        self._lost = True


async def open_port(
    url: str, baudrate: int, *, factory: Callable[[str], JigPort] = JigPort
) -> JigPort:
    """Open a jig port (device path, pty, socket://...); raise PortMissing/PortBusy/PortGone."""
    loop = asyncio.get_running_loop()
    port = factory(url)
    kwargs: dict[str, object] = {"baudrate": baudrate}
    if "://" not in url:
        # Two line hosts on one jig would corrupt both conversations.
        kwargs["exclusive"] = True
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            await serial_asyncio_fast.create_serial_connection(loop, lambda: port, url, **kwargs)
            # connection_made runs on a later loop turn; lines sent before it would be lost.
            await port._made
    except TimeoutError:
        raise PortMissing(f"{url}: open timed out after {OPEN_TIMEOUT:.0f} s") from None
    except (serial.SerialException, OSError, ValueError) as exc:
        raise classify_open_error(url, exc) from None
    return port


def classify_open_error(url: str, exc: BaseException) -> TransportError:
    """Map a backend error on open to PortMissing or PortBusy with a one-line message."""
    code = getattr(exc, "errno", None)
    text = _one_line(exc)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        return PortMissing(f"{url}: port not found")
    if code in (errno.EBUSY, errno.EACCES, errno.EPERM) or "lock" in text.lower():
        why = "permission denied" if code in (errno.EACCES, errno.EPERM) else "port is busy"
        return PortBusy(f"{url}: {why}")
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT) or "refused" in text:
        return PortMissing(f"{url}: serial server unreachable ({text})")
    return PortGone(f"{url}: cannot open ({text})")


def _direct_reader(fd: int) -> Callable[[int], bytes]:
    """A read for a non-blocking posix port, called when the loop says it is readable."""

    def read(size: int = 1) -> bytes:
        try:
            data = os.read(fd, size)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            raise serial.SerialException(f"read failed: {exc}") from exc
        if not data:
            # The same words as pyserial: a pty whose other side is gone, an unplugged adapter.
            raise serial.SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)"
            )
        return data

    return read


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def ensure_fd_limit(jigs: int) -> int:
    """Raise the soft RLIMIT_NOFILE when too low for `jigs` ports, saying so; return the limit."""
    needed = jigs * FDS_PER_JIG + FDS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        _log.error("fd_limit_too_low", soft=soft, hard=hard, needed=needed, detail=str(exc))
        return soft
    if target < needed:
        _log.error("fd_limit_too_low", soft=target, hard=hard, needed=needed, jigs=jigs)
    else:
        _log.warning("fd_limit_raised", soft_was=soft, soft=target, hard=hard, jigs=jigs)
    return target
