"""The Checkpointer against a real database: resume from the stored frontier, refuse to sign
an edited chain, never overwrite a file; the audit key sources; the `[audit]` section."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from linehost.config import parse_config
from linehost.errors import ConfigError, PkiError
from linehost.evidence.checkpoint import (
    ECDSA_P256,
    ED25519,
    generate_key_pair,
    load_public_key,
    open_audit_key,
    sign_checkpoint,
    verify_checkpoint,
)
from linehost.evidence.checkpointer import Checkpointer
from linehost.evidence.rows import stored_checkpoints
from linehost.evidence.verify import verify_against_checkpoints
from linehost.protocol.outcomes import Outcome
from linehost.store.engine import create_engine
from tests.store.realdacs import dev_pki, provision

OK = Outcome.PROVISIONED
BODY = {"line": "l1", "seq": 3, "tree_size": 3, "head_hash": "a" * 64, "root_hash": "b" * 64,
        "at": "2026-12-02T03:00:00.000000Z"}  # fmt: skip


@pytest.mark.timeout(120)
async def test_resumes_from_its_frontier_and_refuses_an_edited_chain(
    db_url: str, tmp_path: Path
) -> None:
    pki = dev_pki(tmp_path / "pki")
    key_path, pub_path, _ = generate_key_pair(tmp_path / "key")
    directory = tmp_path / "cp"
    engine = create_engine(db_url)
    try:
        await provision(db_url, pki, "l1", [("st1", "j1", OK)])
        first = Checkpointer(engine, "l1", open_audit_key(str(key_path)), directory,
                             every=1, interval=60)  # fmt: skip
        await first.start()
        await first.close()
        size = first.tree_size
        assert size > 0
        await provision(db_url, pki, "l1", [("st1", "j2", OK), ("st1", "j1", OK)])
        second = Checkpointer(engine, "l1", open_audit_key(str(key_path)), directory,
                              every=1, interval=60)  # fmt: skip
        await second.start()
        await second.close()
        assert second.tree_size > size
        stored = await stored_checkpoints(engine, "l1")
        assert [cp.tree_size for cp, _ in stored] == [size, second.tree_size]
        report = await verify_against_checkpoints(engine, directory, load_public_key(pub_path))
        assert report.problems == []
        assert report.lines == {"l1": second.tree_size}

        # The same size again never overwrites the file that is there.
        newest = sorted(directory.glob("*.json"))[-1]
        before = newest.read_bytes()
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_checkpoints"))
        later = datetime(2030, 1, 1, tzinfo=UTC)  # another `at`: another file content
        again = Checkpointer(engine, "l1", open_audit_key(str(key_path)), directory,
                             every=1, interval=60, clock=lambda: later)  # fmt: skip
        await again.start()
        await again.close()
        assert newest.read_bytes() == before

        # An edited row (hash left alone) stops checkpointing: nothing is signed over it.
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE audit_log SET event = 'x' WHERE seq = 2"))
            await conn.execute(text("DELETE FROM audit_checkpoints"))
        edited = Checkpointer(engine, "l1", open_audit_key(str(key_path)), tmp_path / "cp2",
                              every=1, interval=60)  # fmt: skip
        await edited.start()
        await edited.close()
        assert edited.made == 0
        assert edited.tree_size == 1
        assert list((tmp_path / "cp2").glob("*.json")) == []
    finally:
        await engine.dispose()


async def test_encrypted_p256_key_with_a_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    (tmp_path / "audit.key").write_bytes(pem)
    config_file = tmp_path / "line.toml"
    raw = {
        "line": {"name": "l1"},
        "pki": {"pai_cert": "pai.pem", "pai_key": "pai.key", "vid": "FFF1", "pid": "8000"},
        "audit": {
            "key": "audit.key",
            "key_passphrase_env": "AUDIT_PASS",
            "checkpoint_dir": "cp",
        },
    }
    config = parse_config(raw, config_file)
    assert config.audit is not None
    assert config.audit.checkpoint_dir == tmp_path / "cp"
    with pytest.raises(ConfigError, match="AUDIT_PASS is not set"):
        config.audit.passphrase()
    monkeypatch.setenv("AUDIT_PASS", "s3cret")
    key = open_audit_key(config.audit.key, passphrase=config.audit.passphrase())
    assert key.algorithm == ECDSA_P256
    checkpoint = await sign_checkpoint(key, BODY)
    assert verify_checkpoint(checkpoint, private.public_key()) is None
    with pytest.raises(PkiError, match="wrong passphrase"):
        open_audit_key(config.audit.key, passphrase=b"nope")
    with pytest.raises(PkiError, match="no passphrase"):
        open_audit_key(config.audit.key)


def test_audit_section_errors_name_the_key(tmp_path: Path) -> None:
    raw = {
        "line": {"name": "l1"},
        "pki": {"pai_cert": "pai.pem", "pai_key": "pai.key", "vid": "FFF1", "pid": "8000"},
        "audit": {"key": "pkcs11:token=t;object=audit", "checkpoint_dir": "cp"},
    }
    with pytest.raises(ConfigError, match=r"audit: .*pkcs11_module"):
        parse_config(raw, tmp_path / "line.toml")
    raw["audit"] = {"key": "audit.key"}
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_dir: required key is missing"):
        parse_config(raw, tmp_path / "line.toml")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    _, pub, public = generate_key_pair(tmp_path, ED25519)
    assert load_public_key(pub) == public
    with pytest.raises(PkiError, match="exists already"):
        generate_key_pair(tmp_path, ED25519)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "audit.pub").write_text("taken")
    with pytest.raises(PkiError, match="exists already"):
        generate_key_pair(tmp_path / "other")
    assert not (tmp_path / "other" / "audit.key").exists()  # nothing half-written
