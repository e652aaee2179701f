"""Run linehost and the simulator as real processes, the way an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.waiting import eventually_blocking

LINEHOST = [sys.executable, "-m", "linehost.cli"]
SIM = [sys.executable, "-m", "linehost.sim"]


def linehost(
    *args: str | Path, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one `linehost` command to completion."""
    proc = subprocess.run(
        [*LINEHOST, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"linehost {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def jsonl(text: str) -> list[dict[str, Any]]:
    """Parse JSON lines output."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class SimRun:
    """`python -m linehost.sim` in its own process, as real jigs would be."""

    directory: Path
    jigs: int
    devices: int | None
    mix: str
    paa: Path
    seed: int = 7
    swap_seconds: float = 0.2
    linger: float = 3.0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    ports: dict[str, str] = field(default_factory=dict)

    @property
    def record(self) -> Path:
        return self.directory / "devices.jsonl"

    def start(self) -> SimRun:
        args = [
            *SIM,
            "--jigs", str(self.jigs),
            *(["--mix", self.mix] if self.mix else []),  # "" with --plan in `extra`
            "--dir", str(self.directory / "jigs"),
            "--record", str(self.record),
            "--paa", str(self.paa),
            "--seed", str(self.seed),
            "--swap-seconds", str(self.swap_seconds),
            "--linger", str(self.linger),
            *self.extra,
        ]  # fmt: skip
        if self.devices is not None:
            args += ["--devices", str(self.devices)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        while len(self.ports) < self.jigs:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"simulator died: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            name, path = line.split()
            self.ports[name] = path
        return self

    def wait(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"simulator still running after {timeout} s") from None
        assert self.proc.returncode == 0, self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def devices_seen(self) -> list[dict[str, Any]]:
        return jsonl(self.record.read_text()) if self.record.exists() else []


@dataclass
class HostRun:
    """`linehost run --config FILE` in its own process."""

    config: Path
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    def start(self) -> HostRun:
        self.log = self.config.with_suffix(".log")
        handle = self.log.open("w")
        self.proc = subprocess.Popen(
            [*LINEHOST, "--log-level", "debug", "run", "--config", str(self.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        handle.close()
        return self

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"linehost run ignored SIGTERM for {timeout} s") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""


def assert_no_traceback(log: str) -> None:
    """Fail with the lines around the first Python traceback in a host's log, if any."""
    where = log.find("Traceback")
    assert where < 0, log[max(0, where - 2000) : where + 4000]


def write_config(
    path: Path,
    *,
    pki: Path,
    ports: dict[str, str],
    database_url: str | None = None,
    line: str = "e2e-line",
    protocol: str = "sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\n",
    extra: str = "",
) -> Path:
    """A station config for simulated jigs (two jigs per station)."""
    url = database_url or f"sqlite+aiosqlite:///{path.parent / 'linehost.db'}"
    jigs = "".join(
        f'[[jigs]]\nname = "{name}"\nstation = "st{i // 2 + 1}"\nport = "{port}"\n'
        for i, (name, port) in enumerate(sorted(ports.items(), key=lambda kv: int(kv[0][1:])))
    )
    path.write_text(
        f'[line]\nname = "{line}"\nshutdown_grace = 5\n'
        f'[database]\nurl = "{url}"\n'
        f'[pki]\npai_cert = "{pki / "pai.pem"}"\npai_key = "{pki / "pai.key"}"\n'
        f'paa_cert = "{pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        f"[protocol]\n{protocol}{extra}\n{jigs}"
    )
    return path


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll until predicate() is truthy."""
    eventually_blocking(predicate, within=timeout, what=what, every=0.1)
