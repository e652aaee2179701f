"""the signing gateway's database: issuances, quotas, client certificates, audit chain (issue 15).

Revision ID: g0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "g0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status = 'issued'"


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "issuances",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("work_order", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("dac_serial", sa.String(64), nullable=False),
        sa.Column("dac_sha256", sa.String(64), nullable=False),
        sa.Column("dac_pem", sa.Text(), nullable=False),
        sa.Column("pai_sha256", sa.String(64), nullable=False),
        sa.Column("vid", sa.String(4), nullable=False),
        sa.Column("pid", sa.String(4), nullable=False),
        sa.Column("issued_at", _ts(), nullable=False),
        sa.Column("superseded_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_issuances"),
        sa.CheckConstraint("status IN ('issued', 'superseded')", name=op.f("ck_issuances_status")),
        sa.UniqueConstraint("dac_serial", name="uq_issuances_dac_serial"),
        sa.UniqueConstraint("dac_sha256", name="uq_issuances_dac_sha256"),
    )
    op.create_index("ix_issuances_client_issued_at", "issuances", ["client", "issued_at"])
    op.create_index("ix_issuances_work_order", "issuances", ["work_order"])
    op.create_index(
        "ux_issuances_live_uid", "issuances", ["uid"], unique=True,
        sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE),
    )  # fmt: skip
    op.create_index(
        "ux_issuances_live_public_key", "issuances", ["public_key_sha256"], unique=True,
        sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE),
    )  # fmt: skip
    op.create_table(
        "quotas",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("max_dacs", sa.BigInteger(), nullable=True),
        sa.Column("issued", sa.BigInteger(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "name", name="pk_quotas"),
        sa.CheckConstraint("scope IN ('client', 'work_order')", name=op.f("ck_quotas_scope")),
        sa.CheckConstraint("issued >= 0", name=op.f("ck_quotas_issued")),
        sa.CheckConstraint("max_dacs IS NULL OR max_dacs >= 0", name=op.f("ck_quotas_max_dacs")),
        sa.CheckConstraint("rate IS NULL OR rate > 0", name=op.f("ck_quotas_rate")),
        sa.CheckConstraint("burst IS NULL OR burst >= 1", name=op.f("ck_quotas_burst")),
    )
    op.create_table(
        "client_certs",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("not_after", _ts(), nullable=False),
        sa.Column("added_at", _ts(), nullable=False),
        sa.Column("revoked_at", _ts(), nullable=True),
        sa.Column("revocation_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_client_certs"),
        sa.UniqueConstraint("sha256", name="uq_client_certs_sha256"),
    )
    op.create_index("ix_client_certs_serial", "client_certs", ["serial"])
    op.create_index("ix_client_certs_client", "client_certs", ["client"])
    op.create_table(
        "audit_log",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
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
        sa.CheckConstraint(
            "entity IN ('issuance', 'quota', 'client')", name=op.f("ck_audit_log_entity")
        ),
        sa.UniqueConstraint("line", "seq", name="uq_audit_log_line_seq"),
    )
    op.create_index("ix_audit_log_entity", "audit_log", ["entity", "entity_id", "id"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("client_certs")
    op.drop_table("quotas")
    op.drop_table("issuances")
