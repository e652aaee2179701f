"""The jig end of a simulated serial cable: a raw pty master published at a stable symlink."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import termios
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Final

_log = logging.getLogger(__name__)

#: Bytes the host has not read yet beyond which further device output is dropped (room for a
#: `flood` device's 10 MB, so the lines after it still reach a host that reads).
MAX_UNREAD: Final = 16 << 20
_READ_SIZE: Final = 65536


class PtyPort:
    """A pty pair whose slave appears at `link` (like /dev/serial/by-id/...) while it is open.

    The master is non-blocking and driven by the running loop; received bytes go to `on_data`.
    The harness keeps its own slave fd open so the master never sees EIO when no host is attached.
    """

    def __init__(self, link: Path, on_data: Callable[[bytes], None]) -> None:
        self.link = link
        self._on_data = on_data
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path: str | None = None
        self._out = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        """True while the port exists (the link resolves)."""
        return self._master is not None

    @property
    def device_path(self) -> str | None:
        """The current /dev/pts/N, or None while unplugged."""
        return self._slave_path

    @property
    def unsent(self) -> int:
        """Bytes written but not yet accepted by the pty."""
        return len(self._out)

    def open(self) -> None:
        """Create the pty pair and publish it at `link`; needs a running loop."""
        if self._master is not None:
            return
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            tty.setraw(master, termios.TCSANOW)
            tty.setraw(slave, termios.TCSANOW)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(path, tmp)
            os.replace(tmp, self.link)
            loop.add_reader(master, self._on_readable)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._loop = loop
        self._master, self._slave, self._slave_path = master, slave, path

    def close(self) -> None:
        """Unplug: remove the link and destroy the pty; the host's reads fail from now on."""
        if self._master is None:
            return
        with contextlib.suppress(FileNotFoundError):
            # Only remove the link if it still names our pty (a sibling may have replaced it).
            if os.readlink(self.link) == self._slave_path:
                self.link.unlink()
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = self._slave_path = None
        self._out.clear()

    def write(self, data: bytes) -> None:
        """Queue bytes for the host; dropped while unplugged or when the host reads nothing."""
        if self._master is None or not data:
            return
        if self._out:
            if len(self._out) < MAX_UNREAD:
                self._out += data
            return
        try:
            sent = os.write(self._master, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            _log.warning("pty_write_failed", extra={"link": str(self.link), "error": str(exc)})
            return
        if sent < len(data):
            self._out += data[sent:]
            assert self._loop is not None
            self._loop.add_writer(self._master, self._on_writable)

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # no slave open at this instant; ours keeps this from repeating
            raise
        if data:
            self._on_data(data)

    def _on_writable(self) -> None:
        assert self._master is not None
        assert self._loop is not None
        try:
            sent = os.write(self._master, self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            _log.warning("pty_write_failed", extra={"link": str(self.link), "error": str(exc)})
            sent = len(self._out)
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._master)


def ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-file limit towards `needed` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
