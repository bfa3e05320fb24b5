"""dashboard: key scopes (operator), per-tenant limits, retry links, dashboard sessions, the
audit log, paused model queues

Revision ID: 0006_dashboard
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_dashboard"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPES = ("tenant", "admin", "operator")
UTC = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column(
                "scope",
                sa.Enum(
                    *SCOPES, native_enum=False, length=16, create_constraint=True, name="key_scope"
                ),
                nullable=False,
                server_default="tenant",
            )
        )
    keys = sa.table("api_keys", sa.column("is_admin", sa.Boolean), sa.column("scope", sa.String))
    op.execute(sa.update(keys).where(keys.c.is_admin.is_(True)).values(scope="admin"))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scope", server_default=None)
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("submits_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_active_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_candidates", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_of", sa.String(36), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_retry_of_jobs", "jobs", ["retry_of"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_jobs_retry_of", ["retry_of"])
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column(
            "scope",
            sa.Enum(
                *SCOPES, native_enum=False, length=16, create_constraint=True, name="session_scope"
            ),
            nullable=False,
        ),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            ondelete="CASCADE",
            name="fk_dashboard_sessions_key_id_api_keys",
        ),
        sa.PrimaryKeyConstraint("id_hash", name="pk_dashboard_sessions"),
    )
    op.create_index("ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "paused_models",
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("paused_at", UTC, nullable=False),
        sa.Column("paused_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("model", name="pk_paused_models"),
    )


def downgrade() -> None:
    op.drop_table("paused_models")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_dashboard_sessions_expires_at", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_retry_of")
        batch.drop_constraint("fk_jobs_retry_of_jobs", type_="foreignkey")
        batch.drop_column("retry_of")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_candidates")
        batch.drop_column("max_active_jobs")
        batch.drop_column("submits_per_minute")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("key_scope", type_="check")
        batch.drop_column("scope")
