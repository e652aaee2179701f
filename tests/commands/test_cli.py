"""`linehost` argument handling: --help of every command, argument errors, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linehost.cli import build_parser, main

COMMANDS = [
    ["run"],
    ["demo"],
    ["db", "upgrade"],
    ["audit", "--config", "x", "export"],
    ["audit", "--config", "x", "attempts"],
    ["audit", "--config", "x", "uid"],
    ["audit", "--config", "x", "dac"],
    ["audit", "--config", "x", "verify"],
    ["audit", "--config", "x", "bundles"],
    ["pki", "init-dev"],
    ["pki", "import-bundle"],
    ["dashboard"],
    ["label"],
    ["sim"],
    ["status"],
    ["workorder", "status"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([*command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: linehost ")
    assert " ".join(c for c in command if c not in ("--config", "x")) in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run"], "the following arguments are required: --config"),
        (["demo", "--jigs", "0"], "must be at least 1"),
        (["demo", "--jigs", "two"], "not a whole number"),
        (["nosuch"], "invalid choice"),
        (["audit", "--config", "x", "export", "--format", "xml"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


def test_bad_vid_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "init-dev", "--out", str(tmp_path), "--vid", "XYZ1"]) == 2
    err = capsys.readouterr().err
    assert err == "linehost: error: --vid must be exactly 4 hex digits, got 'XYZ1'\n"
    assert not list(tmp_path.iterdir())


def test_bad_listen_and_mqtt_of_demo_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dashboard", "nowhere"]) == 2
    assert capsys.readouterr().err.startswith("linehost: error: --dashboard must be HOST:PORT")
    assert main(["demo", "--mqtt", "http://x"]) == 2
    assert capsys.readouterr().err.startswith("linehost: error: --mqtt must look like mqtt://")


def test_missing_config_file_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    done = subprocess.run(
        [sys.executable, "-m", "linehost.cli", "status", "--once", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == f"linehost: error: {missing}: no such file\n"


def test_init_dev_writes_the_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "init-dev", "--out", str(tmp_path), "--vid", "fff2", "--no-cd"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"development PKI written to {tmp_path}")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"paa.pem", "paa.key", "pai.pem", "pai.key"} <= names
    assert (tmp_path / "pai.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert not (tmp_path / "cd.der").exists()
