"""work orders with quotas, and the jig status board (issue 8).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "work_orders",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("claimed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_work_orders"),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_work_orders_quantity")),
        sa.CheckConstraint(
            "claimed >= 0 AND claimed <= quantity", name=op.f("ck_work_orders_claimed")
        ),
    )
    op.create_index("ix_assignments_work_order", "assignments", ["work_order", "status"])
    op.create_index("ix_attempts_work_order", "attempts", ["work_order", "outcome"])
    op.create_table(
        "jig_status",
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("jig", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("uid", sa.String(64), nullable=True),
        sa.Column("attempt_id", sa.String(36), nullable=True),
        sa.Column("since", _ts(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("last_outcome", sa.String(32), nullable=True),
        sa.Column("last_detail", sa.Text(), nullable=True),
        sa.Column("last_uid", sa.String(64), nullable=True),
        sa.Column("work_order", sa.String(64), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("line", "station", "jig", name="pk_jig_status"),
    )


def downgrade() -> None:
    op.drop_table("jig_status")
    op.drop_index("ix_attempts_work_order", table_name="attempts")
    op.drop_index("ix_assignments_work_order", table_name="assignments")
    op.drop_table("work_orders")
