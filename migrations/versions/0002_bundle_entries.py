"""pre-issued DAC bundles keyed by UID (issue 3).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bundle_entries",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("bundle", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("dac_serial", sa.String(64), nullable=False),
        sa.Column("dac_sha256", sa.String(64), nullable=False),
        sa.Column("dac_pem", sa.Text(), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("pai_sha256", sa.String(64), nullable=False),
        sa.Column("vid", sa.String(4), nullable=False),
        sa.Column("pid", sa.String(4), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("imported_at", _ts(), nullable=False),
        sa.Column("claimed_at", _ts(), nullable=True),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bundle_entries"),
        sa.UniqueConstraint("uid", name="uq_bundle_entries_uid"),
        sa.UniqueConstraint("dac_sha256", name="uq_bundle_entries_dac_sha256"),
    )
    op.create_index("ix_bundle_entries_bundle", "bundle_entries", ["bundle"])


def downgrade() -> None:
    op.drop_table("bundle_entries")
