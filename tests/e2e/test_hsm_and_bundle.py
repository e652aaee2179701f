"""`linehost run` as a subprocess with the PAI key in SoftHSM2 (also unplugged mid-run), with a
pre-issued bundle, with a Certification Declaration; start-up refusals; and the PAI key material
never leaking, MQTT included."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.pki.csr import parse_csr
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for
from tests.e2e.preset_sim import PRESET, Identity, write_identities
from tests.mqtt.subscriber import Received, Subscriber

MODULE = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "linehost-e2e"
PIN = "hsm-Pin-Q7x93Lk"  # letters: a PIN of digits could turn up in a log by chance
SO_PIN = "so-Pin-5678"
PIN_ENV = "LINEHOST_E2E_HSM_PIN"
PASSPHRASE = "pass-Phrase-W4nq8Rz"
#: The unplug test's devices: enough that a slow machine still has some when the token is back.
DEVICES_PER_JIG = 24


# --- fixtures and helpers ---------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip loudly, or fail when CI=true: CI must run the HSM tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"SoftHSM2 tests cannot run on CI: {reason}")
    pytest.skip(f"SoftHSM2 tests skipped: {reason}")


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`linehost pki init-dev`: PAA, PAI, their keys and a test CD."""
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    assert (out / "cd.der").is_file()
    return out


@dataclass(frozen=True)
class Hsm:
    """A SoftHSM2 token holding the development PAI key; `pki` has no key file."""

    conf: Path
    pki: Path  # paa.pem, pai.pem, cd.der: what the line host is given
    key_file: Path  # the original PEM, kept only for the leak checks

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory, dev_pki: Path) -> Hsm:
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        unavailable(f"softhsm2-util or {MODULE} missing (apt-get install softhsm2)")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        unavailable("python-pkcs11 is not installed (the hsm extra)")
    assert util is not None
    work = tmp_path_factory.mktemp("e2e-hsm")
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}

    def tool(*args: str | Path) -> None:
        done = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    tool(util, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN)
    pk8 = work / "pai.pk8"
    tool("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", dev_pki / "pai.key", "-out", pk8)
    tool(util, "--import", pk8, "--token", TOKEN, "--label", "pai", "--id", "01", "--pin", PIN)
    pk8.unlink()
    line_pki = work / "line-pki"
    line_pki.mkdir()
    for name in ("paa.pem", "pai.pem", "cd.der"):
        shutil.copy(dev_pki / name, line_pki / name)
    return Hsm(conf, line_pki, dev_pki / "pai.key")


def make_identities(count: int, prefix: str) -> list[Identity]:
    """Chips with their keys already inside, UIDs `<prefix><n>` (16 hex digits)."""
    return [
        Identity(f"{prefix}{i:0{16 - len(prefix)}X}", ec.generate_private_key(ec.SECP256R1()))
        for i in range(count)
    ]


def pre_issue(pki: Path, chips: list[Identity]) -> dict[str, str]:
    """What the PKI provider does ahead of time: a DAC per chip key, UID -> PEM."""

    async def go() -> dict[str, str]:
        issuer = LocalIssuer.load(
            pki / "pai.pem", FileKeySigner.load(pki / "pai.key"), "FFF1", "8000"
        )
        out: dict[str, str] = {}
        for chip in chips:
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .sign(chip.key, hashes.SHA256())
            )
            pem = csr.public_bytes(serialization.Encoding.PEM)
            out[chip.uid] = (await issuer.issue(chip.uid, parse_csr(pem))).pem
        await issuer.aclose()
        return out

    return asyncio.run(go())


