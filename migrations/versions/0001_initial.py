"""Initial schema: attempts, assignments, audit_log, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model constants: a revision must not change when the code does.
LIVE = "status IN ('issued', 'confirmed', 'unknown')"
STATUS_CHECK = "status IN ('issued', 'confirmed', 'failed', 'unknown', 'superseded')"
OUTCOME_CHECK = (
    "outcome IS NULL OR outcome IN ('provisioned', 'device_error', 'csr_rejected', "
    "'duplicate_key', 'already_provisioned', 'timeout', 'disconnected', 'protocol_error', "
    "'issuer_error', 'post_step_failed')"
)
ENTITY_CHECK = "entity IN ('attempt', 'assignment')"


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dac_serial", sa.String(64), nullable=False),
        sa.Column("dac_sha256", sa.String(64), nullable=False),
        sa.Column("dac_pem", sa.Text(), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("pai_sha256", sa.String(64), nullable=False),
        sa.Column("vid", sa.String(4), nullable=False),
        sa.Column("pid", sa.String(4), nullable=False),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("jig", sa.String(64), nullable=False),
        sa.Column("attempt_id", sa.String(36), nullable=False),
        sa.Column("work_order", sa.String(64), nullable=True),
        sa.Column("issued_at", _ts(), nullable=False),
        sa.Column("confirmed_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("bundle_entry_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_assignments"),
        sa.CheckConstraint(STATUS_CHECK, name=op.f("ck_assignments_status")),
        sa.UniqueConstraint("dac_serial", name="uq_assignments_dac_serial"),
        sa.UniqueConstraint("dac_sha256", name="uq_assignments_dac_sha256"),
    )
    op.create_index("ix_assignments_uid", "assignments", ["uid"])
    op.create_index("ix_assignments_issued_at", "assignments", ["issued_at"])
    op.create_index("ix_assignments_attempt_id", "assignments", ["attempt_id"])
    op.create_index(
        "ux_assignments_live_public_key",
        "assignments",
        ["public_key_sha256"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_index(
        "ux_assignments_live_uid",
        "assignments",
        ["uid"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )

    op.create_table(
        "attempts",
        sa.Column("attempt_id", sa.String(36), nullable=False),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("jig", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("device_code", sa.Integer(), nullable=True),
        sa.Column("dac_serial", sa.String(64), nullable=True),
        sa.Column("assignment_id", _id(), nullable=True),
        sa.Column("work_order", sa.String(64), nullable=True),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("ended_at", _ts(), nullable=True),
        sa.Column("transcript", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("attempt_id", name="pk_attempts"),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name="fk_attempts_assignment_id_assignments",
        ),
        sa.CheckConstraint(OUTCOME_CHECK, name=op.f("ck_attempts_outcome")),
    )
    op.create_index("ix_attempts_uid", "attempts", ["uid"])
    op.create_index("ix_attempts_dac_serial", "attempts", ["dac_serial"])
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])
    op.create_index("ix_attempts_assignment_id", "attempts", ["assignment_id"])
    op.create_index(
        "ix_attempts_running",
        "attempts",
        ["line"],
        sqlite_where=sa.text("outcome IS NULL"),
        postgresql_where=sa.text("outcome IS NULL"),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sa.CheckConstraint(ENTITY_CHECK, name=op.f("ck_audit_log_entity")),
        sa.UniqueConstraint("line", "seq", name="uq_audit_log_line_seq"),
    )
    op.create_index("ix_audit_log_entity", "audit_log", ["entity", "entity_id", "id"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])

    op.create_table(
        "outbox",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_pending", "outbox", ["line", "sent_at", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("audit_log")
    op.drop_table("attempts")
    op.drop_table("assignments")
