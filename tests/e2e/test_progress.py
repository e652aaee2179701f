"""Long-running commands show progress: a live bar at a terminal, plain lines in a pipe.

Run the way an operator does: `linehost pki import-bundle` and `linehost audit export` as
subprocesses, once with stderr on a real pseudo-terminal and once on a pipe.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.e2e.harness import LINEHOST, SimRun, jsonl, linehost
from tests.e2e.test_hsm_and_bundle import line_config, make_identities, pre_issue, run_line

CHIPS = 240  # enough for several redraws of the bar, quick to pre-issue (~0.5 ms each)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory, dev_pki: Path) -> Path:
    """A keySTREAM-style directory of CHIPS pre-issued DACs and the PAI."""
    folder = tmp_path_factory.mktemp("bundle") / "lot-42"
    folder.mkdir()
    for uid, pem in pre_issue(dev_pki, make_identities(CHIPS, "A1")).items():
        (folder / f"{uid}_keyOID=E0F0_DAC.pem").write_text(pem)
    (folder / "PAI_FFF1_8000.pem").write_text((dev_pki / "pai.pem").read_text())
    return folder


def bundle_config(tmp_path: Path, dev_pki: Path) -> Path:
    pki = (
        f'issuer = "bundle"\npai_cert = "{dev_pki / "pai.pem"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    return line_config(tmp_path / "line.toml", pki, {"j1": str(tmp_path / "no-such-port")})


def in_terminal(*args: str | Path, columns: int = 120) -> tuple[int, str, str]:
    """Run linehost with stderr on a pseudo-terminal (stdout on a pipe, as when redirecting
    an export to a file); return exit code, stdout and everything the terminal showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [*LINEHOST, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError as exc:  # EIO: the child closed its end
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=60)
    return code, out, shown.decode(errors="replace")


def test_import_bundle_shows_a_live_bar_at_a_terminal(
    tmp_path: Path, dev_pki: Path, big_bundle: Path
) -> None:
    config = bundle_config(tmp_path, dev_pki)
    code, out, shown = in_terminal("pki", "import-bundle", "--config", config, big_bundle)
    assert code == 0, shown
    assert f"{CHIPS} read, {CHIPS} added" in out
    assert "\x1b[" in shown  # drawn with terminal control sequences, not plain lines
    screen = ANSI.sub("", shown)
    assert "checking DACs" in screen
    assert "adding to the pool" in screen
    # the bar counts the items (DACs + the PAI file) up to the total, then the stored entries
    assert f"{CHIPS + 1}/{CHIPS + 1}" in screen
    assert f"{CHIPS}/{CHIPS}" in screen
    assert "Traceback" not in screen


def test_import_bundle_in_a_pipe_prints_plain_progress_lines(
    tmp_path: Path, dev_pki: Path, big_bundle: Path
) -> None:
    config = bundle_config(tmp_path, dev_pki)
    proc = linehost("pki", "import-bundle", "--config", config, big_bundle)
    lines = proc.stderr.splitlines()
    assert "\x1b[" not in proc.stderr  # a log file gets no escape codes
    assert any(re.fullmatch(rf"checking DACs: {CHIPS + 1} of {CHIPS + 1} \(\d+\.\d s\)", ln)
               for ln in lines), proc.stderr  # fmt: skip
    assert any(re.fullmatch(rf"adding to the pool: {CHIPS} of {CHIPS} \(\d+\.\d s\)", ln)
               for ln in lines), proc.stderr  # fmt: skip
    assert f"{CHIPS} read, {CHIPS} added" in proc.stdout
    # the report on stdout stays clean for scripts
    assert "checking" not in proc.stdout


def test_audit_export_counts_records(tmp_path: Path, dev_pki: Path) -> None:
    sim = SimRun(tmp_path, jigs=2, devices=6, mix="good", paa=dev_pki / "paa.pem").start()
    pki = (
        f'pai_cert = "{dev_pki / "pai.pem"}"\npai_key = "{dev_pki / "pai.key"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    config = line_config(tmp_path / "line.toml", pki, sim.ports)
    run_line(config, sim)
    # at a terminal: a live records counter on stderr, the records on stdout
    code, out, shown = in_terminal("audit", "--config", config, "export", "--format", "jsonl")
    assert code == 0, shown
    assert len(jsonl(out)) == 12
    screen = ANSI.sub("", shown)
    assert "exporting records" in screen
    assert "12/" in screen  # rich's count of rows written so far (no total is known ahead)
    assert "Traceback" not in screen
    # in a pipe: one plain line with the final count, nothing mixed into the records
    proc = linehost("audit", "--config", config, "attempts", "--format", "jsonl")
    assert len(jsonl(proc.stdout)) == 12
    assert re.search(r"^exporting records: 12 \(\d+\.\d s\)$", proc.stderr, re.M), proc.stderr
