"""Checkpoints and inclusion proofs from a real `linehost run` with the simulator and MQTT; the
proof checked by `check-proof` and by an independent verifier written from docs/audit.md."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from linehost.evidence.checkpoint import load_public_key
from linehost.evidence.proof import check_proof
from tests.e2e.harness import HostRun, SimRun, linehost, write_config
from tests.e2e.pg import postgres_database
from tests.mqtt.subscriber import Subscriber

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


# --- an independent verifier, written from docs/audit.md alone ------------------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes | None:
    """Recompute the root by descending the tree shape (RFC 9162 split rule), recursively."""

    def walk(i: int, n: int, p: list[bytes]) -> bytes | None:
        if n == 1:
            return leaf if not p else None
        if not p:
            return None
        k = 1
        while k * 2 < n:
            k *= 2
        sibling, rest = p[-1], p[:-1]
        if i < k:
            below = walk(i, k, rest)
            return None if below is None else _h(b"\x01" + below + sibling)
        below = walk(i - k, n - k, rest)
        return None if below is None else _h(b"\x01" + sibling + below)

    return walk(index, size, path) if 0 <= index < size else None


def independent_check(proof: dict[str, Any], pubkey_pem: bytes) -> bool:
    try:
        return _independent_check(proof, pubkey_pem)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False


def _independent_check(proof: dict[str, Any], pubkey_pem: bytes) -> bool:
    if proof["format"] != "linehost-audit-proof/1":
        return False
    cp = proof["checkpoint"]
    key = serialization.load_pem_public_key(pubkey_pem)
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if cp["key_id"] != hashlib.sha256(spki).hexdigest():
        return False
    six = ("at", "head_hash", "line", "root_hash", "seq", "tree_size")
    body = "{" + ",".join(f'"{k}":{json.dumps(cp[k])}' for k in six) + "}"
    message = b"linehost-audit-checkpoint/1\n" + body.encode("ascii")
    signature = base64.b64decode(cp["signature"], validate=True)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey) and cp["algorithm"] == "ed25519":
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey) and cp["algorithm"] == "ecdsa-p256-sha256":
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    if proof["line"] != cp["line"]:
        return False
    rows: list[dict[str, Any]] = []
    for entry in proof["entries"]:
        leaf = _h(b"\x00" + entry["row"].encode("utf-8"))
        path = [bytes.fromhex(x) for x in entry["audit_path"]]
        if any(x != x.lower() or len(x) != 64 for x in entry["audit_path"]):
            return False
        if _root_from_path(entry["leaf_index"], cp["tree_size"], leaf, path) != bytes.fromhex(
            cp["root_hash"]
        ):
            return False
        row = json.loads(entry["row"])
        if row["seq"] != entry["leaf_index"] + 1 or row["line"] != cp["line"]:
            return False
        if not isinstance(row["data"], dict):
            return False
        rows.append(row)
    rows.sort(key=lambda r: r["seq"])
    fields = {"uid", "status", "dac_serial", "dac_sha256", "dac_pem", "pai_sha256", "vid",
              "pid", "line", "station", "jig", "attempt_id", "issued_at", "confirmed_at",
              "work_order"}  # fmt: skip
    if not proof["assignments"]:
        return False
    for record in proof["assignments"]:
        if set(record) != fields:
            return False
        mine = [
            r
            for r in rows
            if r["entity"] == "assignment" and r["entity_id"] == record["dac_serial"]
        ]
        issued = [r for r in mine if r["event"] == "assignment_issued"]
        if len(issued) != 1:
            return False
        for name in ("uid", "dac_serial", "dac_sha256", "pai_sha256", "vid", "pid", "line",
                     "station", "jig", "attempt_id", "work_order", "issued_at"):  # fmt: skip
            if record[name] != issued[0]["data"][name]:
                return False
        if record["status"] != mine[-1]["data"]["status"]:
            return False
        confirmed = [r for r in mine if r["event"] == "assignment_confirmed"]
        expected = None
        if confirmed:
            attempt = confirmed[-1]["data"]["attempt_id"]
            ended = [r for r in rows if r["entity"] == "attempt" and r["event"] == "attempt_ended"
                     and r["entity_id"] == attempt]  # fmt: skip
            if len(ended) != 1:
                return False
            expected = ended[0]["data"]["ended_at"]
        if record["confirmed_at"] != expected:
            return False
        pem = record["dac_pem"]
        lines = pem.split("\n")
        der = base64.b64decode("".join(lines[1:-2]), validate=True)
        b64 = base64.b64encode(der).decode()
        wrapped = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
        if pem != "-----BEGIN CERTIFICATE-----\n" + wrapped + "-----END CERTIFICATE-----\n":
            return False
        if hashlib.sha256(der).hexdigest() != record["dac_sha256"]:
            return False
    return True


# --- the run -----------------------------------------------------------------------------


def mutations(proof: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One changed byte at a time: every byte of each record field, and of each audit path."""
    out = []

    def flip(text: str, i: int) -> str:
        c = text[i]
        return text[:i] + ("1" if c != "1" else "2") + text[i + 1 :]

    for n, record in enumerate(proof["assignments"]):
        for name, value in record.items():
            if value is None:
                changed = json.loads(json.dumps(proof))
                changed["assignments"][n][name] = "2026-01-01T00:00:00.000000Z"
                out.append((f"assignments[{n}].{name}=null->x", changed))
                continue
            step = 7 if name == "dac_pem" else 1
            for i in range(0, len(value), step):
                changed = json.loads(json.dumps(proof))
                changed["assignments"][n][name] = flip(value, i)
                out.append((f"assignments[{n}].{name}[{i}]", changed))
    for n, entry in enumerate(proof["entries"]):
        for k, node in enumerate(entry["audit_path"]):
            for i in range(len(node)):
                changed = json.loads(json.dumps(proof))
                changed["entries"][n]["audit_path"][k] = flip(node, i)
                out.append((f"entries[{n}].audit_path[{k}][{i}]", changed))
        for i in range(0, len(entry["row"]), 5):
            changed = json.loads(json.dumps(proof))
            changed["entries"][n]["row"] = flip(entry["row"], i)
            out.append((f"entries[{n}].row[{i}]", changed))
        changed = json.loads(json.dumps(proof))
        changed["entries"][n]["leaf_index"] += 1
        out.append((f"entries[{n}].leaf_index", changed))
    return out


