"""retention: per-tenant stored bytes and quota, pending storage deletions, finished-at index

Revision ID: 0009_retention
Revises: 0008_tenant_priority
Create Date: 2026-12-10
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009_retention"
down_revision: str | None = "0008_tenant_priority"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("storage_quota_bytes", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_status_finished_at", "jobs", ["status", "finished_at"])
    op.create_table(
        "pending_deletions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_deletions")),
    )
    op.create_index("ix_pending_deletions_delete_after", "pending_deletions", ["delete_after"])
    _count_what_is_stored()


def _count_what_is_stored() -> None:
    """Each tenant's stored bytes as they are now: its jobs' images, and the inputs each job
    stored under its own id (a retry shares its original's, counted once)."""
    bind = op.get_bind()
    totals: dict[str, int] = {}
    images = sa.text(
        "SELECT j.tenant_id, SUM(i.byte_size) FROM job_images i JOIN jobs j ON j.id = i.job_id "
        "WHERE j.tenant_id IS NOT NULL GROUP BY j.tenant_id"
    )
    for tenant_id, n in bind.execute(images):
        totals[tenant_id] = totals.get(tenant_id, 0) + int(n or 0)
    jobs = sa.table("jobs", sa.column("id"), sa.column("tenant_id"), sa.column("inputs", sa.JSON()))
    rows = bind.execute(
        sa.select(jobs.c.id, jobs.c.tenant_id, jobs.c.inputs).where(
            jobs.c.inputs.is_not(None), jobs.c.tenant_id.is_not(None)
        )
    )
    for job_id, tenant_id, inputs in rows:
        records: Any = inputs or {}
        for record in records.values() if isinstance(records, dict) else ():
            if f"{job_id}/" in str(record.get("key", "")):
                totals[tenant_id] = totals.get(tenant_id, 0) + int(record.get("byte_size") or 0)
    tenants = sa.table("tenants", sa.column("id"), sa.column("stored_bytes", sa.BigInteger()))
    for tenant_id, n in totals.items():
        bind.execute(sa.update(tenants).where(tenants.c.id == tenant_id).values(stored_bytes=n))


def downgrade() -> None:
    op.drop_table("pending_deletions")
    op.drop_index("ix_jobs_status_finished_at", table_name="jobs")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("storage_quota_bytes")
        batch.drop_column("stored_bytes")
