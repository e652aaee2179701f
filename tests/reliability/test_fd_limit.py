"""`linehost run` raises a too-low RLIMIT_NOFILE for its jigs, and says so."""

from __future__ import annotations

import resource
import subprocess
import sys

SCRIPT = """
import resource
from linehost.logs import configure_logging
from linehost.transport.serial import ensure_fd_limit
configure_logging("info")
print(ensure_fd_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
"""


def _low_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def test_a_low_soft_limit_is_raised_for_a_thousand_jigs_and_logged() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, preexec_fn=_low_limit, check=True,
    )  # fmt: skip
    limit, soft = map(int, proc.stdout.split())
    needed = 1000 * 4 + 256
    assert limit == soft == (needed if hard == resource.RLIM_INFINITY else min(needed, hard))
    assert "fd_limit_raised" in proc.stderr
    assert "soft_was=256" in proc.stderr


def test_a_sufficient_limit_is_left_alone() -> None:
    from linehost.transport.serial import ensure_fd_limit

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ensure_fd_limit(1) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
