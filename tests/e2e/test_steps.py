"""Pre/post commands around every device, end to end: `linehost run` against the simulator.

Each failure mode ends in its documented state: a failing or hanging post step gives the
outcome `post_step_failed` with the DAC confirmed; a failing or hanging pre step leaves the jig
in `pre_step_failed` (output visible in `linehost status`), retried after a back-off.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config

SCRIPT = Path(__file__).parents[1] / "line" / "step_script.py"
FAST = "sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\n"


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def command(log: Path, mode_file: Path, mode: str, *args: str) -> str:
    argv = [sys.executable, str(SCRIPT), "--log", str(log), "--mode-file", str(mode_file),
            "--mode", mode, "--", *args]  # fmt: skip
    return json.dumps(argv)


def steps_toml(tmp_path: Path, *, pre: str | None, post: str | None, extra: str = "") -> str:
    lines = ["[steps]"]
    if pre is not None:
        pre_args = ("{jig}", "{port}", "{probe}", "{uid}")
        pre_argv = command(tmp_path / "pre.jsonl", tmp_path / "pre.mode", pre, *pre_args)
        lines.append(f"pre_command = {pre_argv}")
    if post is not None:
        post_args = ("{jig}", "{station}", "{port}", "{uid}")
        lines.append(
            f"post_command = "
            f"{command(tmp_path / 'post.jsonl', tmp_path / 'post.mode', post, *post_args)}"
        )
    return "\n".join(lines) + "\n" + extra


def read_log(path: Path) -> list[dict[str, Any]]:
    return jsonl(path.read_text()) if path.exists() else []


def transcripts(config: Path) -> dict[str, str]:
    db = sqlite3.connect(config.parent / "linehost.db")
    try:
        return dict(db.execute("SELECT attempt_id, transcript FROM attempts").fetchall())
    finally:
        db.close()


def status(config: Path) -> dict[str, Any]:
    """`linehost status --json`; empty while the host has not created the database yet."""
    proc = linehost("status", "--config", config, "--json", check=False)
    if proc.returncode != 0:
        assert "not at the current schema" in proc.stderr, proc.stderr
        return {"jigs": [{"state": None, "last_detail": None}]}
    snapshot: dict[str, Any] = json.loads(proc.stdout)
    return snapshot


def run_line(
    tmp_path: Path, dev_pki: Path, *, jigs: int, devices: int, toml: str
) -> tuple[SimRun, HostRun, Path]:
    sim = SimRun(tmp_path, jigs=jigs, devices=devices, mix="good", paa=dev_pki / "paa.pem").start()
    config = write_config(
        tmp_path / "line.toml", pki=dev_pki, ports=sim.ports, protocol=FAST, extra=toml
    )
    return sim, HostRun(config).start(), config


def finish(sim: SimRun, host: HostRun, timeout: float = 90) -> None:
    try:
        sim.wait(timeout=timeout)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    assert "Traceback" not in host.output()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pre_and_post_steps_run_around_every_device(tmp_path: Path, dev_pki: Path) -> None:
    toml = steps_toml(tmp_path, pre="flood", post="ok")
    sim, host, config = run_line(tmp_path, dev_pki, jigs=2, devices=3, toml=toml)
    finish(sim, host)

    devices = sim.devices_seen()
    attempts = jsonl(linehost("audit", "--config", config, "attempts").stdout)
    assignments = jsonl(linehost("audit", "--config", config, "export").stdout)
    assert len(devices) == 6
    assert {a["outcome"] for a in attempts} == {"provisioned"}
    assert len(attempts) == 6
    assert {a["status"] for a in assignments} == {"confirmed"}

    # the post step ran once per device, after its result, with the placeholders filled in
    posts = read_log(tmp_path / "post.jsonl")
    by_uid = {a["uid"]: a for a in attempts}
    assert sorted(p["argv"][3] for p in posts) == sorted(by_uid)
    for post in posts:
        jig, station, port, uid = post["argv"]
        assert (by_uid[uid]["jig"], by_uid[uid]["station"]) == (jig, station)
        assert port == sim.ports[jig]
    # a pre step ran before each device: at least once per device, per jig
    pres = read_log(tmp_path / "pre.jsonl")
    for jig in sim.ports:
        mine = [p for p in pres if p["argv"][0] == jig]
        assert len(mine) >= 3, (jig, mine)
        assert all(p["argv"][1] == sim.ports[jig] for p in mine)
    # both outputs are in each attempt's transcript; the flood is cut short
    for attempt_id, text in transcripts(config).items():
        assert "[pre_step] pre step ok" in text, attempt_id
        assert "lines of output dropped>" in text
        assert "[post_step] post step ok" in text
        assert "Download verified successfully" in text
        assert len(text.splitlines()) < 700


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mode", "detail"),
    [("fail", "post step failed: exit code 3"), ("hang", "post step timed out after 1 s")],
)
def test_failing_post_step_is_post_step_failed_and_the_dac_stays_confirmed(
    tmp_path: Path, dev_pki: Path, mode: str, detail: str
) -> None:
    toml = steps_toml(tmp_path, pre=None, post=mode, extra="post_timeout = 1\n")
    sim, host, config = run_line(tmp_path, dev_pki, jigs=1, devices=2, toml=toml)
    finish(sim, host)

    attempts = jsonl(linehost("audit", "--config", config, "attempts").stdout)
    assignments = jsonl(linehost("audit", "--config", config, "export").stdout)
    assert len(attempts) == 2
    assert {a["outcome"] for a in attempts} == {"post_step_failed"}
    assert all(a["detail"].startswith(detail) for a in attempts), attempts
    # the device stored its DAC: the assignment is confirmed all the same
    assert len(assignments) == 2
    assert {a["status"] for a in assignments} == {"confirmed"}
    stored = {d["uid"]: d["stored_dac_serial"] for d in sim.devices_seen()}
    assert {a["uid"]: a["dac_serial"] for a in assignments} == stored
    if mode == "fail":
        assert "No STM32 target found" in attempts[0]["detail"]
    text = "\n".join(transcripts(config).values())
    assert f"[post_step] {detail}" in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_failing_pre_step_shows_pre_step_failed_and_is_retried(
    tmp_path: Path, dev_pki: Path
) -> None:
    mode = tmp_path / "pre.mode"
    mode.write_text("hang")
    toml = steps_toml(tmp_path, pre="ok", post=None, extra="pre_timeout = 2\npre_retry = 0.3\n")
    sim, host, config = run_line(tmp_path, dev_pki, jigs=1, devices=2, toml=toml)
    try:

        def jig() -> dict[str, Any]:
            found: dict[str, Any] = status(config)["jigs"][0]
            return found if found["state"] is not None else {"state": None, "last_detail": None}

        wait_for(
            lambda: (
                jig()["state"] == "pre_step_failed"
                and "timed out after 2 s" in (jig()["last_detail"] or "")
            ),
            60,
            "pre_step_failed after a hanging pre step",
        )

        def tries(kind: str) -> int:
            return len([t for t in read_log(tmp_path / "pre.jsonl") if t["mode"] == kind])

        wait_for(
            lambda: tries("hang") >= 2, 30, "the hanging pre step tried again after a back-off"
        )
        mode.write_text("fail")

        def failing_shown() -> bool:
            # One snapshot: with a 0.3 s back-off the jig is soon back in `pre_step` (retrying).
            now = jig()
            return now["state"] == "pre_step_failed" and "No STM32 target found" in (
                now["last_detail"] or ""
            )

        wait_for(failing_shown, 90, "pre_step_failed with the failing step's output in status")
        # no device was provisioned, no attempt recorded while the pre step fails
        assert jsonl(linehost("audit", "--config", config, "attempts").stdout) == []
        assert tries("fail") >= 1
        mode.write_text("ok")
        finish(sim, host)
    finally:
        sim.stop()
        host.kill()

    attempts = jsonl(linehost("audit", "--config", config, "attempts").stdout)
    assert [a["outcome"] for a in attempts] == ["provisioned", "provisioned"]
    assert read_log(tmp_path / "pre.jsonl")[-1]["mode"] == "ok"
    final = status(config)["jigs"][0]
    assert final["state"] == "stopped"
    assert final["ok"] == 2
