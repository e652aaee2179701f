"""The Checkpointer against a real database: resume from the stored frontier, refuse to sign
an edited chain, never overwrite a file; the audit key sources; the `[audit]` section."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from linehost.evidence.rows import AuditRow, stored_checkpoints
from linehost.evidence.verify import verify_against_checkpoints
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import Outcome
from linehost.store.chain import CommittedRow
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


@pytest.mark.timeout(120)
async def test_this_hosts_commits_come_by_the_feed_and_others_by_the_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer hands its committed rows to the checkpointer (no read back); rows another
    process wrote, before or between, come by the database read; the signed root is the one
    `audit verify` recomputes from the rows. A fed row that does not link is refused."""
    import linehost.evidence.checkpointer as module
    from linehost.store.controls import ControlEvent
    from linehost.store.store import Store

    read: list[int] = []  # seq of every row the checkpointer read from the database
    real_iter_rows = module.iter_rows

    async def counting_iter_rows(*args: Any, **kwargs: Any) -> AsyncIterator[AuditRow]:
        async for row in real_iter_rows(*args, **kwargs):
            read.append(row.seq)
            yield row

    monkeypatch.setattr(module, "iter_rows", counting_iter_rows)
    pki = dev_pki(tmp_path / "pki")
    key_path, pub_path, _ = generate_key_pair(tmp_path / "key")
    directory = tmp_path / "cp"
    directory.mkdir()
    engine = create_engine(db_url)
    await provision(db_url, pki, "l1", [("st1", "j1", OK)])  # another process, earlier
    store = await Store.open(db_url, line="l1", result_payload=result_payload)
    try:
        # Not started: no background poll races the reads counted here.
        checkpointer = Checkpointer(engine, "l1", open_audit_key(str(key_path)), directory,
                                    every=10**6, interval=3600)  # fmt: skip
        store.writer.add_commit_listener(checkpointer.rows_committed)
        before = await checkpointer.catch_up()
        assert before == len(read) > 0  # the earlier rows: read

        def hold(n: int) -> ControlEvent:
            return ControlEvent("jig_held", f"st1/j{n}", {"by": "tester", "reason": f"r{n}"})

        for n in range(5):
            await store.record_control(hold(n))
        read.clear()
        assert await checkpointer.catch_up() == 5
        assert read == []  # this host's rows came by the feed
        first = await checkpointer.checkpoint()
        assert first is not None
        assert first.tree_size == before + 5

        # Another process writes between two of ours: the feed has a gap the read fills.
        await store.record_control(hold(10))
        await provision(db_url, pki, "l1", [("st1", "j2", OK)])
        await store.record_control(hold(11))
        read.clear()
        await checkpointer.catch_up()
        async with engine.connect() as conn:
            total = (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
        assert checkpointer.tree_size == total
        assert read
        assert min(read) == before + 7
        await checkpointer.checkpoint()
        report = await verify_against_checkpoints(engine, directory, load_public_key(pub_path))
        assert report.problems == []
        assert report.lines == {"l1": total}

        # A fed row that does not continue the chain stops checkpointing.
        await store.record_control(hold(12))
        forged = CommittedRow("l1", total + 2, "0" * 64, "1" * 64, "{}")
        checkpointer.rows_committed([forged])  # as if the writer had told it
        await checkpointer.catch_up()
        assert checkpointer.tree_size == total + 1
        assert await checkpointer.checkpoint() is None
    finally:
        await store.close()
        await engine.dispose()
