"""Fixtures for the simulator tests: a tiny PKI, and a guard against leaked file descriptors."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from .helpers import Ca, make_root


def _open_fds() -> dict[str, str]:
    fds: dict[str, str] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return fds


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Fail a test that leaves a pty, pipe or file open."""
    before = _open_fds()
    yield
    gc.collect()
    leaked = {
        fd: target
        for fd, target in _open_fds().items()
        if before.get(fd) != target and target.startswith(("/dev/pt", "/tmp", "pipe:"))
    }
    assert not leaked, f"leaked file descriptors: {leaked}"


@pytest.fixture(scope="session")
def paa() -> Ca:
    return make_root()


@pytest.fixture(scope="session")
def pai(paa: Ca) -> Ca:
    return paa.sub_ca("Test PAI")