@dataclass
class PresetSimRun(SimRun):
    """The simulator with chips from an identities file, recording each delivered CD."""

    identities: Path = Path()
    expect_cd: Path | None = None
    cd_record: Path = field(init=False)

    def start(self) -> PresetSimRun:
        self.cd_record = self.directory / "cd.jsonl"
        args = [
            *PRESET,
            "--identities", str(self.identities),
            "--cd-record", str(self.cd_record),
            "--jigs", str(self.jigs),
            "--personality", "good",
            "--dir", str(self.directory / "jigs"),
            "--record", str(self.record),
            "--paa", str(self.paa),
            "--swap-seconds", str(self.swap_seconds),
            "--linger", str(self.linger),
        ]  # fmt: skip
        if self.expect_cd is not None:
            args += ["--expect-cd", str(self.expect_cd)]
        if self.devices is not None:
            args += ["--devices", str(self.devices)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
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

    def cds_seen(self) -> list[dict[str, Any]]:
        return jsonl(self.cd_record.read_text()) if self.cd_record.exists() else []


def line_config(
    path: Path,
    pki: str,
    ports: dict[str, str],
    *,
    line: str = "pki-line",
    db: Path | None = None,
    extra: str = "",
) -> Path:
    """A station config whose [pki] section is `pki` (TOML lines), plus `extra` sections."""
    database = db or path.parent / "linehost.db"
    jigs = "".join(
        f'[[jigs]]\nname = "{name}"\nstation = "st1"\nport = "{port}"\n'
        for name, port in sorted(ports.items())
    )
    path.write_text(
        f'[line]\nname = "{line}"\nshutdown_grace = 5\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{database}"\n'
        f"[pki]\n{pki}\n"
        "[protocol]\nsync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\n"
        f"{extra}{jigs}"
    )
    return path


def start_host(config: Path, env: dict[str, str] | None = None) -> HostRun:
    """`linehost run` with `env` added to this process's environment."""
    old = dict(os.environ)
    if env is not None:
        os.environ.update(env)
    try:
        return HostRun(config).start()
    finally:
        os.environ.clear()
        os.environ.update(old)


def run_line(
    config: Path, sim: SimRun, env: dict[str, str] | None = None, timeout: float = 90
) -> HostRun:
    """Run the line until the simulator's devices are done; return the stopped host."""
    host = start_host(config, env)
    try:
        sim.wait(timeout=timeout)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    assert "Traceback" not in host.output()
    return host


def attempts_of(config: Path) -> list[dict[str, Any]]:
    return jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)


def assignments_of(config: Path) -> list[dict[str, Any]]:
    return jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)


def openssl_verify_all(pki: Path, pems: list[str], work: Path) -> None:
    files = []
    for i, pem in enumerate(pems):
        files.append(work / f"dac-{i}.pem")
        files[-1].write_text(pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "paa.pem"), "-untrusted", str(pki / "pai.pem"),
         *map(str, files)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK") == len(files)


def key_secrets(key_file: Path, *extra: str) -> dict[str, str]:
    """Every form of the PAI key material that must never show: PEM lines, scalar, extras."""
    pem = key_file.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = scalar.to_bytes(32, "big")
    out = {
        "scalar hex": f"{scalar:064x}",
        "scalar decimal": str(scalar),
        "scalar base64": base64.b64encode(raw).decode()[:40],
        "scalar base64url": base64.urlsafe_b64encode(raw).decode()[:40],
        # the first 36 bytes (48 base64 characters) are the same for every P-256 PKCS#8 key
        "pkcs8 base64": base64.b64encode(pkcs8).decode()[48:88],
    }
    body = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
    out |= {f"PEM line {i}": ln for i, ln in enumerate(body) if len(ln) >= 16}
    out |= {f"secret {i}": s for i, s in enumerate(extra)}
    return out


def dump_database(path: Path) -> str:
    """Every row of every table, as text."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert {"assignments", "attempts", "audit_log", "outbox"} <= set(tables)
        parts = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                parts.append(repr(row))
    return "\n".join(parts)


def assert_no_leak(places: dict[str, str], secrets: dict[str, str]) -> None:
    for where, text in places.items():
        low = text.lower()
        for what, secret in secrets.items():
            assert secret.lower() not in low, f"{what} found in {where}"


# --- MQTT: capture everything the line publishes ------------------------------------------------


def mqtt_section(url: str, prefix: str) -> str:
    # a client id of this test alone: tests running at once (pytest-xdist) on the shared
    # broker would otherwise share `linehost-host-{hostname}-{line}` and take sessions over
    return (
        f'[mqtt]\nurl = "{url}"\ntopic_prefix = "{prefix}"\ndrain_timeout = 5\n'
        f'client_id = "{prefix}-host"\n'
    )


def subscribe_all(url: str, prefix: str) -> Subscriber:
    """A subscriber to everything under `prefix/`, connected before the host starts."""
    return Subscriber(url, [f"{prefix}/#"], f"leak-{token_hex(4)}", persistent=False).start()


def retained_under(url: str, prefix: str, jigs: int) -> list[Received]:
    """What a subscriber arriving after the run is handed: host status and every jig state."""
    late = subscribe_all(url, prefix)
    try:
        late.wait_for(
            lambda got: len({m.topic for m in got if m.retain}) >= jigs + 1,
            10,
            "the retained host status and jig states",
        )
        time.sleep(0.3)  # anything else retained under the prefix
        return late.snapshot()
    finally:
        late.stop()


def wait_for_results(sub: Subscriber, prefix: str, line: str, attempt_ids: set[str]) -> None:
    """Every attempt's result record arrived, and the host said it went offline."""
    results, host = f"{prefix}/{line}/results", f"{prefix}/{line}/host/status"

    def arrived(got: list[Received]) -> bool:
        seen = {m.json()["attempt_id"] for m in got if m.topic == results}
        offline = [m for m in got if m.topic == host and m.json() == {"online": False}]
        return seen >= attempt_ids and bool(offline)

    sub.wait_for(arrived, 15, f"{len(attempt_ids)} results and host offline on {prefix}/")


