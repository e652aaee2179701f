"""Two line hosts, one PostgreSQL: two `linehost run` processes (8 simulated jigs each, two
simulator processes) provision at the same time, then the database shows that no DAC, serial,
public key or bundle entry was given twice, and that a key presented on both lines at once was
assigned once."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for
from tests.e2e.pg import postgres_database, query
from tests.e2e.preset_sim import Identity, write_identities
from tests.e2e.test_hsm_and_bundle import PresetSimRun, make_identities, pre_issue

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

JIGS = 8


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def host_config(path: Path, line: str, url: str, pki: str, ports: dict[str, str]) -> Path:
    """A station config: `line`, the shared database, [pki] lines `pki`, two jigs a station."""
    jigs = "".join(
        f'[[jigs]]\nname = "{name}"\nstation = "st{i // 2 + 1}"\nport = "{port}"\n'
        for i, (name, port) in enumerate(sorted(ports.items(), key=lambda kv: int(kv[0][1:])))
    )
    path.write_text(
        f'[line]\nname = "{line}"\nshutdown_grace = 5\n'
        f'[database]\nurl = "{url}"\n'
        f"[pki]\n{pki}\n"
        "[protocol]\nsync_interval = 0.2\ncsr_timeout = 10\nresult_timeout = 5\n"
        f"{jigs}"
    )
    return path


@dataclass
class Line:
    name: str
    sim: PresetSimRun
    config: Path
    host: HostRun | None = None


def run_two_lines(
    tmp_path: Path, dev_pki: Path, url: str, pki: str, chips: dict[str, list[Identity]]
) -> list[Line]:
    """Start both simulators, then both hosts at once (on an empty database both migrate
    at start-up: the advisory lock lets one do it); wait for every device; stop both."""
    lines: list[Line] = []
    try:
        for name, mine in chips.items():
            work = tmp_path / name
            work.mkdir()
            sim = PresetSimRun(
                work,
                jigs=JIGS,
                devices=len(mine) // JIGS,
                mix="good",
                paa=dev_pki / "paa.pem",
                identities=write_identities(work / "chips.jsonl", mine),
            )
            lines.append(Line(name, sim, work / "line.toml"))
            sim.start()
            host_config(lines[-1].config, name, url, pki, sim.ports)
        for line in lines:
            line.host = HostRun(line.config).start()
        for line in lines:
            wait_for(functools.partial(all_done, line.sim), 150, f"every device of {line.name}")
    finally:
        # Hosts first: a port vanishing under a host is another test's subject.
        codes = [line.host.stop() if line.host else None for line in lines]
        for line in lines:
            line.sim.stop()
    for line, code in zip(lines, codes, strict=True):
        assert line.host is not None
        out = line.host.output()
        assert code == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    return lines


def all_done(sim: SimRun) -> bool:
    """Every device of the simulator is recorded as done (complete lines of its record)."""
    done = sim.record.read_text().count("\n") if sim.record.exists() else 0
    return done >= sim.jigs * (sim.devices or 0)


def assert_nothing_given_twice(url: str) -> list[dict[str, Any]]:
    """Every DAC, serial and public key in at most one assignment; returns the assignments."""
    rows = query(url, "SELECT * FROM assignments ORDER BY id")
    assert rows
    for column in ("dac_serial", "dac_sha256", "public_key_sha256", "uid"):
        twice = [v for v, n in Counter(r[column] for r in rows).items() if n > 1]
        assert twice == [], f"{column} given twice: {twice}"
    return rows


def assert_sims_hold_what_the_database_says(lines: list[Line], rows: list[dict[str, Any]]) -> None:
    """Each stored DAC is the one confirmed for that UID (committed before delivery)."""
    by_uid = {r["uid"]: r for r in rows}
    for line in lines:
        for device in line.sim.devices_seen():
            if device["stored_dac_serial"] is None:
                continue
            row = by_uid[device["uid"]]
            assert row["status"] == "confirmed", row
            assert row["dac_serial"] == device["stored_dac_serial"]
            assert row["dac_sha256"] == device["stored_dac_sha256"]


def outcomes(config: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    records = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    for a in sorted(records, key=lambda a: a["started_at"]):
        found.setdefault(a["uid"], []).append(a["outcome"])
    return found


@pytest.mark.timeout(240)
def test_two_hosts_local_issuer_one_database(tmp_path: Path, dev_pki: Path) -> None:
    a = make_identities(JIGS * 3, "A0")
    b = make_identities(JIGS * 3, "B0")
    # Each line's first device on every jig carries the key of the other line's: cloned
    # chips (other UID, same key) meeting the two hosts at the same moment.
    clones = JIGS
    b[:clones] = [Identity(chip.uid, a[i].key) for i, chip in enumerate(b[:clones])]
    pki = (
        f'pai_cert = "{dev_pki / "pai.pem"}"\npai_key = "{dev_pki / "pai.key"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    with postgres_database() as url:
        lines = run_two_lines(tmp_path, dev_pki, url, pki, {"line-a": a, "line-b": b})
        rows = assert_nothing_given_twice(url)
        assert_sims_hold_what_the_database_says(lines, rows)
        by_uid = {r["uid"]: r for r in rows}
        tried = outcomes(lines[0].config)  # one database: every line's attempts
        assert set(tried) == {c.uid for c in a + b}
        # every clone pair: one device has the key's DAC, the other was refused
        for first, second in zip(a[:clones], b[:clones], strict=True):
            owners = [c.uid for c in (first, second) if c.uid in by_uid]
            assert len(owners) == 1, (first.uid, second.uid, tried[first.uid], tried[second.uid])
            loser = second.uid if owners[0] == first.uid else first.uid
            assert tried[loser] == ["duplicate_key"], tried[loser]
            assert tried[owners[0]] == ["provisioned"]
        # everything else: provisioned once, on its own line
        for chip in a[clones:] + b[clones:]:
            assert tried[chip.uid] == ["provisioned"], tried[chip.uid]
            assert by_uid[chip.uid]["status"] == "confirmed"
        assert len(rows) == len(a) + len(b) - clones
        assert {r["line"] for r in rows} == {"line-a", "line-b"}
        chains = query(url, "SELECT line, count(*) AS n, max(seq) AS top FROM audit_log GROUP BY 1")
        assert {c["line"]: c["n"] == c["top"] for c in chains} == {"line-a": True, "line-b": True}
        verify = linehost("audit", "--config", lines[1].config, "verify")
        assert f"audit verify: OK — {len(rows)} DAC(s)" in verify.stdout


@pytest.mark.timeout(240)
def test_two_hosts_draw_from_one_bundle_pool(tmp_path: Path, dev_pki: Path) -> None:
    per_line = JIGS * 2
    twins = make_identities(4, "C0")  # the same chips (UID and key) on both lines at once
    a = twins + make_identities(per_line - len(twins), "A0")
    b = twins + make_identities(per_line - len(twins), "B0")
    chips = {c.uid: c for c in a + b}
    folder = tmp_path / "bundle"
    folder.mkdir()
    for uid, pem in pre_issue(dev_pki, list(chips.values())).items():
        (folder / f"{uid}_keyOID=E0F0_DAC.pem").write_text(pem)
    pki = (
        f'issuer = "bundle"\npai_cert = "{dev_pki / "pai.pem"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    with postgres_database() as url:
        importer = host_config(tmp_path / "import.toml", "line-a", url, pki, {})
        linehost("db", "upgrade", "--config", importer)
        imported = linehost("pki", "import-bundle", "--config", importer, folder)
        assert f"{len(chips)} added" in imported.stdout, imported.stdout
        lines = run_two_lines(tmp_path, dev_pki, url, pki, {"line-a": a, "line-b": b})
        rows = assert_nothing_given_twice(url)
        assert_sims_hold_what_the_database_says(lines, rows)
        assert {r["uid"] for r in rows} == set(chips)  # every chip got its DAC, once
        assert {r["status"] for r in rows} == {"confirmed"}
        entries = {e["id"]: e for e in query(url, "SELECT * FROM bundle_entries")}
        assert len(entries) == len(chips)
        used = Counter(r["bundle_entry_id"] for r in rows)
        assert set(used) == set(entries)
        assert set(used.values()) == {1}  # no bundle entry in two assignments
        for row in rows:
            entry = entries[row["bundle_entry_id"]]
            assert (entry["uid"], entry["dac_sha256"]) == (row["uid"], row["dac_sha256"])
            assert entry["claimed_by"] == row["line"]  # the host that claimed it recorded it
        tried = outcomes(lines[0].config)
        for twin in twins:
            # one line issued it; the other either found it claimed (issuer_error) or found
            # the same chip's live assignment and sent that same DAC again
            assert tried[twin.uid].count("provisioned") >= 1, tried[twin.uid]
            assert set(tried[twin.uid]) <= {"provisioned", "issuer_error"}, tried[twin.uid]
        verify = linehost("audit", "--config", lines[0].config, "verify")
        assert f"audit verify: OK — {len(chips)} DAC(s)" in verify.stdout
