"""Steps around a device: real subprocesses that succeed, fail, hang and print a lot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from linehost.line.steps import (
    OUTPUT_HEAD_LINES,
    OUTPUT_LINE_CHARS,
    OUTPUT_TAIL_LINES,
    StepCommand,
    run_step,
)

SCRIPT = Path(__file__).with_name("step_script.py")


def tool(tmp_path: Path, mode: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, str(SCRIPT), "--log", str(tmp_path / "log.jsonl"), "--mode", mode,
            "--", *args)  # fmt: skip


def logged(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


VALUES = {"port": "/dev/pts/7", "uid": "00AB", "jig": "j1", "station": "st1", "probe": "066D"}


async def test_success_fills_placeholders_and_keeps_output(tmp_path: Path) -> None:
    step = StepCommand("post", tool(tmp_path, "ok", "{jig}@{station}", "{port}", "{uid}",
                                    "{probe}", "{serial_num}"), timeout=10)  # fmt: skip
    result = await run_step(step, VALUES)
    assert result.ok
    assert result.exit_code == 0
    assert result.detail == "post step ok"
    assert logged(tmp_path)[0]["argv"] == ["j1@st1", "/dev/pts/7", "00AB", "066D", ""]
    assert "Download verified successfully" in result.output
    transcript = result.transcript()
    assert transcript[0].startswith("[post_step] post step ok")
    assert all(line.startswith("[post_step] ") for line in transcript)


async def test_failure_reports_exit_code_and_stderr(tmp_path: Path) -> None:
    result = await run_step(StepCommand("pre", tool(tmp_path, "fail"), timeout=10), VALUES)
    assert not result.ok
    assert result.exit_code == 3
    assert result.detail == "pre step failed: exit code 3"
    assert "Error: No STM32 target found!" in result.output  # stderr is captured too
    assert "No STM32 target found" in result.summary()


async def test_hang_is_killed_at_the_timeout_with_its_children(tmp_path: Path) -> None:
    # A shell-less wrapper that starts a grandchild which also hangs: the whole group dies.
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(SCRIPT)!r}, '--mode', 'hang'])\n"
        "print('started', flush=True)\n"
        "time.sleep(3600)\n"
    )
    started = time.monotonic()
    result = await run_step(StepCommand("pre", (sys.executable, str(wrapper)), 0.8), {})
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.timed_out
    assert result.exit_code is None
    assert result.detail == "pre step timed out after 0.8 s"
    assert "started" in result.output
    assert elapsed < 5, elapsed  # not waiting for the grandchild's open pipe


async def test_flood_of_output_is_bounded(tmp_path: Path) -> None:
    result = await run_step(StepCommand("post", tool(tmp_path, "flood"), timeout=30), VALUES)
    assert result.ok
    assert len(result.output) == OUTPUT_HEAD_LINES + 1 + OUTPUT_TAIL_LINES
    assert any(line.startswith("<") and "lines of output dropped" in line for line in result.output)
    assert result.output[-1].startswith("progress line 19999")
    assert all(len(line) <= OUTPUT_LINE_CHARS for line in result.output)


async def test_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    step = StepCommand("pre", tool(tmp_path, "ok", f"; touch {marker}", "$(touch {uid})"), 10)
    result = await run_step(step, {"uid": str(marker)})
    assert result.ok
    assert not marker.exists()
    assert logged(tmp_path)[0]["argv"] == [f"; touch {marker}", f"$(touch {marker})"]


async def test_missing_program_is_a_failed_step_not_a_crash(tmp_path: Path) -> None:
    result = await run_step(StepCommand("pre", (str(tmp_path / "no-such-tool"),), 5), {})
    assert not result.ok
    assert result.exit_code is None
    assert "cannot start" in result.detail


async def test_cwd_is_the_config_folder(tmp_path: Path) -> None:
    step = StepCommand("post", (sys.executable, "-c", "import os; print(os.getcwd())"), 5, tmp_path)
    result = await run_step(step, {})
    assert result.output == (str(tmp_path),)


@pytest.mark.parametrize("bad", [[], [""], ["flash", "{nope}"], ["flash", "{"]])
def test_config_rejects_bad_commands(bad: list[str]) -> None:
    from linehost.config import parse_config
    from linehost.errors import ConfigError

    raw = {
        "line": {"name": "l"},
        "pki": {"pai_cert": "a", "pai_key": "b", "vid": "FFF1", "pid": "8000"},
        "steps": {"pre_command": bad},
    }
    with pytest.raises(ConfigError, match=r"steps\.pre_command"):
        parse_config(raw, Path("/etc/line.toml"))


def test_config_resolves_steps_jig_over_station_over_line(tmp_path: Path) -> None:
    from linehost.config import parse_config

    raw = {
        "line": {"name": "l"},
        "pki": {"pai_cert": "a", "pai_key": "b", "vid": "FFF1", "pid": "8000"},
        "steps": {"pre_command": ["./flash.sh", "{probe}"], "pre_timeout": 30,
                  "post_command": ["app-flash", "{uid}"]},
        "stations": {"st2": {"post_command": ["st2-flash"], "post_timeout": 9}},
        "work_order": {"id": "WO-7", "quantity": 10, "vid": "fff2"},
        "metrics": {"listen": "127.0.0.1:9464"},
        "jigs": [
            {"name": "j1", "station": "st1", "port": "/dev/a", "probe": "P1"},
            {"name": "j2", "station": "st2", "port": "/dev/b"},
            {"name": "j3", "station": "st2", "port": "/dev/c", "pre_command": ["mine"],
             "pre_timeout": 2},
        ],
    }  # fmt: skip
    config = parse_config(raw, tmp_path / "line.toml")
    j1, j2, j3 = (config.steps_for(j) for j in config.jigs)
    assert j1.pre_command == (str(tmp_path / "flash.sh"), "{probe}")  # next to the config
    assert j1.post_command == ("app-flash", "{uid}")  # looked up on PATH
    assert (j1.pre_timeout, j1.post_timeout) == (30, 120)
    assert j2.pre_command == j1.pre_command  # the station inherits [steps]
    assert (j2.post_command, j2.post_timeout) == (("st2-flash",), 9)
    assert (j3.pre_command, j3.pre_timeout, j3.post_command) == (("mine",), 2, ("st2-flash",))
    assert config.work_order is not None
    assert config.work_order.vid == "FFF2"


def test_config_rejects_a_station_without_jigs() -> None:
    from linehost.config import parse_config
    from linehost.errors import ConfigError

    raw = {
        "line": {"name": "l"},
        "pki": {"pai_cert": "a", "pai_key": "b", "vid": "FFF1", "pid": "8000"},
        "stations": {"nowhere": {"pre_command": ["x"]}},
        "jigs": [{"name": "j1", "station": "st1", "port": "/dev/a"}],
    }
    with pytest.raises(ConfigError, match="nowhere"):
        parse_config(raw, Path("/etc/line.toml"))