def _json_text(value: Any) -> Iterator[str]:
    """Every key and scalar of a decoded JSON document (escapes such as \\/ undone)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _json_text(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_text(item)
    else:
        yield str(value)


def mqtt_places(messages: list[Received], kind: str = "MQTT") -> dict[str, str]:
    """Each message's topic, payload and JSON-decoded payload as text, named for the report."""
    places: dict[str, str] = {}
    for i, msg in enumerate(messages):
        where = f"{kind} message {i} on {msg.topic}"
        places[f"{where} (topic)"] = msg.topic
        places[f"{where} (payload)"] = msg.payload.decode("utf-8", "replace")
        try:
            decoded = json.loads(msg.payload)
        except ValueError:
            continue
        places[f"{where} (decoded)"] = "\n".join(_json_text(decoded))
    return places


def assert_no_key_bytes(messages: list[Received], key_file: Path, *extra: str) -> None:
    """Neither the raw private scalar nor an extra secret is in any topic or payload, as bytes."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    raw = {"raw scalar": key.private_numbers().private_value.to_bytes(32, "big")}
    raw |= {f"secret {i} bytes": s.encode() for i, s in enumerate(extra)}
    for i, msg in enumerate(messages):
        for what, secret in raw.items():
            assert secret not in msg.payload, f"{what} in MQTT message {i} on {msg.topic}"
            assert secret not in msg.topic.encode(), f"{what} in MQTT topic {msg.topic}"


# --- PKCS#11 -----------------------------------------------------------------------------------


def hsm_pki(hsm: Hsm) -> str:
    """The [pki] lines for the token's PAI key, the PIN from PIN_ENV."""
    return (
        f'pai_cert = "{hsm.pki / "pai.pem"}"\npaa_cert = "{hsm.pki / "paa.pem"}"\n'
        f'pai_key = "pkcs11:token={TOKEN};object=pai"\npkcs11_module = "{MODULE}"\n'
        f'pkcs11_pin_env = "{PIN_ENV}"\ncd_file = "{hsm.pki / "cd.der"}"\n'
        'vid = "FFF1"\npid = "8000"\n'
    )


@pytest.mark.hsm
@pytest.mark.mqtt
@pytest.mark.timeout(180)
def test_line_signs_with_the_pai_key_in_softhsm_and_delivers_the_cd(
    tmp_path: Path, hsm: Hsm, broker_url: str, prefix: str
) -> None:
    chips = make_identities(8, "A1")
    sim = PresetSimRun(
        tmp_path,
        jigs=4,
        devices=2,
        mix="good",
        paa=hsm.pki / "paa.pem",
        identities=write_identities(tmp_path / "chips.jsonl", chips),
        expect_cd=hsm.pki / "cd.der",
    ).start()
    config = line_config(
        tmp_path / "line.toml", hsm_pki(hsm), sim.ports, extra=mqtt_section(broker_url, prefix)
    )
    sub = subscribe_all(broker_url, prefix)
    try:
        host = run_line(config, sim, env={"SOFTHSM2_CONF": str(hsm.conf), PIN_ENV: PIN})
        attempts = attempts_of(config)
        wait_for_results(sub, prefix, "pki-line", {a["attempt_id"] for a in attempts})
    finally:
        sub.stop()
    log = host.output()
    assert "key_source=pkcs11" in log

    assert sorted(a["uid"] for a in attempts) == sorted(c.uid for c in chips)
    assert {a["outcome"] for a in attempts} == {"provisioned"}, attempts
    confirmed = [a for a in assignments_of(config) if a["status"] == "confirmed"]
    assert len(confirmed) == 8
    stored = {d["uid"]: d["stored_dac_sha256"] for d in sim.devices_seen()}
    assert {a["uid"]: a["dac_sha256"] for a in confirmed} == stored
    openssl_verify_all(hsm.pki, [a["dac_pem"] for a in confirmed], tmp_path)

    # every device received exactly the configured CD (and said 000 only because of it)
    cd = (hsm.pki / "cd.der").read_bytes()
    seen = sim.cds_seen()
    assert len(seen) == 8
    assert {s["cd_sha256"] for s in seen} == {hashlib.sha256(cd).hexdigest()}
    assert {s["uid"] for s in seen} == {c.uid for c in chips}

    verify = linehost("audit", "--config", config, "verify")
    assert "audit verify: OK" in verify.stdout

    live = sub.snapshot()
    results = [m.json() for m in live if m.topic == f"{prefix}/pki-line/results"]
    assert sorted(r["uid"] for r in results) == sorted(c.uid for c in chips)
    assert len({m.topic for m in live if "/jigs/" in m.topic}) == 4
    retained = retained_under(broker_url, prefix, jigs=4)
    secrets = key_secrets(hsm.key_file, PIN)
    assert_no_leak(
        {"log": log, "database": dump_database(tmp_path / "linehost.db"), "audit": verify.stdout}
        | mqtt_places(live)
        | mqtt_places(retained, "retained MQTT"),
        secrets,
    )
    assert_no_key_bytes([*live, *retained], hsm.key_file, PIN)