@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_run_checkpoints_and_a_proof_that_verifies_offline(
    tmp_path: Path, dev_pki: Path, broker_url: str, prefix: str, database: str
) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database()) if database == "postgres" else None
        run_and_prove(tmp_path, dev_pki, broker_url, prefix, url)


def run_and_prove(
    tmp_path: Path, dev_pki: Path, broker_url: str, prefix: str, url: str | None
) -> None:
    keys = tmp_path / "audit-key"
    made = linehost("audit", "keygen", "--out", keys)
    pubkey = keys / "audit.pub"
    assert made.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "key_id " in made.stdout
    checkpoints = tmp_path / "checkpoints"
    sim = SimRun(tmp_path, jigs=4, devices=5, mix="good:4,finish_003:1", paa=dev_pki / "paa.pem")
    sim.start()
    extra = (
        f'[mqtt]\nurl = "{broker_url}"\ntopic_prefix = "{prefix}"\n'
        f'client_id = "{prefix}-host"\n'  # never shared with a test running at once (xdist)
        f'[audit]\nkey = "{keys / "audit.key"}"\ncheckpoint_dir = "{checkpoints}"\n'
        "checkpoint_every = 10\ncheckpoint_interval = 1\n"
    )
    config = write_config(
        tmp_path / "line.toml", pki=dev_pki, ports=sim.ports, extra=extra, database_url=url
    )
    host = HostRun(config).start()
    try:
        sim.wait(timeout=120)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    log = host.output()
    assert "audit_checkpoint" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    files = sorted(checkpoints.glob("*.json"))
    assert len(files) >= 2, log[-3000:]  # during the run and the final one

    done = linehost("audit", "--config", config, "verify", "--checkpoints", checkpoints,
                    "--audit-pubkey", pubkey)  # fmt: skip
    assert f"{len(files)} signed checkpoint(s) hold" in done.stdout

    # The retained MQTT checkpoint is the newest file, and matches docs/asyncapi.yaml.
    topic = f"{prefix}/e2e-line/audit/checkpoint"
    sub = Subscriber(broker_url, [topic], f"t-{secrets.token_hex(4)}", persistent=False).start()
    try:
        sub.wait_for(lambda ms: bool(ms), 10, "the retained checkpoint")
    finally:
        sub.stop()
    message = sub.snapshot()[0]
    assert message.retain
    assert message.payload + b"\n" == files[-1].read_bytes()
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    schema = {**doc["components"]["schemas"]["AuditCheckpoint"], "components": doc["components"]}
    jsonschema.Draft7Validator(schema).validate(message.json())

    device = next(d for d in sim.devices_seen() if d.get("dac_serial") or d.get("uid"))
    out = tmp_path / "proof.json"
    linehost("audit", "--config", config, "prove", "--uid", device["uid"], "--out", out)
    ok = linehost("audit", "check-proof", out, "--audit-pubkey", pubkey)
    assert "check-proof: OK" in ok.stdout
    proof = json.loads(out.read_text())
    assert proof["assignments"][0]["uid"] == device["uid"].upper()
    assert independent_check(proof, pubkey.read_bytes())

    # Any changed byte of the record or the path fails, in linehost and in the independent check.
    public = load_public_key(pubkey)
    changes = mutations(proof)
    assert len(changes) > 500
    for what, changed in changes:
        problems, _ = check_proof(changed, public)
        assert problems, what
        assert not independent_check(changed, pubkey.read_bytes()), what
    # And through the command line, for a few of them.
    for what, changed in changes[:: max(1, len(changes) // 4)]:
        bad = tmp_path / f"bad-{secrets.token_hex(3)}.json"
        bad.write_text(json.dumps(changed))
        failed = linehost("audit", "check-proof", bad, "--audit-pubkey", pubkey, check=False)
        assert failed.returncode == 1, what
        assert "FAIL" in failed.stdout, what
