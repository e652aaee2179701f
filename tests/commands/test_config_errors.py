"""`linehost` on a config with several mistakes: every problem, one line each, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linehost.config import ConfigProblems, load_config
from linehost.errors import ConfigError

THREE_MISTAKES = """
[line]
name = "l 1"
[pki]
pai_cert = "pki/pai.pem"
pai_key = "pki/pai.key"
vid = "FFFFF"
pid = "8000"
[protocol]
csr_timeout = -1
[[jigs]]
name = "j1"
station = "st1"
port = "jigs/j1"
"""


def test_three_mistakes_in_three_tables_are_all_named(tmp_path: Path) -> None:
    path = tmp_path / "line.toml"
    path.write_text(THREE_MISTAKES)
    with pytest.raises(ConfigProblems) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert caught.value.problems == lines
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert [line.split(": ")[1] for line in lines] == [
        "line.name",
        "pki.vid",
        "protocol.csr_timeout",
    ]
    assert "must be exactly 4 hex digits" in lines[1]


def test_one_mistake_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "line.toml"
    path.write_text(
        THREE_MISTAKES.replace('"l 1"', '"l1"').replace("-1", "5").replace("FFFFF", "FFF1")
    )
    load_config(path)  # the fixed file is valid
    path.write_text(THREE_MISTAKES.replace('"l 1"', '"l1"').replace("-1", "5"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert not isinstance(caught.value, ConfigProblems)
    assert str(caught.value).startswith(f"{path}: pki.vid: ")
    assert "\n" not in str(caught.value)


def test_cli_prints_each_problem_on_its_own_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "line.toml"
    path.write_text(THREE_MISTAKES)
    done = subprocess.run(
        [sys.executable, "-m", "linehost.cli", "db", "upgrade", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    for line, key in zip(lines, ("line.name", "pki.vid", "protocol.csr_timeout"), strict=True):
        assert line.startswith(f"linehost: error: {path}: {key}: ")
    assert "Traceback" not in done.stderr
