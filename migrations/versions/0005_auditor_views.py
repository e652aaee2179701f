"""auditor views: assignments_v and attempts_v, the fields of the contract records (issue 4).

The uid, DAC serial, DAC fingerprint and time indexes the views are queried by exist since 0001.
A later revision that alters `assignments` or `attempts` (SQLite batch mode renames tables;
PostgreSQL refuses to change a column a view uses) must drop these views first and create
them again afterwards.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: the export record and the attempt record of docs/contracts (+ work_order).
ASSIGNMENTS_V = """
CREATE VIEW assignments_v AS
SELECT uid, status, dac_serial, dac_sha256, dac_pem, pai_sha256, vid, pid,
       line, station, jig, attempt_id, issued_at, confirmed_at, work_order
FROM assignments
"""
ATTEMPTS_V = """
CREATE VIEW attempts_v AS
SELECT attempt_id, uid, line, station, jig, outcome, detail, device_code, dac_serial,
       started_at, ended_at, work_order
FROM attempts
"""


def upgrade() -> None:
    op.execute(ASSIGNMENTS_V)
    op.execute(ATTEMPTS_V)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS attempts_v")
    op.execute("DROP VIEW IF EXISTS assignments_v")
