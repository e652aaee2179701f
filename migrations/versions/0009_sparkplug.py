"""sparkplug: the edge node's delivery cursor over the outbox, and its bdSeq (issue 16).

Rows already in the outbox count as delivered to Sparkplug: results recorded before the edge
node existed are not replayed to it.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("sparkplug_sent_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE outbox SET sparkplug_sent_at = created_at")
    op.create_index("ix_outbox_sparkplug_pending", "outbox", ["line", "sparkplug_sent_at", "id"])
    op.create_table(
        "sparkplug_nodes",
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("edge_node_id", sa.String(64), nullable=False),
        sa.Column("bd_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "edge_node_id", name="pk_sparkplug_nodes"),
    )


def downgrade() -> None:
    op.drop_table("sparkplug_nodes")
    op.drop_index("ix_outbox_sparkplug_pending", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("sparkplug_sent_at")
