"""`linehost status` renders its live table in a real terminal (tmux) during a real run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import HostRun, SimRun, linehost, wait_for, write_config

FAST = "sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\n"


def _need_tmux() -> str:
    found = shutil.which("tmux")
    if found is None:
        message = "tmux is not installed: the `linehost status` terminal test did NOT run"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true makes this an error)", pytrace=False)
        pytest.skip(message + " — apt-get install tmux")
    return found


def ok_counts(screen: str) -> list[int]:
    """The `ok` column of every jig row (station st1, jigs j1/j2)."""
    counts = []
    for line in screen.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        if len(cells) > 7 and cells[1] == "st1" and cells[2] in ("j1", "j2"):
            counts.append(int(cells[6]))
    return counts


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_status_table_updates_live_under_tmux(tmp_path: Path) -> None:
    tmux = _need_tmux()
    pki = tmp_path / "pki"
    linehost("pki", "init-dev", "--out", pki)
    sim = SimRun(tmp_path, jigs=2, devices=None, mix="good", paa=pki / "paa.pem").start()
    config = write_config(tmp_path / "line.toml", pki=pki, ports=sim.ports, protocol=FAST)
    host = HostRun(config).start()
    session = f"linehost-status-{os.getpid()}"
    socket_env = {**os.environ, "TMUX_TMPDIR": str(tmp_path)}
    try:
        wait_for(lambda: (tmp_path / "linehost.db").exists(), 30, "the database")
        time.sleep(1.0)  # migrations done
        command = f"{sys.executable} -m linehost.cli status --config {config} --interval 0.5"
        subprocess.run(
            [tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "30", command],
            check=True,
            env=socket_env,
        )
        screens: list[str] = []

        def shows_two_jigs() -> bool:
            screen = subprocess.run(
                [tmux, "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, env=socket_env,
            ).stdout  # fmt: skip
            screens.append(screen)
            return len(ok_counts(screen)) == 2 and "line e2e-line" in screen

        wait_for(shows_two_jigs, 30, "the status table with both jigs")
        first = screens[-1]
        assert "state" in first
        assert "in state" in first
        assert "last outcome" in first
        assert re.search(r"provisioning|waiting_for_device|waiting_for_swap", first), first
        before = sum(ok_counts(first))
        # live: the table redraws by itself as devices are provisioned
        wait_for(
            lambda: shows_two_jigs() and sum(ok_counts(screens[-1])) >= before + 2,
            60,
            "the ok counts growing on screen",
        )
        assert "provisioned" in screens[-1]
        (tmp_path / "status-screen.txt").write_text(screens[-1])
        subprocess.run([tmux, "send-keys", "-t", session, "C-c"], check=True, env=socket_env)
        wait_for(
            lambda: (
                subprocess.run(
                    [tmux, "has-session", "-t", session], capture_output=True, env=socket_env
                ).returncode
                != 0
            ),
            10,
            "linehost status to quit on Ctrl-C",
        )
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True, env=socket_env)
        sim.stop()
        host.stop()
