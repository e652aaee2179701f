"""per-device Matter onboarding data (issue 7).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "onboarding",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("vid", sa.String(4), nullable=False),
        sa.Column("pid", sa.String(4), nullable=False),
        sa.Column("assignment_id", _id(), nullable=True),
        sa.Column("serial_num", sa.String(32), nullable=False),
        sa.Column("serial_seq", sa.BigInteger(), nullable=True),
        sa.Column("discriminator", sa.Integer(), nullable=False),
        sa.Column("passcode_sealed", sa.Text(), nullable=False),
        sa.Column("passcode_tag", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("spake2p_it", sa.Integer(), nullable=False),
        sa.Column("spake2p_salt", sa.String(64), nullable=False),
        sa.Column("spake2p_verifier", sa.String(160), nullable=False),
        sa.Column("rd_uid", sa.String(64), nullable=True),
        sa.Column("mfg_date", sa.String(10), nullable=False),
        sa.Column("hw_ver", sa.Integer(), nullable=False),
        sa.Column("hw_ver_str", sa.String(64), nullable=False),
        sa.Column("commissioning_flow", sa.Integer(), nullable=False),
        sa.Column("discovery", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_onboarding"),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name="fk_onboarding_assignment_id_assignments",
        ),
        sa.CheckConstraint(
            "discriminator BETWEEN 0 AND 4095", name=op.f("ck_onboarding_discriminator")
        ),
        sa.UniqueConstraint("serial_num", name="uq_onboarding_serial_num"),
        sa.UniqueConstraint(
            "vid",
            "pid",
            "discriminator",
            "passcode_tag",
            name="uq_onboarding_vid_pid_discriminator_passcode_tag",
        ),
        sa.UniqueConstraint("uid", "vid", "pid", name="uq_onboarding_uid_vid_pid"),
        sa.UniqueConstraint("rd_uid", name="uq_onboarding_rd_uid"),
    )
    op.create_index("ix_onboarding_vid_pid_id", "onboarding", ["vid", "pid", "id"])
    op.create_table(
        "onboarding_counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_onboarding_counters"),
    )


def downgrade() -> None:
    op.drop_table("onboarding_counters")
    op.drop_index("ix_onboarding_vid_pid_id", table_name="onboarding")
    op.drop_table("onboarding")
