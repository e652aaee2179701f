"""key_proof: how a device showed its key, on attempts and assignments (issue 17).

`csr` (a signed PKCS#10 request: proof of possession, jig protocol v1) or `none` (a bare public
key: the ECC608 letter protocol). Every row before this revision came from v1 jigs: `csr`.
The auditor views carry it as the export records do (0005 and 0010 hold the previous ones).

Revision ID: 0013
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies.
ASSIGNMENTS_V = """
CREATE VIEW assignments_v AS
SELECT a.uid, a.status, a.dac_serial, a.dac_sha256, a.dac_pem, a.pai_sha256, a.vid, a.pid,
       a.line, a.station, a.jig, a.attempt_id, a.issued_at, a.confirmed_at, a.work_order,
       r.revoked_at, r.reason AS revocation_reason, a.key_proof
FROM assignments a
LEFT JOIN revocations r ON r.dac_serial = a.dac_serial
"""
ATTEMPTS_V = """
CREATE VIEW attempts_v AS
SELECT attempt_id, uid, line, station, jig, outcome, detail, device_code, dac_serial,
       started_at, ended_at, work_order, key_proof
FROM attempts
"""
ASSIGNMENTS_V_0010 = """
CREATE VIEW assignments_v AS
SELECT a.uid, a.status, a.dac_serial, a.dac_sha256, a.dac_pem, a.pai_sha256, a.vid, a.pid,
       a.line, a.station, a.jig, a.attempt_id, a.issued_at, a.confirmed_at, a.work_order,
       r.revoked_at, r.reason AS revocation_reason
FROM assignments a
LEFT JOIN revocations r ON r.dac_serial = a.dac_serial
"""
ATTEMPTS_V_0005 = """
CREATE VIEW attempts_v AS
SELECT attempt_id, uid, line, station, jig, outcome, detail, device_code, dac_serial,
       started_at, ended_at, work_order
FROM attempts
"""


def _key_proof() -> sa.Column[str]:
    return sa.Column("key_proof", sa.String(8), nullable=False, server_default=sa.text("'csr'"))


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    op.execute("DROP VIEW IF EXISTS attempts_v")
    op.add_column("assignments", _key_proof())
    op.add_column("attempts", _key_proof())
    op.execute(ASSIGNMENTS_V)
    op.execute(ATTEMPTS_V)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    op.execute("DROP VIEW IF EXISTS attempts_v")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("key_proof")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("key_proof")
    op.execute(ASSIGNMENTS_V_0010)
    op.execute(ATTEMPTS_V_0005)
