"""revocations: DACs taken back (at most once each) and each PAI's CRL number (issue 13).

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
)


def upgrade() -> None:
    reasons = ", ".join(f"'{r}'" for r in REASONS)
    op.create_table(
        "revocations",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("dac_serial", sa.String(64), nullable=False),
        sa.Column("pai_sha256", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
        sa.ForeignKeyConstraint(
            ["dac_serial"],
            ["assignments.dac_serial"],
            name="fk_revocations_dac_serial_assignments",
        ),
        sa.UniqueConstraint("dac_serial", name="uq_revocations_dac_serial"),
        sa.CheckConstraint(f"reason IN ({reasons})", name="ck_revocations_reason"),
    )
    op.create_index("ix_revocations_pai_sha256", "revocations", ["pai_sha256", "id"])
    op.create_table(
        "crl_numbers",
        sa.Column("pai_sha256", sa.String(64), nullable=False),
        sa.Column("crl_number", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pai_sha256", name="pk_crl_numbers"),
        sa.CheckConstraint("crl_number > 0", name="ck_crl_numbers_positive"),
    )


def downgrade() -> None:
    op.drop_table("crl_numbers")
    op.drop_index("ix_revocations_pai_sha256", table_name="revocations")
    op.drop_table("revocations")
