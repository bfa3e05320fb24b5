"""tenant priority: a tenant's highest priority, and each job's turn among its tenant's jobs

Revision ID: 0008_tenant_priority
Revises: 0007_edits
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_tenant_priority"
down_revision: str | None = "0007_edits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("max_priority", sa.Integer(), nullable=True))
    # Jobs queued before this revision all take turn 0: among them the order stays by age.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("turn", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_index("ix_jobs_model_status_priority")
        batch.create_index(
            "ix_jobs_run_order", ["model", "status", "priority", "turn", "created_at"]
        )
        batch.drop_index("ix_jobs_tenant_id_status_model")
        batch.create_index(
            "ix_jobs_tenant_turn", ["tenant_id", "status", "model", "priority", "turn"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_turn")
        batch.create_index("ix_jobs_tenant_id_status_model", ["tenant_id", "status", "model"])
        batch.drop_index("ix_jobs_run_order")
        batch.create_index(
            "ix_jobs_model_status_priority", ["model", "status", "priority", "created_at"]
        )
        batch.drop_column("turn")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_priority")
