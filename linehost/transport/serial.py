"""Jig ports on serialx: open any serialx URL, deliver raw bytes, turn backend errors into ours."""

from __future__ import annotations

import asyncio
import errno
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import serialx
import structlog

from linehost.backoff import Backoff
from linehost.errors import PortBusy, PortGone, PortMissing, TransportError

RECONNECT_MIN: Final = 0.5
RECONNECT_MAX: Final = 10.0
RECONNECT_JITTER: Final = 0.2
OPEN_TIMEOUT: Final = 10.0
#: A jig whose device stopped reading must not hold its port (and its lock) for long on close.
CLOSE_TIMEOUT: Final = 2.0
#: Open files a jig may need and those the rest of the host needs.
FDS_PER_JIG: Final = 4  # the port, a reopen in flight, a step command's pipes
FDS_RESERVED: Final = 256

_log = structlog.get_logger("linehost.transport")


def reopen_backoff() -> Backoff:
    """The pacing of reopens of a missing, busy or lost port."""
    return Backoff(low=RECONNECT_MIN, high=RECONNECT_MAX, jitter=RECONNECT_JITTER)


@dataclass(frozen=True, slots=True)
class PortLost:
    """Queue item: the port closed or failed; `reason` is one line for the log."""

    reason: str


class JigPort(asyncio.Protocol):
    """An open jig port: raw chunks arrive on `events`, bytes go out with `send`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: asyncio.Queue[bytes | PortLost] = asyncio.Queue()
        #: Loop-clock time of the last read (host-added latency starts here).
        self.received_at = 0.0
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_at = time.monotonic()  # asyncio's loop clock
        self.events.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self.events.put_nowait(PortLost(_one_line(exc) if exc is not None else "port closed"))
        if not self._closed.done():
            self._closed.set_result(None)

    def eof_received(self) -> bool | None:
        # A socket:// or rfc2217:// serial server hung up: close, reported like an unplug.
        return False

    # our side
    @property
    def is_open(self) -> bool:
        """False once the port was lost or closed."""
        return self._transport is not None and not self._lost

    def send(self, data: bytes) -> None:
        """Write raw bytes; a dead port is reported via `events`, never raised."""
        if self._transport is None or self._lost:
            return
        try:
            self._transport.write(data)
        except (OSError, serialx.SerialException) as exc:
            self.connection_lost(exc)

    def close(self) -> None:
        """Close the port (pending bytes drain for at most CLOSE_TIMEOUT); idempotent."""
        self._lost = True
        if self._transport is not None:
            self._transport.close()
        elif not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Return once the descriptor or socket is released (after `close` or a loss)."""
        await self._closed


async def open_port(
    url: str, baudrate: int, *, factory: Callable[[str], JigPort] = JigPort
) -> JigPort:
    """Open a jig port (device path, pty, socket://, rfc2217://); raise PortMissing/Busy/Gone."""
    loop = asyncio.get_running_loop()
    port = factory(url)
    device = "://" not in url
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            await serialx.create_serial_connection(
                loop,
                lambda: port,
                url,
                baudrate=baudrate,
                # Two line hosts on one jig would corrupt both conversations.
                exclusive=device,
                close_timeout=CLOSE_TIMEOUT,
                # Linux: ASYNC_LOW_LATENCY; serialx skips it quietly where a tty (a pty) has none.
                low_latency=True,
            )
    except TimeoutError:
        raise PortMissing(f"{url}: open timed out after {OPEN_TIMEOUT:.0f} s") from None
    except (serialx.SerialException, OSError, ValueError) as exc:
        raise classify_open_error(url, exc) from None
    return port


def classify_open_error(url: str, exc: BaseException) -> TransportError:
    """Map a backend error on open to PortMissing, PortBusy or PortGone with one line."""
    code = getattr(exc, "errno", None)
    text = _one_line(exc)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        return PortMissing(f"{url}: port not found")
    if code in (errno.EBUSY, errno.EACCES, errno.EPERM) or "locked" in text.lower():
        why = "permission denied" if code in (errno.EACCES, errno.EPERM) else "port is busy"
        return PortBusy(f"{url}: {why}")
    if isinstance(exc, ConnectionError | TimeoutError) or code in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    ):
        return PortMissing(f"{url}: serial server unreachable ({text})")
    return PortGone(f"{url}: cannot open ({text})")


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


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
