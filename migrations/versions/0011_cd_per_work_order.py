"""a Certification Declaration per work order: assignments.cd_sha256, work_orders.cd_sha256 and
firmware_version; assignments_v gains cd_sha256 (issue 13 item 6).

`assignments.cd_sha256` is the SHA-256 of the CD delivered with the DAC (null: no CD). A work
order remembers the CD and firmware version it was opened with, so that a second host opening it
with another CD is refused. The view is dropped first (PostgreSQL refuses to change a column a
view uses; SQLite batch mode renames tables) and created again with every export field.

Revision ID: 0011
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (0013 holds the previous one).
ASSIGNMENTS_V = """
CREATE VIEW assignments_v AS
SELECT a.uid, a.status, a.dac_serial, a.dac_sha256, a.dac_pem, a.pai_sha256, a.vid, a.pid,
       a.line, a.station, a.jig, a.attempt_id, a.issued_at, a.confirmed_at, a.work_order,
       r.revoked_at, r.reason AS revocation_reason, a.key_proof, a.cd_sha256
FROM assignments a
LEFT JOIN revocations r ON r.dac_serial = a.dac_serial
"""
ASSIGNMENTS_V_0013 = """
CREATE VIEW assignments_v AS
SELECT a.uid, a.status, a.dac_serial, a.dac_sha256, a.dac_pem, a.pai_sha256, a.vid, a.pid,
       a.line, a.station, a.jig, a.attempt_id, a.issued_at, a.confirmed_at, a.work_order,
       r.revoked_at, r.reason AS revocation_reason, a.key_proof
FROM assignments a
LEFT JOIN revocations r ON r.dac_serial = a.dac_serial
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    op.add_column("assignments", sa.Column("cd_sha256", sa.String(64), nullable=True))
    op.add_column("work_orders", sa.Column("cd_sha256", sa.String(64), nullable=True))
    op.add_column("work_orders", sa.Column("firmware_version", sa.String(64), nullable=True))
    op.execute(ASSIGNMENTS_V)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    with op.batch_alter_table("work_orders") as batch:
        batch.drop_column("firmware_version")
        batch.drop_column("cd_sha256")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("cd_sha256")
    op.execute(ASSIGNMENTS_V_0013)
