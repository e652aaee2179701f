"""auditor views carry revocations: assignments_v gains revoked_at and revocation_reason (issue 13).

The audit export record grew these two fields with the revocation ledger (0008); the view that
promises "exactly the fields of the export record" follows, from a LEFT JOIN on `revocations`
(a DAC is revoked at most once: uq_revocations_dac_serial).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (0005 holds the previous one).
ASSIGNMENTS_V = """
CREATE VIEW assignments_v AS
SELECT a.uid, a.status, a.dac_serial, a.dac_sha256, a.dac_pem, a.pai_sha256, a.vid, a.pid,
       a.line, a.station, a.jig, a.attempt_id, a.issued_at, a.confirmed_at, a.work_order,
       r.revoked_at, r.reason AS revocation_reason
FROM assignments a
LEFT JOIN revocations r ON r.dac_serial = a.dac_serial
"""
ASSIGNMENTS_V_0005 = """
CREATE VIEW assignments_v AS
SELECT uid, status, dac_serial, dac_sha256, dac_pem, pai_sha256, vid, pid,
       line, station, jig, attempt_id, issued_at, confirmed_at, work_order
FROM assignments
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    op.execute(ASSIGNMENTS_V)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS assignments_v")
    op.execute(ASSIGNMENTS_V_0005)