def finished_attempts(db: Path) -> list[dict[str, Any]]:
    """The ended attempts so far, read from the running host's SQLite file, oldest first."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT uid, outcome, detail, dac_serial, assignment_id FROM attempts "
                "WHERE outcome IS NOT NULL ORDER BY ended_at"
            ).fetchall()
    except sqlite3.Error:  # not migrated yet
        return []
    return [dict(r) for r in rows]


def count(db: Path, outcome: str) -> int:
    return sum(a["outcome"] == outcome for a in finished_attempts(db))


@pytest.mark.hsm
@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hsm_unplugged_mid_run_fails_attempts_cleanly_and_provisioning_resumes(
    tmp_path: Path, hsm: Hsm, broker_url: str, prefix: str
) -> None:
    # A token of its own: SoftHSM2 keeps it in a directory, and taking that directory away is
    # this machine's way of pulling the HSM out (see docs/pki.md).
    tokens = tmp_path / "tokens"
    shutil.copytree(hsm.conf.parent / "tokens", tokens)
    unplugged = tmp_path / "tokens-unplugged"
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    sim = SimRun(
        tmp_path, jigs=2, devices=DEVICES_PER_JIG, mix="good", paa=hsm.pki / "paa.pem",
        swap_seconds=0.4,
    ).start()  # fmt: skip
    config = line_config(
        tmp_path / "line.toml", hsm_pki(hsm), sim.ports, extra=mqtt_section(broker_url, prefix)
    )
    db = tmp_path / "linehost.db"
    sub = subscribe_all(broker_url, prefix)
    host = start_host(config, {"SOFTHSM2_CONF": str(conf), PIN_ENV: PIN})
    try:
        wait_for(lambda: count(db, "provisioned") >= 2, 30, "two devices provisioned")
        tokens.rename(unplugged)
        signed_before = count(db, "provisioned") + 2  # each jig may have one signed in flight
        wait_for(lambda: count(db, "issuer_error") >= 2, 20, "attempts failing on the HSM")

        def status_shows_it() -> dict[str, Any] | None:
            snapshot = json.loads(linehost("status", "--config", config, "--json").stdout)
            failing = [j for j in snapshot["jigs"] if j["last_outcome"] == "issuer_error"]
            return failing[0] if failing else None

        wait_for(status_shows_it, 15, "`linehost status` showing the issuer_error")
        during = status_shows_it()
        assert during is not None
        assert count(db, "provisioned") <= signed_before

        unplugged.rename(tokens)
        resumed_from = count(db, "provisioned")
        wait_for(lambda: count(db, "provisioned") >= resumed_from + 3, 30, "provisioning again")
        sim.wait(timeout=60)
    finally:
        if unplugged.exists():
            unplugged.rename(tokens)
        sim.stop()
        code = host.stop()
    log = host.output()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    attempts = attempts_of(config)
    try:
        wait_for_results(sub, prefix, "pki-line", {a["attempt_id"] for a in attempts})
    finally:
        sub.stop()

    # every device got an outcome: provisioned, or issuer_error while the token was away
    assert len(attempts) == 2 * DEVICES_PER_JIG
    assert {a["outcome"] for a in attempts} == {"provisioned", "issuer_error"}
    ended = finished_attempts(db)
    failed = [a for a in ended if a["outcome"] == "issuer_error"]
    after = ended[ended.index(failed[-1]) + 1 :]
    assert len(after) >= 3
    assert {a["outcome"] for a in after} == {"provisioned"}
    # the attempt that met the dead session says so; the rest say the token is still away
    where = f"PKCS#11 key 'pai' on token '{TOKEN}': "
    first = [a for a in failed if a["detail"].startswith(where + "HSM failed (")]
    assert len(first) == 1
    assert "; cannot reopen: " in first[0]["detail"]
    for attempt in failed:
        if attempt is not first[0]:
            assert attempt["detail"].startswith(where + "HSM unavailable (cannot reopen: ")
    for attempt in failed:
        assert attempt["assignment_id"] is None
        assert attempt["dac_serial"] is None

    # no DAC recorded for, nor stored by, a device whose attempt failed
    lost = {a["uid"] for a in failed}
    assignments = assignments_of(config)
    assert not lost & {a["uid"] for a in assignments}
    stored = {d["uid"]: d["stored_dac_sha256"] for d in sim.devices_seen()}
    assert {uid: stored[uid] for uid in lost} == dict.fromkeys(lost)
    provisioned = {a["uid"] for a in attempts if a["outcome"] == "provisioned"}
    assert {a["uid"]: a["dac_sha256"] for a in assignments} == {
        uid: stored[uid] for uid in provisioned
    }
    assert {a["status"] for a in assignments} == {"confirmed"}
    openssl_verify_all(hsm.pki, [a["dac_pem"] for a in assignments], tmp_path)

    # what the line showed: status during the outage, the log, the jig states and results
    assert during["last_detail"].startswith(where + "HSM ")
    assert during["failed"] >= 1
    assert log.count("event=hsm_lost") == 1
    assert log.count("event=hsm_reopened") == 1
    assert log.index("event=hsm_lost") < log.index("event=hsm_reopened")
    assert log.count("event=issuer_failed") == len(failed)
    live = sub.snapshot()
    states = [m.json() for m in live if m.topic.endswith("/state")]
    showing = [s for s in states if s["last_outcome"] == "issuer_error"]
    assert showing
    assert all(s["last_detail"].startswith(where + "HSM ") for s in showing)
    results = {
        r["attempt_id"]: r
        for r in (m.json() for m in live if m.topic == f"{prefix}/pki-line/results")
    }
    for attempt in attempts:
        sent = results[attempt["attempt_id"]]
        assert (sent["outcome"], sent["detail"]) == (attempt["outcome"], attempt["detail"])
        if attempt["outcome"] == "issuer_error":
            assert sent["dac_serial"] is None
    retained = retained_under(broker_url, prefix, jigs=2)
    final = [m.json() for m in retained if m.topic.endswith("/state")]
    assert {s["last_outcome"] for s in final} == {"provisioned"}  # the line recovered
    assert_no_leak(
        {"log": log, "database": dump_database(db)} | mqtt_places(live),
        key_secrets(hsm.key_file, PIN),
    )
    assert_no_key_bytes(live, hsm.key_file, PIN)


@pytest.mark.hsm
def test_wrong_pin_at_start_is_one_line_and_exit_2(tmp_path: Path, hsm: Hsm) -> None:
    pki = (
        f'pai_cert = "{hsm.pki / "pai.pem"}"\n'
        f'pai_key = "pkcs11:token={TOKEN};object=pai"\npkcs11_module = "{MODULE}"\n'
        f'pkcs11_pin_file = "pin.txt"\nvid = "FFF1"\npid = "8000"\n'
    )
    wrong = "wrong-Pin-K2v8"
    (tmp_path / "pin.txt").write_text(wrong + "\n")
    config = line_config(tmp_path / "line.toml", pki, {"j1": "/nonexistent"})
    proc = subprocess.run(
        _linehost_cmd("run", "--config", config),
        capture_output=True, text=True, env=hsm.env(), timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"linehost: error: PKCS#11 token '{TOKEN}': wrong PIN"
    assert wrong not in proc.stderr + proc.stdout
    # the right PIN but a key the token does not hold: also one line, and the PIN never shown
    (tmp_path / "pin.txt").write_text(PIN + "\n")
    unknown = line_config(tmp_path / "other.toml", pki.replace("object=pai", "object=nope"), {})
    proc = subprocess.run(
        _linehost_cmd("run", "--config", unknown),
        capture_output=True, text=True, env=hsm.env(), timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "key 'nope' on token" in proc.stderr
    assert PIN not in proc.stderr + proc.stdout


def _linehost_cmd(*args: str | Path) -> list[str]:
    from tests.e2e.harness import LINEHOST

    return [*LINEHOST, *map(str, args)]


# --- bundles -----------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A provider's bundle for `good` chips, plus a no-entry and a key-mismatch chip."""

    good: list[Identity]
    no_entry: Identity
    mismatch: Identity
    dacs: dict[str, str]  # UID -> PEM, as pre-issued
    directory: Path
    csv: Path


