"""`linehost workorder close` from the shell: closed, audited with the OS user, refused twice."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

import pytest

from linehost.mqtt.payloads import result_payload
from linehost.store.store import Store
from tests.e2e.harness import jsonl, linehost, write_config

pytestmark = pytest.mark.timeout(120)


def test_close_from_the_shell_is_recorded_and_refused_when_repeated(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    linehost("pki", "init-dev", "--out", pki)
    config = write_config(
        tmp_path / "line.toml", pki=pki, ports={"j1": str(tmp_path / "nowhere")},
        extra='\n[work_order]\nid = "WO-SH-1"\nquantity = 10\n',
    )  # fmt: skip
    unknown = linehost("workorder", "close", "--config", config, check=False)
    assert unknown.returncode != 0
    assert "WO-SH-1 is not in the database" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    async def register() -> None:
        store = await Store.open(
            f"sqlite+aiosqlite:///{tmp_path / 'linehost.db'}",
            line="e2e-line",
            result_payload=result_payload,
        )
        await store.open_work_order("WO-SH-1", 10)
        await store.close()

    asyncio.run(register())
    closed = linehost("workorder", "close", "--config", config)
    assert "work order WO-SH-1 closed by" in closed.stdout
    again = linehost("workorder", "close", "--config", config, check=False)
    assert again.returncode != 0
    assert "closed already" in again.stderr
    status = json.loads(linehost("workorder", "status", "--config", config, "--json").stdout)
    assert status["closed_at"] is not None
    rows = jsonl(linehost("audit", "--config", config, "controls", "--format", "jsonl").stdout)
    assert [(r["event"], r["via"], r["user"]) for r in rows] == [
        ("control_refused", "cli", getpass.getuser()),
        ("work_order_closed", "cli", getpass.getuser()),
        ("control_refused", "cli", getpass.getuser()),
    ]
    assert linehost("audit", "--config", config, "verify", check=False).returncode == 0
