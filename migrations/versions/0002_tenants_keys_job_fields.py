"""tenants and API keys; jobs gain tenant, model, priority, metadata, webhook and idempotency

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(length=36), nullable=True))
        batch.add_column(
            sa.Column("model", sa.String(length=64), nullable=False, server_default="default")
        )
        batch.add_column(
            sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="5")
        )
        batch.add_column(sa.Column("metadata", JSON, nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_events", JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_unique_constraint(
            "uq_jobs_tenant_id_idempotency_key", ["tenant_id", "idempotency_key"]
        )
        batch.create_index("ix_jobs_tenant_id_created_at", ["tenant_id", "created_at"])
        batch.create_index(
            "ix_jobs_model_status_priority", ["model", "status", "priority", "created_at"]
        )
    # Existing rows got their values; new rows always get them from the application.
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("model", server_default=None)
        batch.alter_column("priority", server_default=None)
        batch.alter_column("webhook_events", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_model_status_priority")
        batch.drop_index("ix_jobs_tenant_id_created_at")
        batch.drop_constraint("uq_jobs_tenant_id_idempotency_key", type_="unique")
        batch.drop_constraint(op.f("fk_jobs_tenant_id_tenants"), type_="foreignkey")
        for column in (
            "request_hash",
            "idempotency_key",
            "webhook_events",
            "webhook_url",
            "metadata",
            "priority",
            "model",
            "tenant_id",
        ):
            batch.drop_column(column)
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