@pytest.fixture
def bundle(tmp_path: Path, dev_pki: Path) -> Bundle:
    good = make_identities(5, "B0")
    no_entry, mismatch = make_identities(2, "BF")
    decoy = Identity(mismatch.uid, ec.generate_private_key(ec.SECP256R1()))
    dacs = pre_issue(dev_pki, [*good, decoy])
    # (a) the Infineon / keySTREAM directory: <UID>_keyOID=E0F0_DAC.pem, plus the PAI
    folder = tmp_path / "infineon"
    folder.mkdir()
    for chip in (*good[:3], mismatch):
        (folder / f"{chip.uid}_keyOID=E0F0_DAC.pem").write_text(dacs[chip.uid])
    shutil.copy(dev_pki / "pai.pem", folder / "PAI_FFF1_8000.pem")
    # (b) a CSV: inline PEM, a path, and lines that must be rejected
    (tmp_path / "dacs").mkdir()
    (tmp_path / "dacs" / "g4.pem").write_text(dacs[good[4].uid])
    other = tmp_path / "other-pki"
    linehost("pki", "init-dev", "--out", other, "--no-cd")
    foreign = pre_issue(
        other, [Identity("C0FFEE0000000001", ec.generate_private_key(ec.SECP256R1()))]
    )
    quoted = dacs[good[3].uid].replace("\n", "\\n")
    csv_path = tmp_path / "bundle.csv"
    csv_path.write_text(
        "uid,dac_pem_or_path\n"
        f'{good[3].uid},"{quoted}"\n'
        f"{good[4].uid},dacs/g4.pem\n"
        'C0FFEE0000000001,"' + foreign["C0FFEE0000000001"].replace("\n", "\\n") + '"\n'
        "XYZ,dacs/g4.pem\n"
        "C0FFEE0000000002,dacs/missing.pem\n"
    )
    return Bundle(good, no_entry, mismatch, dacs, folder, csv_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bundle_line_delivers_preissued_dacs_only_to_their_chips(
    tmp_path: Path, dev_pki: Path, bundle: Bundle
) -> None:
    chips = [*bundle.good, bundle.no_entry, bundle.mismatch]
    sim = PresetSimRun(
        tmp_path,
        jigs=7,
        devices=1,
        mix="good",
        paa=dev_pki / "paa.pem",
        identities=write_identities(tmp_path / "chips.jsonl", chips),
    ).start()
    pki = (
        f'issuer = "bundle"\npai_cert = "{dev_pki / "pai.pem"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    config = line_config(tmp_path / "line.toml", pki, sim.ports)

    first = linehost("pki", "import-bundle", "--config", config, bundle.directory)
    assert "4 read, 4 added, 0 already in the pool, 0 rejected" in first.stdout
    assert "SKIP" in first.stdout
    assert "PAI_FFF1_8000.pem" in first.stdout
    imported = linehost("pki", "import-bundle", "--config", config, bundle.csv, check=False)
    assert imported.returncode == 1
    rejects = [ln for ln in imported.stdout.splitlines() if ln.startswith("REJECT")]
    assert len(rejects) == 3, imported.stdout
    assert rejects[0].startswith(f"REJECT {bundle.csv}:4: fails the Matter profile")
    assert "authorityKeyIdentifier differs from the PAI" in rejects[0]
    assert rejects[1] == f"REJECT {bundle.csv}:5: UID 'XYZ' is not 8-64 hex digits"
    assert rejects[2].startswith(f"REJECT {bundle.csv}:6: ")
    assert "missing.pem" in rejects[2]
    assert "5 read, 2 added, 0 already in the pool, 3 rejected" in imported.stdout
    # importing both again changes nothing
    again = linehost("pki", "import-bundle", "--config", config, bundle.directory)
    assert "4 read, 0 added, 4 already in the pool, 0 rejected" in again.stdout
    again = linehost("pki", "import-bundle", "--config", config, bundle.csv, check=False)
    assert "5 read, 0 added, 2 already in the pool, 3 rejected" in again.stdout
    pools = linehost("audit", "--config", config, "bundles").stdout
    assert "bundle infineon: 4 of 4 remaining (0 claimed)" in pools
    assert "bundle bundle: 2 of 2 remaining (0 claimed)" in pools

    host = run_line(config, sim)
    attempts = {a["uid"]: a for a in attempts_of(config)}
    assert set(attempts) == {c.uid for c in chips}
    for chip in bundle.good:
        assert attempts[chip.uid]["outcome"] == "provisioned", attempts[chip.uid]
    lost = attempts[bundle.no_entry.uid]
    assert (lost["outcome"], lost["detail"]) == (
        "issuer_error",
        f"no bundle entry for UID {bundle.no_entry.uid}",
    )
    odd = attempts[bundle.mismatch.uid]
    assert odd["outcome"] == "issuer_error"
    assert odd["detail"].startswith(f"bundle DAC for UID {bundle.mismatch.uid} (serial ")
    assert "is for another key" in odd["detail"]
    assert "issuer_failed" in host.output()

    # each good chip holds exactly its pre-issued DAC; nothing reached the other two
    expected = {
        c.uid: hashlib.sha256(
            x509.load_pem_x509_certificate(bundle.dacs[c.uid].encode()).public_bytes(
                serialization.Encoding.DER
            )
        ).hexdigest()
        for c in bundle.good
    }
    stored = {d["uid"]: d["stored_dac_sha256"] for d in sim.devices_seen()}
    assert {u: stored[u] for u in expected} == expected
    assert stored[bundle.no_entry.uid] is None
    assert stored[bundle.mismatch.uid] is None
    assignments = assignments_of(config)
    assert {a["uid"]: a["dac_sha256"] for a in assignments} == expected
    assert {a["status"] for a in assignments} == {"confirmed"}
    openssl_verify_all(dev_pki, [a["dac_pem"] for a in assignments], tmp_path)

    pools = linehost("audit", "--config", config, "bundles").stdout
    assert "bundle infineon: 1 of 4 remaining (3 claimed)" in pools  # the mismatch stays
    assert "bundle bundle: 0 of 2 remaining (2 claimed)" in pools
    verify = linehost("audit", "--config", config, "verify").stdout
    assert "audit verify: OK — 5 DAC(s)" in verify
    assert "bundle infineon: 1 of 4 remaining" in verify
    with sqlite3.connect(tmp_path / "linehost.db") as db:
        linked = db.execute(
            "SELECT COUNT(*) FROM assignments a JOIN bundle_entries b "
            "ON a.bundle_entry_id = b.id AND a.dac_sha256 = b.dac_sha256 AND a.uid = b.uid"
        ).fetchone()[0]
    assert linked == 5


def test_bundle_issuer_needs_no_key_and_refuses_a_foreign_paa(
    tmp_path: Path, dev_pki: Path
) -> None:
    other = tmp_path / "other"
    linehost("pki", "init-dev", "--out", other, "--no-cd")
    pki = (
        f'issuer = "bundle"\npai_cert = "{dev_pki / "pai.pem"}"\n'
        f'paa_cert = "{other / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    config = line_config(tmp_path / "line.toml", pki, {})
    proc = linehost("run", "--config", config, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "fails the Matter attestation profile: PAI" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- start-up checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key_mismatch", "signing key does not match its public key"),
        ("wrong_paa", "fails the Matter attestation profile: PAI"),
        ("bad_cd", "CD file"),
        ("encrypted_no_passphrase", "the key is encrypted and no passphrase was given"),
        ("wrong_passphrase", "wrong passphrase or damaged key"),
    ],
)
def test_start_up_refusals_are_one_line_exit_2(
    tmp_path: Path, dev_pki: Path, case: str, message: str
) -> None:
    other = tmp_path / "other"
    linehost("pki", "init-dev", "--out", other, "--no-cd")
    key, paa, extra = dev_pki / "pai.key", dev_pki / "paa.pem", ""
    if case == "key_mismatch":
        key = other / "pai.key"
    elif case == "wrong_paa":
        paa = other / "paa.pem"
    elif case == "bad_cd":
        (tmp_path / "cd.der").write_bytes(b"\x30\x03\x02\x01\x03")
        extra = f'cd_file = "{tmp_path / "cd.der"}"\n'
    else:
        key = tmp_path / "enc.key"
        _encrypt(dev_pki / "pai.key", key, PASSPHRASE)
        if case == "wrong_passphrase":
            (tmp_path / "pass.txt").write_text("not-it\n")
            extra = 'pai_key_passphrase_file = "pass.txt"\n'
    pki = (
        f'pai_cert = "{dev_pki / "pai.pem"}"\npaa_cert = "{paa}"\npai_key = "{key}"\n'
        f'vid = "FFF1"\npid = "8000"\n{extra}'
    )
    config = line_config(tmp_path / "line.toml", pki, {"j1": "/nonexistent"})
    proc = linehost("run", "--config", config, check=False, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert PASSPHRASE not in proc.stderr


def _encrypt(plain: Path, out: Path, passphrase: str) -> None:
    key = serialization.load_pem_private_key(plain.read_bytes(), None)
    out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
    )


# --- the key never leaks ------------------------------------------------------------------------


@pytest.mark.mqtt
@pytest.mark.timeout(180)
def test_encrypted_file_key_material_never_leaks(
    tmp_path: Path, dev_pki: Path, broker_url: str, prefix: str
) -> None:
    enc = tmp_path / "pai-enc.key"
    _encrypt(dev_pki / "pai.key", enc, PASSPHRASE)
    sim = SimRun(
        tmp_path, jigs=3, devices=2, mix="good,finish_003", paa=dev_pki / "paa.pem"
    ).start()
    pki = (
        f'pai_cert = "{dev_pki / "pai.pem"}"\npaa_cert = "{dev_pki / "paa.pem"}"\n'
        f'pai_key = "{enc}"\npai_key_passphrase_env = "LINEHOST_E2E_PASS"\n'
        f'cd_file = "{dev_pki / "cd.der"}"\nvid = "FFF1"\npid = "8000"\n'
    )
    config = line_config(
        tmp_path / "line.toml", pki, sim.ports, extra=mqtt_section(broker_url, prefix)
    )
    sub = subscribe_all(broker_url, prefix)
    try:
        host = run_line(config, sim, env={"LINEHOST_E2E_PASS": PASSPHRASE})
        attempts = attempts_of(config)
        assert len(attempts) == 6
        assert {a["outcome"] for a in attempts} == {"provisioned", "device_error"}
        wait_for_results(sub, prefix, "pki-line", {a["attempt_id"] for a in attempts})
        # a failing start (wrong passphrase) prints one line, no traceback, no key
        env = {**os.environ, "LINEHOST_E2E_PASS": "wrong"}
        failed = subprocess.run(
            _linehost_cmd("run", "--config", config), capture_output=True, text=True, env=env,
            timeout=60, check=False,
        )  # fmt: skip
        assert failed.returncode == 2
        time.sleep(0.5)  # whatever that start might have published
    finally:
        sub.stop()
    live = sub.snapshot()
    retained = retained_under(broker_url, prefix, jigs=3)
    # what was captured is the whole run: a result per attempt, every jig's states, the host
    results = [m.json() for m in live if m.topic == f"{prefix}/pki-line/results"]
    assert sorted(r["attempt_id"] for r in results) == sorted(a["attempt_id"] for a in attempts)
    assert {r["dac_serial"] for r in results if r["outcome"] == "provisioned"} == {
        a["dac_serial"] for a in attempts if a["outcome"] == "provisioned"
    }
    jig_topics = {m.topic for m in live if "/jigs/" in m.topic}
    assert jig_topics == {f"{prefix}/pki-line/jigs/st1/{j}/state" for j in sim.ports}
    host_status = [m.json()["online"] for m in live if m.topic.endswith("/host/status")]
    assert host_status[0] is True
    assert host_status[-1] is False
    host_topics = {f"{prefix}/pki-line/host/status", f"{prefix}/pki-line/host/outbox"}
    assert {m.topic for m in retained} == jig_topics | host_topics

    export = linehost("audit", "--config", config, "export", "--format", "csv").stdout
    outputs = {
        "log": host.output(),
        "database": dump_database(tmp_path / "linehost.db"),
        "failed start": failed.stdout + failed.stderr,
        "export": export,
        "attempts": linehost("audit", "--config", config, "attempts").stdout,
    }
    outputs |= mqtt_places(live) | mqtt_places(retained, "retained MQTT")
    secrets = key_secrets(dev_pki / "pai.key", PASSPHRASE)
    secrets |= {
        f"encrypted PEM line {i}": ln
        for i, ln in enumerate(enc.read_text().splitlines())
        if len(ln) >= 16 and not ln.startswith("-----")
    }
    assert_no_leak(outputs, secrets)
    assert_no_key_bytes([*live, *retained], dev_pki / "pai.key", PASSPHRASE)
    # the checks are not vacuous: the same scans find the key in the key file itself, and in
    # a message that carried it
    with pytest.raises(AssertionError, match="found in key file"):
        assert_no_leak({"key file": (dev_pki / "pai.key").read_text()}, secrets)
    planted = Received(f"{prefix}/x", (dev_pki / "pai.key").read_bytes(), False, 1)
    with pytest.raises(AssertionError, match="found in MQTT message 0"):
        assert_no_leak(mqtt_places([planted]), secrets)
    key_der = serialization.load_pem_private_key((dev_pki / "pai.key").read_bytes(), None)
    escaped = "".join(f"\\u{ord(c):04x}" for c in base64.b64encode(_der(key_der)).decode())
    as_json = '{"k": "' + escaped + '"}'  # valid JSON that hides the key from a plain grep
    with pytest.raises(AssertionError, match=r"found in MQTT message 0 on .* \(decoded\)"):
        assert_no_leak(mqtt_places([Received(planted.topic, as_json.encode(), False, 1)]), secrets)
    with pytest.raises(AssertionError, match="raw scalar"):
        assert_no_key_bytes([Received(planted.topic, _der(key_der), False, 1)], dev_pki / "pai.key")


def _der(key: Any) -> bytes:
    der: bytes = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der
