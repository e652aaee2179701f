"""supervisor controls: work orders can be closed, and the audit log records control calls.

`work_orders.closed_at` / `closed_by`: a closed work order takes no more devices (its claim is
refused like a full one). The audit log gains the entity `control`: one row per supervisor
operation (OPC UA method call: jig hold/resume, work order open/close), refused ones too.

Revision ID: 0015
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (0001 holds the first one).
ENTITY_CHECK = "entity IN ('attempt', 'assignment', 'control')"
ENTITY_CHECK_0001 = "entity IN ('attempt', 'assignment')"


def _entity_check(check: str) -> None:
    # SQLite cannot alter a CHECK: batch mode copies the table (rows, keys and indexes kept).
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint(op.f("ck_audit_log_entity"), type_="check")
        batch.create_check_constraint(op.f("ck_audit_log_entity"), check)


def upgrade() -> None:
    with op.batch_alter_table("work_orders") as batch:
        batch.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("closed_by", sa.String(128), nullable=True))
    _entity_check(ENTITY_CHECK)


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE entity = 'control'")
    _entity_check(ENTITY_CHECK_0001)
    with op.batch_alter_table("work_orders") as batch:
        batch.drop_column("closed_by")
        batch.drop_column("closed_at")
