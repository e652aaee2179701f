"""attestation (jig protocol v1.1, issue 17): outcome attestation_failed, the challenge and the
answer recorded per attempt, and attempts_v with both.

`attempts.attest_nonce` is the lower-case hex of the 32-byte challenge N, `attest_signature` the
base64 DER signature the device answered (null when none came). The outcome CHECK gains
`attestation_failed`. attempts_v is dropped first and created again with the two new fields
(SQLite batch mode rebuilds the table; PostgreSQL refuses to alter a table a view depends on).

Revision ID: 0012
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model constants: a revision must not change when the code does.
_OUTCOMES = (
    "'provisioned', 'device_error', 'csr_rejected', 'duplicate_key', 'already_provisioned', "
    "'timeout', 'disconnected', 'protocol_error', 'issuer_error', 'post_step_failed'"
)
OUTCOME_CHECK = f"outcome IS NULL OR outcome IN ({_OUTCOMES}, 'attestation_failed')"
OUTCOME_CHECK_0001 = f"outcome IS NULL OR outcome IN ({_OUTCOMES})"
ATTEMPTS_V = """
CREATE VIEW attempts_v AS
SELECT attempt_id, uid, line, station, jig, outcome, detail, device_code, dac_serial,
       started_at, ended_at, work_order, key_proof, attest_nonce, attest_signature
FROM attempts
"""
ATTEMPTS_V_0013 = """
CREATE VIEW attempts_v AS
SELECT attempt_id, uid, line, station, jig, outcome, detail, device_code, dac_serial,
       started_at, ended_at, work_order, key_proof
FROM attempts
"""
_CHECK = "ck_attempts_outcome"


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS attempts_v")
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("attest_nonce", sa.String(64), nullable=True))
        batch.add_column(sa.Column("attest_signature", sa.Text(), nullable=True))
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), OUTCOME_CHECK)
    op.execute(ATTEMPTS_V)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS attempts_v")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), OUTCOME_CHECK_0001)
        batch.drop_column("attest_signature")
        batch.drop_column("attest_nonce")
    op.execute(ATTEMPTS_V_0013)
