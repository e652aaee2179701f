"""`linehost sim` options, in-process and as `python -m linehost.sim` in its own process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from linehost.commands.sim import sim_options
from linehost.sim.cli import PRECISE_TIMERS_UP_TO, add_arguments, loop_factory, run_simulator
from tests.waiting import eventually

from .helpers import Ca, MiniHost


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="linehost sim")
    add_arguments(parser)
    return parser.parse_args(argv)


def provision(path: str, pai: Ca) -> str | None:
    host = MiniHost(path)
    try:
        return host.provision(pai).finish
    finally:
        host.close()


def test_defaults() -> None:
    args = parse()
    assert args.jigs == 1
    assert args.devices is None
    assert args.personality is None  # a good device
    assert args.mix is None
    assert args.swap_seconds == 0.2
    assert args.swap_jitter == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--personality", "nope"], "unknown device personality 'nope'"),
        (["--mix", "good,nope"], "unknown device personality 'nope'"),
        (["--mix", "good:0"], "bad weight"),
        (["--jigs", "0"], "must be at least 1"),
        (["--jigs", "x"], "not an integer"),
        (["--devices", "-1"], "must not be negative"),
        (["--swap-seconds", "-0.1"], "must not be negative"),
        (["--swap-seconds", "nan"], "must not be negative"),
        (["--swap-jitter", "-1"], "must not be negative"),
        (["--personality", "good", "--mix", "good"], "not allowed with"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


async def test_run_simulator_in_process(
    tmp_path: Path, pai: Ca, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = tmp_path / "ports"
    record = tmp_path / "record.jsonl"
    args = parse(
        "--jigs", "2", "--devices", "1", "--dir", str(ports), "--record", str(record),
        "--swap-seconds", "0", "--linger", "0.1", "--mix", "good,crlf", "--seed", "3",
    )  # fmt: skip
    task = asyncio.create_task(run_simulator(sim_options(args)))
    await eventually(lambda: (ports / "ports.json").exists() or task.done(), what="ports.json")
    assert not task.done(), task
    manifest = json.loads((ports / "ports.json").read_text())
    results = await asyncio.gather(
        *(asyncio.to_thread(provision, path, pai) for path in manifest.values())
    )
    assert await asyncio.wait_for(task, 10) == 0
    assert results == ["000", "000"]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"j1 {ports / 'j1'}", f"j2 {ports / 'j2'}"]
    rows = [json.loads(ln) for ln in record.read_text().splitlines()]
    assert sorted(r["personality"] for r in rows) == ["crlf", "good"]
    assert not (ports / "ports.json").exists()
    assert not _lexists(ports / "j1")


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def sim_process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "linehost.sim", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_subprocess_runs_a_line_to_completion(tmp_path: Path, pai: Ca) -> None:
    record = tmp_path / "r.jsonl"
    proc = sim_process(
        "--jigs", "2", "--devices", "2", "--swap-seconds", "0", "--dir", str(tmp_path / "d"),
        "--record", str(record), "--linger", "0.2", "--personality", "noisy",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ports = dict(proc.stdout.readline().split() for _ in range(2))
        assert sorted(ports) == ["j1", "j2"]
        for path in ports.values():
            assert provision(path, pai) == "000"
            assert provision(path, pai) == "000"
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "4 devices, 4 provisioned" in err
    rows = [json.loads(ln) for ln in record.read_text().splitlines()]
    assert len(rows) == 4
    assert all(r["personality"] == "noisy" and r["finish_code"] == 0 for r in rows)


def test_subprocess_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = sim_process("--jigs", "3", "--dir", str(tmp_path))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        paths = [ln.split()[1] for ln in lines]
        assert all(os.path.islink(p) for p in paths)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "3 devices, 0 provisioned" in err  # the ones in the jigs, recorded as cancelled
    assert list(tmp_path.iterdir()) == []


def test_subprocess_bad_paa_is_one_line_error(tmp_path: Path) -> None:
    proc = sim_process("--paa", str(tmp_path / "missing.pem"))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert err.startswith("error: cannot read PAA certificate")
    assert len(err.strip().splitlines()) == 1


def test_small_lines_wait_in_select_for_exact_timers() -> None:
    """epoll rounds a paced answer's timer up to a whole millisecond; select() does not, but
    takes only descriptors below 1024, so a big line stays on epoll."""
    import selectors

    factory = loop_factory(PRECISE_TIMERS_UP_TO)
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop._selector, selectors.SelectSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()
    assert loop_factory(PRECISE_TIMERS_UP_TO + 1) is None


def test_subprocess_past_the_select_limit_runs_on_epoll(tmp_path: Path, pai: Ca) -> None:
    jigs = 520  # two descriptors each: the last jigs' are past select()'s 1024
    proc = sim_process("--jigs", str(jigs), "--dir", str(tmp_path / "d"), "--swap-seconds", "0")
    try:
        assert proc.stdout is not None
        ports = dict(proc.stdout.readline().split() for _ in range(jigs))
        assert provision(ports[f"j{jigs}"], pai) == "000"  # the last jig's descriptors are high
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"{jigs + 1} devices, 1 provisioned" in err
